"""scripts/gpu_check.sh and mtl_perception.tools.gpu_check: the metrics against closed forms,
the tolerances, the no-GPU path (one line, exit 0, "unmeasured") and the CPU fallback here.

No GPU is needed: on this machine onnxruntime-gpu lists the CUDA and TensorRT providers but their
libraries do not load, which is exactly the case the check must report as unmeasured."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the GPU check's node benchmark needs rclpy (see scripts/setup_ros.sh)")

from mtl_perception.inference.loader import load_model  # noqa: E402
from mtl_perception.inference.model import RuntimeOptions  # noqa: E402
from mtl_perception.tools import gpu_check  # noqa: E402
from tests import REPO as ROOT  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny exported model; needs torch, so a runtime-only run (colcon test on a robot) skips
    the tests that use it and still runs the metric and tolerance tests."""
    factory = pytest.importorskip("tests.train.exported_models",
                                  reason="exporting a model needs torch (training extra)")
    path = tmp_path_factory.mktemp("gpu") / "tiny.onnx"
    factory.export_random_model(path)
    return path


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# ----------------------------------------------------------------------------- metrics
def test_segmentation_agreement_counts_equal_pixels():
    ref = np.random.default_rng(0).integers(0, 9, (100, 100)).astype(np.uint8)
    cand = ref.copy()
    cand.flat[:150] = (cand.flat[:150] + 1) % 9  # 150 of 10,000 pixels changed
    assert gpu_check.segmentation_agreement(ref, ref) == 1.0
    assert gpu_check.segmentation_agreement(ref, cand) == pytest.approx(0.985)


def test_depth_errors_are_relative_and_count_validity_flips():
    ref = np.linspace(1.0, 80.0, 1000, dtype=np.float32).reshape(20, 50)
    cand = ref * np.float32(1.01)
    cand.flat[:10] = np.nan  # invalid on the GPU only
    errors = gpu_check.depth_errors(ref, cand)
    assert errors["rel"].size == 990
    np.testing.assert_allclose(errors["rel"], 0.01, rtol=1e-4)
    assert errors["valid_mismatch"] == pytest.approx(10 / 1000)


def test_box_iou_closed_forms():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]], np.float32)
    np.testing.assert_allclose(gpu_check.box_iou(a, b)[0], [50 / 150, 1.0, 0.0, 25 / 100])


def _dets(boxes, scores, classes):
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "scores": np.array(scores, np.float32),
            "classes": np.array(classes, np.int32)}


def test_detection_match_is_both_ways_by_class():
    ref = _dets([[0, 0, 10, 10], [50, 50, 70, 70], [0, 0, 1, 1]], [0.9, 0.8, 0.1], [0, 1, 0])
    # box 1 shifted by one pixel, box 2 lost, a new box of class 2 that the CPU does not have
    cand = _dets([[1, 0, 11, 10], [50, 50, 70, 70], [90, 90, 99, 99]], [0.88, 0.2, 0.7], [0, 1, 2])
    m = gpu_check.detection_match(ref, cand)
    # reference -> candidate: 2 above 0.3, both found (the lost one still exists below threshold);
    # candidate -> reference: 2 above 0.3, the new class-2 box has no partner
    assert m["boxes"] == 4 and m["matched"] == 3
    assert sorted(m["ious"]) == pytest.approx(sorted([90 / 110, 1.0, 90 / 110]))
    assert max(m["score_diffs"]) == pytest.approx(0.6)
    summary = gpu_check._task_summary("detection", [(ref, cand)])
    assert summary["matched_fraction"] == pytest.approx(0.75)
    wrong_class = _dets([[0, 0, 10, 10], [50, 50, 70, 70], [0, 0, 1, 1]], [0.9, 0.8, 0.1], [2, 2, 2])
    assert gpu_check.detection_match(ref, wrong_class)["matched"] == 0


def test_psnr_closed_form():
    ref = np.random.default_rng(1).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    assert gpu_check.psnr(ref, ref) == math.inf
    assert gpu_check.psnr(ref, ref + 1) == pytest.approx(20 * math.log10(255))  # every pixel off by one
    # identical outputs give an infinite PSNR, which JSON cannot hold as a number
    assert gpu_check._strict_json({"a": [math.inf, 1.5, math.nan], "b": (2,)}) == {"a": ["inf", 1.5, "nan"], "b": [2]}


def test_fp16_tolerances_are_looser_and_failures_name_the_metric():
    ref = {"seg": {"class_map": np.zeros((10, 100), np.uint8)}}
    cand = {"seg": {"class_map": np.zeros((10, 100), np.uint8)}}
    cand["seg"]["class_map"].flat[:15] = 3  # 98.5 % agreement
    fp32 = gpu_check.compare_outputs({"seg": "segmentation"}, [ref], [cand], "fp32")
    fp16 = gpu_check.compare_outputs({"seg": "segmentation"}, [ref], [cand], "fp16")
    assert not fp32["passed"] and fp32["failures"] == ["seg: segmentation agreement 0.985 (needs >= 0.995)"]
    assert fp16["passed"] and fp16["failures"] == []
    assert set(gpu_check.TOLERANCES["fp32"]) == set(gpu_check.TOLERANCES["fp16"])
    for name in gpu_check.TOLERANCES["fp32"]:
        loose, tight = gpu_check.TOLERANCES["fp16"][name], gpu_check.TOLERANCES["fp32"][name]
        assert (loose <= tight) if name.endswith("_min") or name.endswith("_db") else (loose >= tight), name


# ----------------------------------------------------------------------------- on this machine
def _gpu_ready() -> bool:
    return gpu_check.gpu_presence()["ready"]


def test_cpu_against_itself_passes_every_tolerance(model_file):
    cpu = RuntimeOptions(providers=["cpu"])
    model = load_model(model_file, cpu)
    frames = gpu_check.model_frames(*model.input_size, model.metadata.input.color_order, 3)
    reference = gpu_check.run_frames(model, frames)
    result = gpu_check.check_variant(str(model_file), cpu, "fp32", frames, reference, "CPUExecutionProvider")
    assert result["status"] == "measured" and result["passed"], result["failures"]
    tasks = result["tasks"]
    assert tasks["segmentation"]["agreement"] == 1.0 and tasks["super_resolution"]["psnr_min_db"] == math.inf
    assert tasks["depth"]["rel_error_median"] == 0.0 and tasks["depth"]["valid_mismatch"] == 0.0


@pytest.mark.skipif("_gpu_ready()", reason="a usable GPU is present: the fallback cannot be observed")
def test_gpu_variants_report_the_cpu_fallback_as_unavailable(model_file, tmp_path):
    for name, providers, fp16, precision in gpu_check.VARIANTS:
        options = RuntimeOptions(providers=list(providers), fp16=fp16)
        result = gpu_check.check_variant(str(model_file), options, precision, [], [],
                                         gpu_check.EXPECTED_PROVIDER[providers[0]])
        assert result["status"] == "unavailable" and result["provider"] == "CPUExecutionProvider", name
    frame = np.zeros((32, 64, 3), np.uint8)
    cache = gpu_check.engine_cache_reuse(str(model_file), False, tmp_path / "cache", frame)
    assert cache["provider"] == "CPUExecutionProvider" and cache["engine_files"] == 0 and not cache["reused"]


@pytest.mark.skipif("_gpu_ready()", reason="a usable GPU is present")
def test_provider_fallback_to_cpu_is_quiet(model_file):
    code = textwrap.dedent(f"""
        from mtl_perception.inference.loader import load_model
        from mtl_perception.inference.model import RuntimeOptions, usable_providers
        print(usable_providers(["tensorrt", "cuda", "cpu"]), usable_providers(None))
        for providers in (None, ["tensorrt", "cuda", "cpu"], ["cuda"]):
            print(load_model({str(model_file)!r}, RuntimeOptions(providers=providers)).providers)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env(),
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # onnxruntime's C++ fallback messages would land here (fd 2)
    assert proc.stdout.splitlines() == ["['CPUExecutionProvider'] ['CPUExecutionProvider']"] + \
        ["['CPUExecutionProvider']"] * 3


@pytest.mark.skipif("_gpu_ready()", reason="a usable GPU is present: the script measures instead")
def test_script_without_a_gpu_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "benchmarks" / "gpu_check.json"
    cmd = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                          env=dict(_env(), PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "no usable NVIDIA GPU here" in lines[0] and "GPU path unmeasured" in lines[0], lines
    doc = json.loads(out.read_text())
    assert doc["schema"] == gpu_check.SCHEMA and doc["status"] == "unmeasured" and doc["reason"] in lines[0]
    assert doc["usable_providers"] == ["CPUExecutionProvider"]
    # a measurement already there is never replaced by "unmeasured"
    out.write_text(json.dumps({"status": "measured", "gpu": {"name": "some GPU"}}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                          env=dict(_env(), PYTHON=sys.executable))
    assert proc.returncode == 0 and "kept the measurement" in proc.stdout
    assert json.loads(out.read_text())["status"] == "measured"


@pytest.mark.skipif("_gpu_ready()", reason="a usable GPU is present")
def test_a_gpu_that_falls_back_to_cpu_is_reported_partial_and_failed(model_file, tmp_path, monkeypatch, capsys):
    """As if the driver answered but the providers did not run (a broken CUDA install): the check
    must not pass on CPU numbers."""
    presence = dict(gpu_check.gpu_presence(), ready=True, reason="")
    monkeypatch.setattr(gpu_check, "gpu_presence", lambda: presence)
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--model", str(model_file), "--json", str(out), "--frames", "2", "--skip-node"])
    assert rc == 1
    doc = json.loads(out.read_text())
    assert doc["status"] == "partial" and doc["passed"] is False
    assert {r["status"] for r in doc["accuracy"].values()} == {"unavailable"}
    assert any("asked for TensorrtExecutionProvider" in line for line in doc["failed"])
    assert any(line.startswith("engine cache fp16: not reused") for line in doc["failed"])
    assert doc["node_rate"] == {"status": "unmeasured", "reason": "--skip-node"}
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("gpu_check: partial, ")


def test_verdict_fails_a_node_run_on_cpu_or_one_that_did_not_start():
    result = {"accuracy": {}, "engine_cache": {}, "node_rate": {
        "status": "measured", "width": 1280, "height": 720,
        "tensorrt,cuda,cpu": {"status": "measured", "provider": "CPUExecutionProvider", "on_gpu": False},
        "cuda,cpu": {"status": "failed", "reason": "the node did not come up: ..."}}}
    assert gpu_check._verdict(result) == ["node rate [cuda,cpu]: the node did not come up: ...",
                                          "node rate [tensorrt,cuda,cpu]: ran on CPUExecutionProvider"]
    result["node_rate"] = {"status": "unmeasured", "reason": "--skip-node"}
    assert gpu_check._verdict(result) == []
