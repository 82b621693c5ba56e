"""The metadata's claims checked against the graph they describe.

Metadata is a JSON document beside the graph; a hand edit or another tool can make it say
something the graph does not do (`top_k` 10 for a graph returning 50 boxes, scale 4 for a x2
super-resolution graph, eight class names for a nine-class map). The node would then publish
wrong messages without a word. `check_claims` compares every claim the graph can confirm:

- input: its name, uint8, NHWC [1, H, W, 3] with the metadata's H and W, and the colour order
  the exporter stated in the graph's doc string (`contract.graph_input_note`; a graph without
  that statement, e.g. one built by hand, cannot confirm its colour order);
- outputs: every named tensor exists, with each role's dtype and shape (class map and depth
  [1, H, W]; boxes [1, K, 4], scores and classes [1, K] with K = `top_k`; the SR image
  [1, s*H, s*W, 3] with s = `scale`);
- class counts, where the graph shows them (needs the `onnx` package; skipped without it): a
  class map made by ArgMax over C channels has C class names, and detection classes taken by a
  top-K over a flattened [1, C, h, w] heatmap have C class names.

A contradiction is a `ContractError` naming the field by its dotted path; the loader adds the file.
Dimensions the graph leaves symbolic are not claims it can confirm and are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mtl_perception.contract import ContractError, ModelMetadata, TaskSpec, read_graph_input_note

try:
    import onnx
except ImportError:  # a vehicle image may carry onnxruntime only: class counts are then not checked
    onnx = None

#: ONNX element types as onnxruntime spells them.
ORT_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)", "int32": "tensor(int32)"}


def check_claims(meta: ModelMetadata, session, path: Optional[Path] = None) -> None:
    """Raises ContractError for the first claim of `meta` that the onnxruntime `session`'s graph
    (and, with onnx installed, the file at `path`) contradicts."""
    _check_input(meta, session)
    outputs = {o.name: o for o in session.get_outputs()}
    for name, task in meta.tasks.items():
        for role, tensor in task.outputs.items():
            if tensor not in outputs:
                raise ContractError(f"metadata field tasks.{name}.outputs.{role} names output {tensor!r}, "
                                    f"which the graph does not have (it has {sorted(outputs)})")
        _check_task_outputs(name, task, meta, outputs)
    if onnx is not None and path is not None:
        _check_class_counts(meta, path)


def _check_input(meta: ModelMetadata, session) -> None:
    spec = meta.input
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ContractError(f"metadata field input describes one input, the graph has {[i.name for i in inputs]}")
    graph = inputs[0]
    if graph.name != spec.name:
        raise ContractError(f"metadata field input.name is {spec.name!r}, the graph's input is {graph.name!r}")
    if graph.type != ORT_TYPES["uint8"]:
        raise ContractError(f"metadata field input.dtype is {spec.dtype!r}, the graph's input is {graph.type}")
    shape = list(graph.shape)
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ContractError(f"metadata field input.layout is {spec.layout!r}, the graph's input has shape {shape} "
                            f"(NHWC is [1, H, W, 3])")
    for key, dim in (("height", shape[1]), ("width", shape[2])):
        if dim != getattr(spec, key):
            raise ContractError(f"metadata field input.{key} is {getattr(spec, key)}, the graph's input has "
                                f"shape {shape}")
    stated = read_graph_input_note(session.get_modelmeta().graph_description)
    if stated and stated.get("color_order") != spec.color_order:
        raise ContractError(f"metadata field input.color_order is {spec.color_order!r}, the graph states "
                            f"{stated.get('color_order')!r} input")


def _expected_outputs(task: TaskSpec, meta: ModelMetadata) -> Dict[str, tuple]:
    """role -> (dtype, shape with the batch dimension) the contract prescribes for `task`."""
    h, w = meta.input.height, meta.input.width
    if task.kind == "segmentation":
        return {"class_map": ("uint8", [1, h, w])}
    if task.kind == "depth":
        return {"depth": ("float32", [1, h, w])}
    if task.kind == "detection":
        k = task.top_k
        return {"boxes": ("float32", [1, k, 4]), "scores": ("float32", [1, k]), "classes": ("int32", [1, k])}
    s = task.scale
    return {"image": ("uint8", [1, s * h, s * w, 3])}


#: For each role, the metadata field a wrong dimension most likely comes from.
_DIM_FIELD = {("detection", 1): "top_k", ("super_resolution", 1): "scale", ("super_resolution", 2): "scale"}


def _check_task_outputs(name: str, task: TaskSpec, meta: ModelMetadata, outputs) -> None:
    for role, (dtype, expected) in _expected_outputs(task, meta).items():
        graph = outputs[task.outputs[role]]
        where = f"metadata field tasks.{name}.outputs.{role}"
        if graph.type != ORT_TYPES[dtype]:
            raise ContractError(f"{where}: a {task.kind} task's {role} output is {dtype}, the graph's "
                                f"{graph.name!r} is {graph.type}")
        shape = list(graph.shape)
        if len(shape) != len(expected):
            raise ContractError(f"{where}: a {task.kind} task's {role} output has shape {_pattern(task, role)}, "
                                f"the graph's {graph.name!r} has {shape}")
        for axis, (got, want) in enumerate(zip(shape, expected)):
            if isinstance(got, int) and got != want:
                raise ContractError(_dim_message(name, task, role, axis, graph.name, shape, meta))


def _pattern(task: TaskSpec, role: str) -> str:
    return {"class_map": "[1, H, W]", "depth": "[1, H, W]", "boxes": "[1, top_k, 4]", "scores": "[1, top_k]",
            "classes": "[1, top_k]", "image": "[1, scale*H, scale*W, 3]"}[role]


def _dim_message(name: str, task: TaskSpec, role: str, axis: int, tensor: str, shape: List, meta) -> str:
    """Names the field the graph contradicts: top_k, scale, or the input size."""
    field_ = _DIM_FIELD.get((task.kind, axis))
    if field_ == "top_k":
        return (f"metadata field tasks.{name}.top_k is {task.top_k}, the graph's {tensor!r} has shape {shape} "
                f"({shape[1]} per frame)")
    if field_ == "scale":
        h, w = meta.input.height, meta.input.width
        factor = (f"x{shape[1] // h}" if isinstance(shape[1], int) and shape[1] % h == 0
                  and shape[1] // h * w == shape[2] else "no integer factor")
        return (f"metadata field tasks.{name}.scale is {task.scale}, the graph's {tensor!r} has shape {shape} "
                f"for a {w}x{h} input ({factor})")
    return (f"metadata field tasks.{name}.outputs.{role}: a {task.kind} task's {role} output has shape "
            f"{_pattern(task, role)} "
            f"(input {meta.input.width}x{meta.input.height}), the graph's {tensor!r} has {shape}")


# ------------------------------------------------------------------------- class counts (onnx)
def _check_class_counts(meta: ModelMetadata, path: Path) -> None:
    graph = _load_graph(path)
    if graph is None:
        return
    for name, task in meta.tasks.items():
        if task.kind == "segmentation":
            classes, how = _argmax_classes(graph, task.outputs["class_map"]), "ArgMax over"
        elif task.kind == "detection":
            classes, how = _topk_heatmap_classes(graph, task.outputs["scores"]), "top-K over a heatmap of"
        else:
            continue
        if classes is not None and classes != len(task.class_names):
            raise ContractError(f"metadata field tasks.{name}.class_names has {len(task.class_names)} names, "
                                f"the graph's {task.kind} output is an {how} {classes} classes")


class _Graph:
    """The graph's nodes by output tensor and its known tensor shapes (after shape inference)."""

    def __init__(self, model):
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.shapes: Dict[str, List] = {}
        for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
            dims = info.type.tensor_type.shape.dim
            self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]

    def source(self, tensor: str, through: Sequence[str] = ("Cast", "Identity")):
        """The node making `tensor`, looking through ops that keep values' meaning."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in through and node.input:
            node = self.producer.get(node.input[0])
        return node


def _load_graph(path: Path) -> Optional[_Graph]:
    try:
        model = onnx.load(str(path), load_external_data=False)
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - onnxruntime already loaded the file; only this extra check is lost
        return None
    return _Graph(model)


def _attribute(node, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _argmax_classes(graph: _Graph, class_map: str) -> Optional[int]:
    node = graph.source(class_map)
    if node is None or node.op_type != "ArgMax":
        return None
    shape = graph.shapes.get(node.input[0])
    if not shape:
        return None
    axis = _attribute(node, "axis", 0) % len(shape)
    return shape[axis] or None


def _topk_heatmap_classes(graph: _Graph, scores: str) -> Optional[int]:
    """C of a top-K over a [1, C, h, w] heatmap flattened to [1, C*h*w] (the exported decoder)."""
    node = graph.source(scores)
    if node is None or node.op_type != "TopK":
        return None
    flat = graph.source(node.input[0], through=("Identity",))
    if flat is None or flat.op_type not in ("Reshape", "Flatten"):
        return None
    shape = graph.shapes.get(flat.input[0])
    if not shape or len(shape) != 4 or shape[1] is None:
        return None
    return shape[1]
