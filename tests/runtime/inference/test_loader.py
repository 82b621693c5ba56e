"""The torch-free loader: contract validation, one-line errors naming the file, providers."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from mtl_perception.contract import METADATA_KEY, SCHEMA_VERSION, ContractError, ModelMetadata
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import ModelError, RuntimeOptions, normalise_provider_names, usable_providers


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, exported_models):
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    exported_models.export_random_model(path)
    return path


def _rewrite_metadata(src, dst, edit):
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    for key, value in edit(props).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def test_runs_a_frame_with_the_contract_shapes_and_types(model_file):
    model = load_model(model_file)
    assert model.providers[-1] == "CPUExecutionProvider"
    out = model.run(np.zeros((32, 64, 3), np.uint8))
    assert out["segmentation"]["class_map"].shape == (32, 64) and out["segmentation"]["class_map"].dtype == np.uint8
    assert out["depth"]["depth"].dtype == np.float32 and out["depth"]["depth"].shape == (32, 64)
    assert np.all((out["depth"]["depth"] >= 0.5) & (out["depth"]["depth"] <= 80.0))
    det = out["detection"]
    assert det["boxes"].shape == (50, 4) and det["scores"].shape == (50,) and det["classes"].dtype == np.int32
    assert np.all(np.diff(det["scores"]) <= 0)
    assert out["super_resolution"]["image"].shape == (64, 128, 3) and out["super_resolution"]["image"].dtype == np.uint8
    assert model.tasks["detection"].class_names == ("vehicle", "pedestrian", "traffic_sign")


def test_rejects_wrong_input_size(model_file):
    with pytest.raises(ValueError, match="expected a 32x64x3 uint8 image"):
        load_model(model_file).run(np.zeros((64, 64, 3), np.uint8))


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx: model file not found"):
        load_model(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all" * 10)
    with pytest.raises(ModelError) as err:
        load_model(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_truncated_model(tmp_path, model_file):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(ModelError, match="cut.onnx: cannot load model"):
        load_model(cut)


def test_model_without_metadata(tmp_path, model_file):
    path = _rewrite_metadata(model_file, tmp_path / "plain.onnx", lambda props: {})
    with pytest.raises(ModelError, match=r"plain\.onnx: no 'mtl_perception' metadata"):
        load_model(path)


def test_wrong_schema_version(tmp_path, model_file):
    def bump(props):
        doc = json.loads(props[METADATA_KEY])
        doc["schema_version"] = SCHEMA_VERSION + 1
        return {METADATA_KEY: json.dumps(doc)}

    path = _rewrite_metadata(model_file, tmp_path / "future.onnx", bump)
    with pytest.raises(ModelError,
                       match=r"future\.onnx: metadata field schema_version is 2 \(an integer\); this runtime "
                             r"reads version 1"):
        load_model(path)


def test_metadata_naming_an_output_the_graph_lacks(tmp_path, model_file):
    def rename(props):
        doc = json.loads(props[METADATA_KEY])
        doc["tasks"]["depth"]["outputs"]["depth"] = "depth_metres"
        return {METADATA_KEY: json.dumps(doc)}

    path = _rewrite_metadata(model_file, tmp_path / "renamed.onnx", rename)
    with pytest.raises(ModelError,
                       match=r"tasks\.depth\.outputs\.depth names output 'depth_metres', which the graph does not"):
        load_model(path)


def test_metadata_round_trip_and_validation(model_file):
    meta = load_model(model_file).metadata
    assert ModelMetadata.from_json(meta.to_json()) == meta
    doc = json.loads(meta.to_json())
    doc["tasks"]["detection"]["top_k"] = 0
    with pytest.raises(ContractError, match="top_k"):
        ModelMetadata.from_json(json.dumps(doc))
    with pytest.raises(ContractError, match="not valid JSON"):
        ModelMetadata.from_json("{")


def test_provider_names_and_fallback(model_file):
    assert normalise_provider_names(["TensorRT", "cuda", "CPU"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ModelError, match="unknown execution provider 'tpu'"):
        normalise_provider_names(["tpu"])
    assert usable_providers(["cpu"]) == ["CPUExecutionProvider"]
    # whatever GPU providers the wheel lists, a session always ends on a provider that works
    model = load_model(model_file, RuntimeOptions(providers=["cuda", "cpu"]))
    assert model.providers[-1] == "CPUExecutionProvider"


def test_runtime_imports_and_runs_without_torch(model_file):
    """A vehicle image has no torch: block it and run the loader end to end."""
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('torch', 'training', 'rclpy'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import mtl_perception, mtl_perception.contract, mtl_perception.evaluation.metrics
        import mtl_perception.inference.preprocess
        import mtl_perception.evaluation.evaluate, mtl_perception.cli
        from mtl_perception.inference.loader import load_model
        out = load_model({str(model_file)!r}).run(np.zeros((32, 64, 3), np.uint8))
        assert 'torch' not in sys.modules
        print(sorted(out))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "segmentation" in result.stdout
