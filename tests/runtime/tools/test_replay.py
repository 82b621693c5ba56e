"""Online replay: bags played into the real perception_node (a separate process), its outputs
recorded and scored. Uses real rclpy; skipped where the ROS wheels are missing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")

from mtl_perception.bags.io import open_bag  # noqa: E402
from mtl_perception.bags.make import make_bag  # noqa: E402
from mtl_perception.tools.replay import ReplayError, ReplayOptions, replay_bag  # noqa: E402
from tests.conftest import ros_env  # noqa: E402
from tests.runtime.bags.test_evaluate import EXPECTED_DETECTION, expected_segmentation  # noqa: E402
from tests.runtime.model_factory import export_bright_box_model, write_bright_box_bag  # noqa: E402


def test_replay_starts_the_node_and_scores_what_came_back(tmp_path):
    model = tmp_path / "bright.onnx"
    export_bright_box_model(model, (64, 48))
    bag = tmp_path / "bag"
    stamps = write_bright_box_bag(bag, "mcap", frames=20, rate=10.0, bad={7: "encoding"})
    ns = f"/replay_{os.getpid()}"
    report = replay_bag(bag, tmp_path / "report", str(model),
                        ReplayOptions(start_node=True, node_namespace=ns, rate=1.0, providers="cpu", samples=1))

    online = report["online"]
    assert report["mode"] == "online" and online["node"] == "started by replay"
    assert online["frames_published"] == 20 and online["bad_input_frames"] == 1
    assert "nv24" in online["bad_input_examples"][0]["detail"]
    returned = online["frames_returned"]
    assert returned >= 15, online  # a 64x48 model keeps up with 10 Hz even on a busy 2-core machine
    assert returned + online["dropped"] == 19
    e2e = online["latency_ms"]["end_to_end"]
    assert e2e["n"] == returned and 0 < e2e["p50"] <= e2e["max"] < 5000
    for topic in ("segmentation", "depth", "detections", "super_resolution", "super_resolution/camera_info"):
        stats = online["latency_ms"][f"topic {topic}"]
        assert stats["n"] == returned and stats["p50"] > 0, topic
    assert online["throughput_hz"] > 0 and online["unmatched_outputs"] == 0
    assert online["node_errors"] == []

    # The same accuracy metrics as offline, on the frames that came back (the node was started
    # with score_threshold 0, so mAP sees what offline evaluation sees).
    assert report["frames"]["evaluated"] == returned
    assert report["frames"]["not_returned"] == 20 - 1 - returned
    assert report["frames"]["skipped_by_reason"] == {"unsupported_encoding": 1}
    for key, value in expected_segmentation().items():
        assert report["tasks"]["segmentation"][key] == pytest.approx(value, rel=1e-12)
    for key, value in EXPECTED_DETECTION.items():
        assert report["tasks"]["detection"][key] == pytest.approx(value, abs=1e-9)

    # the recording is an ordinary bag of the node's topics, stamped with the input headers
    with open_bag(online["recorded_bag"]) as reader:
        assert reader.storage == "mcap"
        counts = {name: info.count for name, info in reader.topics.items()}
        assert counts[f"{ns}/segmentation"] == returned and counts[f"{ns}/detections"] == returned
        for _, msgtype, _, raw in reader.messages([f"{ns}/depth"]):
            msg = reader.deserialize(raw, msgtype)
            assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec in stamps
            assert (msg.encoding, msg.width, msg.height) == ("32FC1", 64, 48)
    out = tmp_path / "report"
    assert json.loads((out / "metrics.json").read_text())["online"]["frames_returned"] == returned
    assert "Online replay" in (out / "summary.md").read_text()
    assert (out / "latency.png").stat().st_size > 1000 and (out / "metrics_over_time.png").stat().st_size > 1000


def test_replay_into_a_node_the_user_started_with_sim_time(tmp_path, exported_models):
    model = tmp_path / "tiny.onnx"
    exported_models.export_synthetic_world_model(model, input_size=(64, 32))
    bag = tmp_path / "drive"
    make_bag(bag, frames=10, width=128, height=64, storage="sqlite3", rate=10.0)
    ns = f"/user_{os.getpid()}"
    script = Path(sys.executable).with_name("perception_node")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mtl_perception.ros.node"]
    node = subprocess.Popen(cmd + ["--ros-args", "-r", f"__ns:={ns}", "-r", "image:=/camera/image_raw",
                                   "-r", "camera_info:=/camera/camera_info", "-p", f"model_path:={model}",
                                   "-p", "use_sim_time:=true", "-p", "providers:=[cpu]"],
                            env=ros_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        report = replay_bag(bag, tmp_path / "report", str(model),
                            ReplayOptions(start_node=False, node_namespace=ns, clock=True, rate=2.0, samples=0,
                                          startup_timeout=60))
    finally:
        node.send_signal(signal.SIGINT)
        try:
            log, _ = node.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            log, _ = node.communicate()
    online = report["online"]
    assert online["node"] == "user's node" and online["clock"] is True
    assert online["frames_published"] == 10 and online["frames_returned"] >= 7, (online, log)
    assert online["latency_ms"]["end_to_end"]["p50"] > 0
    assert online["input_rate_hz"] == pytest.approx(20.0, rel=0.3)  # rate 2x of a 10 Hz bag
    # With /clock the node's own latency (its clock minus the header stamp) is bag time: seconds
    # at most, not the years between the bag's stamps and today's wall clock.
    diag = online["node_diagnostics"]
    assert diag is not None, log
    if diag["latency_p50_ms"] != "nan":
        assert 0 <= float(diag["latency_p50_ms"]) < 60_000, diag
    assert set(report["tasks"]) == {"segmentation", "depth", "detection", "super_resolution"}
    assert report["tasks"]["segmentation"]["pixel_acc"] is not None


def test_replay_without_a_node_says_so_in_one_line(tmp_path):
    model = tmp_path / "bright.onnx"
    export_bright_box_model(model, (64, 48))
    write_bright_box_bag(tmp_path / "bag", "sqlite3", frames=2)
    with pytest.raises(ReplayError) as info:
        replay_bag(tmp_path / "bag", tmp_path / "report", str(model),
                   ReplayOptions(node_namespace=f"/nobody_{os.getpid()}", startup_timeout=2.0))
    message = str(info.value)
    assert "\n" not in message and "nobody subscribes to /camera/image_raw" in message and "--start-node" in message
