"""The loader checks a model's metadata against its graph and the type of every field.

Each case tampers the metadata of a real exported model (re-written with onnx, the graph left as
it is) and expects one `ModelError` line naming the file and the field by its dotted path.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from mtl_perception.cli import main as cli_main
from mtl_perception.contract import METADATA_KEY, ContractError, ModelMetadata
from mtl_perception.inference import contract_check
from mtl_perception.inference.bundle import write_bundle
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import ModelError
from tests.runtime.model_factory import export_bright_box_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, exported_models):
    """The tiny 64x32 four-task export: 9 segmentation classes, 3 detection classes, top-K 50, SR x2."""
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    exported_models.export_random_model(path)
    return path


def tamper(src, dst, edit):
    """Copies `src` to `dst` with its metadata document changed by `edit(doc)` (in place)."""
    model = onnx.load(str(src))
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    doc = json.loads(entry.value)
    edit(doc)
    entry.value = json.dumps(doc)
    onnx.save(model, str(dst))
    return dst


def _set(path, value):
    """An edit that sets the dotted `path` of the document to `value`."""
    def edit(doc):
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return edit


def _drop_last_class(task):
    def edit(doc):
        doc["tasks"][task]["class_names"] = doc["tasks"][task]["class_names"][:-1]
    return edit


def _swap_outputs(doc):
    seg, depth = doc["tasks"]["segmentation"]["outputs"], doc["tasks"]["depth"]["outputs"]
    seg["class_map"], depth["depth"] = depth["depth"], seg["class_map"]


#: claims the graph contradicts: (case, edit, field named in the error)
CONTRADICTIONS = [
    ("top_k", _set("tasks.detection.top_k", 10), r"tasks\.detection\.top_k is 10, .*\[1, 50, 4\]"),
    ("sr_scale", _set("tasks.super_resolution.scale", 4), r"tasks\.super_resolution\.scale is 4, .*\(x2\)"),
    ("bgr", _set("input.color_order", "bgr"), r"input\.color_order is 'bgr', the graph states 'rgb'"),
    ("nchw", _set("input.layout", "NCHW"), r"input\.layout is 'NCHW'"),
    ("float32", _set("input.dtype", "float32"), r"input\.dtype is 'float32'"),
    ("height", _set("input.height", 64), r"input\.height is 64, the graph's input has shape \[1, 32, 64, 3\]"),
    ("input_name", _set("input.name", "rgb"), r"input\.name is 'rgb', the graph's input is 'image'"),
    ("segmentation_classes", _drop_last_class("segmentation"),
     r"tasks\.segmentation\.class_names has 8 names, .*ArgMax over 9 classes"),
    ("detection_classes", _drop_last_class("detection"),
     r"tasks\.detection\.class_names has 2 names, .*heatmap of 3 classes"),
    ("output_name", _set("tasks.depth.outputs.depth", "depth_metres"),
     r"tasks\.depth\.outputs\.depth names output 'depth_metres', which the graph does not have"),
    ("output_dtype", _swap_outputs,
     r"tasks\.depth\.outputs\.depth: a depth task's depth output is float32, "
     r"the graph's 'segmentation' is tensor\(uint8\)"),
]


@pytest.mark.parametrize("case, edit, message", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_a_claim_the_graph_contradicts_is_one_line_naming_file_and_field(tmp_path, model_file, case, edit, message):
    path = tamper(model_file, tmp_path / f"{case}.onnx", edit)
    with pytest.raises(ModelError, match=message) as err:
        load_model(path)
    text = str(err.value)
    assert text.startswith(f"{path}: metadata field ") and "\n" not in text


#: malformed fields: (case, edit, field and expectation named in the error)
MALFORMED = [
    ("tasks_list", _set("tasks", []), r"field tasks is a list \(\[\]\), expected an object"),
    ("outputs_list", _set("tasks.depth.outputs", ["depth"]), r"tasks\.depth\.outputs is a list .*object of strings"),
    ("top_k_string", _set("tasks.detection.top_k", "50"), r"tasks\.detection\.top_k is a string \('50'\), expected an"),
    ("top_k_float", _set("tasks.detection.top_k", 50.0), r"tasks\.detection\.top_k is a number .*expected an integer"),
    ("min_depth_string", _set("tasks.depth.min_depth", "0.5"), r"tasks\.depth\.min_depth is a string"),
    ("height_string", _set("input.height", "128"), r"input\.height is a string \('128'\), expected an integer"),
    ("class_names_string", _set("tasks.segmentation.class_names", "road"),
     r"tasks\.segmentation\.class_names is a string \('road'\), expected a list of strings"),
    ("class_names_numbers", _set("tasks.detection.class_names", [1, 2, 3]), r"tasks\.detection\.class_names is a list"),
    ("schema_version_true", _set("schema_version", True), r"schema_version is True \(a boolean\)"),
    ("schema_version_float", _set("schema_version", 1.0), r"schema_version is 1\.0 \(a number\)"),
    ("input_list", _set("input", [64, 32]), r"field input is a list"),
    ("task_string", _set("tasks.depth", "depth"), r"field tasks\.depth is a string"),
    ("name_number", _set("name", 7), r"field name is an integer"),
    ("provenance_list", _set("provenance", []), r"field provenance is a list"),
    ("unknown_field", _set("tasks.detection.topk", 50), r"tasks\.detection\.topk is not part of the contract"),
    ("missing_field", lambda doc: doc["input"].pop("height"), r"input\.height is missing"),
    ("unknown_kind", _set("tasks.depth.kind", "stereo"), r"tasks\.depth\.kind is 'stereo', not a known kind"),
    ("depth_range", _set("tasks.depth.max_depth", 0.1), r"tasks\.depth: min_depth 0\.5 and max_depth 0\.1"),
    ("nan_depth", _set("tasks.depth.max_depth", float("nan")), r"tasks\.depth\.max_depth is a number \(nan\)"),
    ("bool_scale", _set("tasks.super_resolution.scale", True), r"tasks\.super_resolution\.scale is a boolean"),
    ("repeated_class", _set("tasks.detection.class_names", ["car", "car", "sign"]),
     r"tasks\.detection\.class_names has empty or repeated names"),
    ("extra_role", _set("tasks.depth.outputs.confidence", "depth"), r"tasks\.depth\.outputs has roles"),
]


@pytest.mark.parametrize("case, edit, message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_metadata_is_one_model_error_line(tmp_path, model_file, case, edit, message):
    path = tamper(model_file, tmp_path / f"{case}.onnx", edit)
    with pytest.raises(ModelError, match=message) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: metadata field ") and "\n" not in str(err.value)


def test_the_untampered_model_loads_and_its_class_counts_are_read_from_the_graph(model_file):
    model = load_model(model_file)
    assert model.tasks["detection"].top_k == 50
    graph = contract_check._load_graph(model_file)
    assert contract_check._argmax_classes(graph, "segmentation") == 9
    assert contract_check._topk_heatmap_classes(graph, "detection_scores") == 3
    assert ModelMetadata.from_json(model.metadata.to_json()) == model.metadata


def test_a_graph_without_the_input_note_is_taken_at_its_word_on_colour_order(tmp_path):
    """A hand-built graph (no doc string) cannot confirm its colour order: a bgr claim loads,
    and its other claims are still checked."""
    path = tmp_path / "bright.onnx"
    export_bright_box_model(path)
    model = onnx.load(str(path))
    model.graph.doc_string = ""
    onnx.save(model, str(path))
    bgr = load_model(tamper(path, tmp_path / "bgr.onnx", _set("input.color_order", "bgr")))
    assert bgr.metadata.input.color_order == "bgr"
    with pytest.raises(ModelError, match=r"tasks\.detection\.top_k is 3, .*\[1, 2, 4\]"):
        load_model(tamper(path, tmp_path / "k3.onnx", _set("tasks.detection.top_k", 3)))


def test_info_prints_one_line_and_exits_non_zero(tmp_path, model_file, capsys):
    path = tamper(model_file, tmp_path / "k.onnx", _set("tasks.detection.top_k", "50"))
    assert cli_main(["info", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err == f"mtl-perception: error: {path}: metadata field tasks.detection.top_k is a string ('50'), " \
                  "expected an integer"


def test_info_process_has_no_traceback(tmp_path, model_file):
    path = tamper(model_file, tmp_path / "tasks.onnx", _set("tasks", ["segmentation"]))
    result = subprocess.run([sys.executable, "-m", "mtl_perception.cli", "info", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stdout == ""
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"{path}: metadata field tasks is a list" in result.stderr


def test_bundle_members_get_the_same_checks(tmp_path):
    """A member whose metadata contradicts its graph makes the bundle fail naming the manifest,
    the member and the field."""
    seg = tmp_path / "seg_depth.onnx"
    det = tmp_path / "det_sr.onnx"
    export_bright_box_model(seg, tasks=("segmentation", "depth"), name="a")
    export_bright_box_model(det, tasks=("detection", "super_resolution"), name="b")
    manifest = write_bundle(tmp_path / "bundle", [seg, det])
    assert sorted(load_model(manifest).tasks) == ["depth", "detection", "segmentation", "super_resolution"]
    tamper(det, manifest.parent / "det_sr.onnx", _set("tasks.super_resolution.scale", 3))
    with pytest.raises(ModelError) as err:
        load_model(manifest)
    assert str(err.value) == (f"{manifest}: member det_sr.onnx: metadata field tasks.super_resolution.scale is 3, "
                              "the graph's 'super_resolution' has shape [1, 96, 128, 3] for a 64x48 input (x2)")
    tamper(det, manifest.parent / "det_sr.onnx", _set("tasks.detection.top_k", "2"))
    with pytest.raises(ModelError, match=r"member det_sr\.onnx: metadata field tasks\.detection\.top_k is a string"):
        load_model(manifest)


@pytest.mark.parametrize("schema", [True, 1.0, "1"])
def test_bundle_schema_must_be_the_integer(tmp_path, schema):
    member = tmp_path / "m.onnx"
    export_bright_box_model(member, tasks=("depth",))
    manifest = tmp_path / "b.json"
    manifest.write_text(json.dumps({"format": "mtl_perception.inference.bundle", "schema": schema,
                                    "models": ["m.onnx"]}))
    with pytest.raises(ModelError, match=r"b\.json: bundle schema is .*; this runtime reads schema 1"):
        load_model(manifest)


def test_metadata_built_in_python_is_validated_with_field_paths():
    meta = ModelMetadata.from_json(json.dumps({
        "schema": "mtl_perception.inference.model", "schema_version": 1, "name": "m",
        "input": {"name": "image", "height": 4, "width": 4},
        "tasks": {"seg": {"kind": "segmentation", "outputs": {"class_map": "seg"}, "class_names": ["a"]}}}))
    meta.tasks["seg"] = type(meta.tasks["seg"])(kind="segmentation", outputs={"class_map": "seg"},
                                                 class_names=tuple(str(i) for i in range(256)))
    with pytest.raises(ContractError, match=r"tasks\.seg\.class_names has 256 classes"):
        meta.validate()


def test_contract_model_still_runs(model_file):
    out = load_model(model_file).run(np.zeros((32, 64, 3), np.uint8))
    assert out["detection"]["boxes"].shape == (50, 4)


def test_without_onnx_installed_only_the_class_counts_go_unchecked(tmp_path, model_file):
    """A vehicle image may have onnxruntime but not onnx: the loader still works and still checks
    every claim that onnxruntime shows (shapes, dtypes, names); class counts need the graph's nodes."""
    short = tamper(model_file, tmp_path / "short.onnx", _drop_last_class("segmentation"))
    k10 = tamper(model_file, tmp_path / "k10.onnx", _set("tasks.detection.top_k", 10))
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('onnx', 'torch', 'training'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        from mtl_perception.inference.loader import load_model
        from mtl_perception.inference.model import ModelError
        print(len(load_model({str(short)!r}).tasks['segmentation'].class_names))
        try:
            load_model({str(k10)!r})
        except ModelError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "8" and "metadata field tasks.detection.top_k is 10" in lines[1]
