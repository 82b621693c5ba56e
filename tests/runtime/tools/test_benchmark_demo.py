"""The benchmark and the demo run end to end on a tiny model (their structure, not their
timings: timing claims live in the benchmark's output, never in assertions)."""
from __future__ import annotations

import json
import math

import cv2
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")

from mtl_perception import cli  # noqa: E402
from tests.runtime.model_factory import export_bright_box_model  # noqa: E402


@pytest.fixture(autouse=True)
def restore_dds_environment(monkeypatch):
    """The benchmark and demo select a Fast DDS profile in os.environ: undo it afterwards."""
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_model") / "bright_box.onnx"
    export_bright_box_model(path, input_size=(64, 48))
    return path


def test_benchmark_writes_every_measurement(model_path, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["benchmark", "--model", str(model_path), "--width", "320", "--height", "240",
                     "--frames", "20", "--rate", "20", "--intra-op-threads", "1", "--encoding", "bayer_rggb8",
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "/" not in result["dds_profile"]  # the run's temporary profile named, not its path on this machine
    for section in ("model_only_back_to_back", "model_only", "ros_floor", "end_to_end", "overload"):
        assert result[section]["count"] > 0, section
        assert math.isfinite(result[section]["p50_ms"]) and result[section]["p95_ms"] >= result[section]["p50_ms"]
    assert result["end_to_end"]["frames_published"] == 20
    assert result["outputs"] == ["segmentation", "segmentation/color", "depth", "detections", "super_resolution",
                                 "super_resolution/camera_info"]
    assert result["overload"]["node_frames_received"] > 0
    assert result["overload"]["ros_floor_at_this_rate"]["frames_echoed"] > 0
    ratio = result["end_to_end"]["p50_ms"] / result["model_only"]["p50_ms"]
    assert result["overhead_ratio_p50"] == pytest.approx(ratio)
    assert result["input"] == {"width": 320, "height": 240, "encoding": "bayer_rggb8"}  # a raw sensor's mosaic
    assert result["end_to_end"]["node_input_format"] == "bayer_rggb8 320x240"  # as the node saw it
    from mtl_perception.ros.frame_gate import MESSAGE_INFO_CALLBACKS

    assert result["end_to_end"]["node_frame_intake"] == ("on demand" if MESSAGE_INFO_CALLBACKS else "every frame")
    assert result["intra_op_threads"] == 1
    goals = result["goals"]
    share = result["end_to_end"]["p50_ms"] - result["model_only"]["p50_ms"] - result["ros_floor"]["p50_ms"]
    assert goals["node_share_ms_p50"] == pytest.approx(share)
    assert goals["overload_p95_limit_ms"] == pytest.approx(
        2 * (result["model_only"]["p95_ms"] + result["ros_floor"]["p50_ms"]))
    e2e = result["end_to_end"]
    for stage in ("wait", "preprocess", "inference", "render", "publish"):  # the node's own timings
        assert 0 <= e2e[f"node_{stage}_p50_ms"] <= e2e["node_processing_p50_ms"] + e2e["node_wait_p50_ms"], stage
    table = capsys.readouterr().out
    assert "bayer_rggb8" in table and "end to end" in table
    assert "ratio end to end / model only" in table and "node stages p50" in table


def test_demo_reports_every_output_and_writes_a_mosaic(model_path, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--model", str(model_path), "--out", str(out), "--seconds", "2",
                     "--width", "320", "--height", "240"]) == 0
    report = json.loads((out / "report.json").read_text())
    for topic in ("image", "segmentation", "segmentation/color", "depth", "detections", "super_resolution",
                  "super_resolution/camera_info"):
        assert report["topics"][topic]["messages"] > 0, topic
    assert report["node_diagnostics"]["provider"] == "CPUExecutionProvider"
    assert report["label_info_classes"] == ["background", "bright"]
    assert report["node_errors"] == []
    mosaic = cv2.imread(str(out / "mosaic.png"))
    assert mosaic is not None and mosaic.shape == (480, 960, 3)
    assert "segmentation/color" in (out / "report.txt").read_text()
    assert "mosaic:" in capsys.readouterr().out


def test_demo_fails_in_one_line_on_a_missing_model(tmp_path, capsys):
    assert cli.main(["demo", "--model", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "model file not found" in err and "Traceback" not in err
