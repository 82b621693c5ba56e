"""A multi-task model's onnxruntime profile split by task: a node belongs to the task whose
outputs alone depend on it, the rest is shared."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from training.experiments.onnx_profile import SHARED, UNUSED, node_groups, profile_by_group


def _two_task_graph(size: int = 256) -> onnx.ModelProto:
    """x -> stem (shared) -> a_heavy (MatMul, task a) -> a_out; stem -> b_add (task b) -> b_out;
    stem -> unused (no output depends on it); a diamond: stem -> mix <- b_add, mix -> a2_out
    (task a), so b_add feeds both tasks and is shared."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Relu", ["x"], ["s"], name="stem"),
        helper.make_node("MatMul", ["s", "w"], ["a1"], name="a_heavy"),
        helper.make_node("MatMul", ["a1", "w"], ["a_out"], name="a_heavy2"),
        helper.make_node("Neg", ["s"], ["b_out"], name="b_add"),
        helper.make_node("Abs", ["s"], ["u"], name="unused"),
        helper.make_node("Add", ["a1", "b_out"], ["a2_out"], name="mix"),
    ]
    value = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [value("x")], [value("a_out"), value("b_out"), value("a2_out")], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


OUTPUTS = {"a_out": "a", "a2_out": "a", "b_out": "b"}


def test_node_groups_follow_which_outputs_depend_on_a_node():
    groups = node_groups(_two_task_graph().graph, OUTPUTS)
    assert groups == {"stem": SHARED, "a_heavy": "a", "a_heavy2": "a", "mix": "a", "b_add": SHARED, "unused": UNUSED}
    # the same graph with the diamond cut: b's own node is b's
    graph = _two_task_graph().graph
    del graph.node[5]
    del graph.output[2]
    assert node_groups(graph, {"a_out": "a", "b_out": "b"})["b_add"] == "b"


def test_profile_by_group_sums_every_node_it_ran(tmp_path):
    """Real onnxruntime profile: every node's time lands in one group, the two 256x256 matrix
    products of task a outweigh task b's negation, the node no output needs (onnxruntime runs it
    all the same) is `UNUSED`, and nothing is left unattributed."""
    model = _two_task_graph()
    graph = model.graph
    del graph.node[5]  # no diamond: b's negation is b's own
    del graph.output[2]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    totals = profile_by_group(path, {"x": x}, {"a_out": "a", "b_out": "b"}, runs=30)
    assert set(totals) == {"a", "b", SHARED, UNUSED}
    assert totals["a"] > totals["b"] > 0
