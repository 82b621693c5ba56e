"""perception_node as a separate process with real rclpy, driven from this process.

The model is `tests.runtime.model_factory.export_bright_box_model`: a hand-built contract model whose outputs
are known in closed form (segmentation = R > 127, depth = R / 32, a detection box tight around
the bright pixels plus one fixed box, SR = pixel repetition). Frames are 640x360 while the model
takes 64x48, so every mapping back to the input image is checked with different x and y scales.
"""
from __future__ import annotations

import array
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from mtl_perception.inference.pixels import color_to_array  # noqa: E402
from mtl_perception.messages.image import array_to_image, image_to_array  # noqa: E402
from mtl_perception.ros.spin import spin_in_background  # noqa: E402
from tests import REPO as ROOT  # noqa: E402
from tests.conftest import ros_env  # noqa: E402
from tests.runtime.model_factory import (  # noqa: E402
    BRIGHT_BOX_CLASSES,
    BRIGHT_SCORE,
    DETECTION,
    FIXED_BOX,
    FIXED_SCORE,
    export_bright_box_model,
)

MODEL_W, MODEL_H = 64, 48
IMAGE_W, IMAGE_H = 640, 360  # scale 10 in x, 7.5 in y
RECT = (200, 90, 400, 270)  # x1, y1, x2, y2 of the red rectangle; maps to model pixels exactly
SX, SY = IMAGE_W / MODEL_W, IMAGE_H / MODEL_H
IMAGE_OUTPUTS = ("segmentation", "segmentation/color", "depth", "super_resolution")
ALL_OUTPUTS = IMAGE_OUTPUTS + ("detections", "super_resolution/camera_info")
#: Live-node-only outputs (also subscribed by the probe, so the node renders them).
LIVE_OUTPUTS = ("depth/camera_info", "points", "detections/image")
OUTPUT_TYPES = {"detections": Detection2DArray, "super_resolution/camera_info": CameraInfo,
                "depth/camera_info": CameraInfo, "points": PointCloud2}


# ------------------------------------------------------------------------------------ helpers
def scene(encoding: str = "bgr8", step_padding: int = 0) -> Image:
    """The test frame: black with a pure red rectangle at RECT, in `encoding`."""
    rgb = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
    x1, y1, x2, y2 = RECT
    rgb[y1:y2, x1:x2] = (255, 0, 0)
    if encoding == "mono8":  # a mono frame: the rectangle is white (R = G = B = 255)
        pixels = rgb.max(axis=2)
    elif encoding.startswith("bayer_") or encoding in ("uyvy", "yuyv", "nv12", "nv21"):  # as a raw sensor sends it
        pixels = color_to_array(rgb, encoding.replace("16", "8"))
        if encoding.endswith("16"):
            pixels = pixels.astype(np.uint16) * 257
    elif encoding in ("bgr8", "bgra8"):
        pixels = rgb[..., ::-1]
    else:
        pixels = rgb
    if encoding in ("rgba8", "bgra8"):
        pixels = np.concatenate([pixels, np.full((IMAGE_H, IMAGE_W, 1), 255, np.uint8)], axis=2)
    msg = array_to_image(pixels, encoding)
    if step_padding:
        packed = np.frombuffer(msg.data, np.uint8).reshape(-1, msg.step)  # nv12: 3/2 x IMAGE_H rows
        padded = np.full((packed.shape[0], msg.step + step_padding), 77, np.uint8)
        padded[:, : msg.step] = packed
        msg.step = msg.step + step_padding
        msg.data = array.array("B", padded.tobytes())
    msg.header.frame_id = "test_camera"
    return msg


def camera_info() -> CameraInfo:
    info = CameraInfo()
    info.header.frame_id = "test_camera"
    info.width, info.height = IMAGE_W, IMAGE_H
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = np.array([500.0, 0.0, 319.5, 0.0, 510.0, 179.5, 0.0, 0.0, 1.0])
    info.r = np.eye(3).reshape(9)
    info.p = np.array([500.0, 0.0, 319.5, 0.0, 0.0, 510.0, 179.5, 0.0, 0.0, 0.0, 1.0, 0.0])
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 50, 400, 200
    return info


def key(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class NodeProcess:
    """`python -m mtl_perception.ros.node` with the test environment; output goes to a file."""

    def __init__(self, *ros_args: str) -> None:
        self.log_file = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtl_perception.ros.node", "--ros-args", *ros_args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=ros_env(), text=True)

    def log(self) -> str:
        with open(self.log_file.name) as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log_file.name)
        return self.proc.returncode


class Probe:
    """Camera publisher, output subscribers and parameter/lifecycle clients in this process."""

    def __init__(self, namespace: str, image_topic: str = "image", info_topic: str = "camera_info",
                 best_effort: bool = False, compressed: bool = False) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node("probe", namespace=namespace, context=self.context)
        self.namespace = namespace
        reliability = ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        if compressed:  # image_transport's naming: <image topic>/compressed
            self.image_pub = self.node.create_publisher(CompressedImage, f"{image_topic}/compressed", qos)
        else:
            self.image_pub = self.node.create_publisher(Image, image_topic, qos)
        self.info_pub = self.node.create_publisher(CameraInfo, info_topic, qos)
        self.lock = threading.Lock()
        self.got: Dict[str, Dict[int, object]] = defaultdict(dict)
        self.labels: List[LabelInfo] = []
        self.diagnostics: List[DiagnosticStatus] = []
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for topic in ALL_OUTPUTS + LIVE_OUTPUTS:
            self.node.create_subscription(OUTPUT_TYPES.get(topic, Image), topic, self._store(topic), out_qos)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(LabelInfo, "label_info", self._on_labels, latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, out_qos)
        node_name = f"{namespace}/perception_node"
        self.set_params = self.node.create_client(SetParameters, f"{node_name}/set_parameters")
        self.change_state = self.node.create_client(ChangeState, f"{node_name}/change_state")
        self.get_state = self.node.create_client(GetState, f"{node_name}/get_state")
        self.executor, self.thread = spin_in_background(self.node, self.context)

    def _store(self, topic: str):
        def callback(msg) -> None:
            with self.lock:
                self.got[topic][key(msg.header)] = msg
        return callback

    def _on_labels(self, msg: LabelInfo) -> None:
        with self.lock:
            self.labels.append(msg)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics.extend(s for s in msg.status if s.name == f"{self.namespace.strip('/')}/perception_node")

    def publish(self, msg, with_info: bool = True) -> int:
        msg.header.stamp = self.node.get_clock().now().to_msg()
        if with_info:
            info = camera_info()
            info.header = msg.header
            self.info_pub.publish(info)
        self.image_pub.publish(msg)
        return key(msg.header)

    def outputs_for(self, frame, topics=ALL_OUTPUTS, timeout: float = 30.0, period: float = 0.3,
                    with_info: bool = True) -> Dict[str, object]:
        """Publishes `frame` (a fresh stamp each time) until one stamp has every topic's output;
        `frame.header.stamp` is then that stamp's (a slow node may answer an earlier copy)."""
        deadline = time.monotonic() + timeout
        stamps: List[int] = []
        while time.monotonic() < deadline:
            stamps.append(self.publish(frame, with_info))
            end = time.monotonic() + period
            while time.monotonic() < end:
                with self.lock:
                    for stamp in stamps:
                        if all(stamp in self.got[t] for t in topics):
                            frame.header.stamp.sec, frame.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                            return {t: self.got[t][stamp] for t in topics}
                time.sleep(0.02)
        with self.lock:
            seen = {t: len(self.got[t]) for t in topics}
        raise AssertionError(f"no complete set of outputs within {timeout} s; messages per topic: {seen}")

    def count_outputs(self, frame: Image, seconds: float, topics=ALL_OUTPUTS) -> int:
        """Publishes for `seconds`; how many outputs carried one of those stamps."""
        stamps = set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stamps.add(self.publish(frame))
            time.sleep(0.1)
        time.sleep(0.5)
        with self.lock:
            return sum(1 for t in topics for s in self.got[t] if s in stamps)

    def call(self, client, request, timeout: float = 20.0):
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future.done(), f"no answer from {client.srv_name}"
        return future.result()

    def set_parameter(self, name: str, value):
        param = ParameterMsg(name=name)
        if isinstance(value, bool):
            param.value = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, int):
            param.value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        elif isinstance(value, float):
            param.value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        else:
            param.value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        return self.call(self.set_params, SetParameters.Request(parameters=[param])).results[0]

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(self.change_state, request).success

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(timeout=5.0)


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("node_model") / "bright_box.onnx"
    export_bright_box_model(path, input_size=(MODEL_W, MODEL_H))
    return path


@pytest.fixture(scope="module")
def running(model_path):
    """One node for the output tests: the shipped params file, remapped input topics."""
    ns = "/node_test"
    node = NodeProcess("-r", f"__ns:={ns}", "--params-file", str(ROOT / "config" / "perception.yaml"),
                       "-p", f"model_path:={model_path}", "-p", "diagnostics_period:=0.5",
                       "-r", "image:=camera/image_raw", "-r", "camera_info:=camera/camera_info")
    probe = Probe(ns, image_topic="camera/image_raw", info_topic="camera/camera_info")
    try:
        yield node, probe
    finally:
        probe.close()
        node.stop()


def header_ok(msg, frame: Image) -> bool:
    return key(msg.header) == key(frame.header) and msg.header.frame_id == "test_camera"


# -------------------------------------------------------------------------------------- tests
def test_every_output_arrives_with_type_encoding_size_and_header(running):
    node, probe = running
    frame = scene("bgr8")
    out = probe.outputs_for(frame)
    assert node.alive()
    for topic, msg in out.items():
        assert header_ok(msg, frame), topic

    seg = out["segmentation"]
    assert (seg.encoding, seg.width, seg.height, seg.step) == ("mono8", MODEL_W, MODEL_H, MODEL_W)
    expected = np.zeros((MODEL_H, MODEL_W), np.uint8)
    expected[int(RECT[1] / SY):int(RECT[3] / SY), int(RECT[0] / SX):int(RECT[2] / SX)] = 1
    np.testing.assert_array_equal(image_to_array(seg), expected)

    color = out["segmentation/color"]
    assert (color.encoding, color.width, color.height) == ("bgr8", MODEL_W, MODEL_H)

    depth = out["depth"]
    assert (depth.encoding, depth.width, depth.height, depth.step) == ("32FC1", MODEL_W, MODEL_H, MODEL_W * 4)
    values = image_to_array(depth)
    assert np.all(np.isnan(values[expected == 0]))  # R = 0 -> 0 m, outside (0.5, 8]: NaN (REP 118)
    np.testing.assert_allclose(values[expected == 1], 255 / 32.0)

    sr = out["super_resolution"]
    assert (sr.encoding, sr.width, sr.height) == ("bgr8", 2 * MODEL_W, 2 * MODEL_H)
    sr_pixels = image_to_array(sr)
    np.testing.assert_array_equal(sr_pixels[2 * 24, 2 * 30], [0, 0, 255])  # inside the rectangle: red in BGR
    np.testing.assert_array_equal(sr_pixels[0, 0], [0, 0, 0])

    info = out["super_resolution/camera_info"]
    assert (info.width, info.height) == (2 * MODEL_W, 2 * MODEL_H)
    fx, fy = 2 * MODEL_W / IMAGE_W, 2 * MODEL_H / IMAGE_H  # input image -> SR image, image_proc's rule
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3),
                               [[500 * fx, 0, 319.5 * fx], [0, 510 * fy, 179.5 * fy], [0, 0, 1]])
    np.testing.assert_allclose(np.asarray(info.p)[[0, 2, 5, 6]], [500 * fx, 319.5 * fx, 510 * fy, 179.5 * fy])
    assert (info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height) == (
        int(100 * fx), int(50 * fy), int(400 * fx), int(200 * fy))

    with probe.lock:
        labels = list(probe.labels)
    assert labels, "label_info (transient local) not received"
    assert [(c.class_id, c.class_name) for c in labels[-1].class_map] == list(enumerate(BRIGHT_BOX_CLASSES))
    assert labels[-1].threshold == pytest.approx(0.3)


def test_the_node_publishes_exactly_the_registry_topics_of_its_model(running, model_path):
    """The node's publishers, read from the ROS graph, are the kinds registry's topics of the
    model's tasks (names and types) and /diagnostics: no topic table of its own."""
    from mtl_perception.inference.loader import load_model
    from mtl_perception.kinds import registry

    node, probe = running
    probe.outputs_for(scene("bgr8"))  # the node is up and publishing
    tasks = load_model(model_path).metadata.tasks
    expected = {f"/node_test/{t.name}": t.msgtype for t in registry.topics_for(tasks, live=True)}
    expected["/diagnostics"] = "diagnostic_msgs/msg/DiagnosticArray"
    ros_own = ("/parameter_events", "/rosout")
    published = {name: kinds[0] for name, kinds in probe.node.get_publisher_names_and_types_by_node(
        "perception_node", "/node_test") if name not in ros_own and not name.endswith("/transition_event")}
    assert published == expected
    assert len(expected) == 11  # all four kinds: ten outputs (three of them live-only) and diagnostics
    assert {"/node_test/depth/camera_info", "/node_test/points", "/node_test/detections/image"} <= set(expected)


def test_detection_boxes_land_on_the_object_in_input_image_pixels(running):
    _, probe = running
    frame = scene("bgr8")
    dets = probe.outputs_for(frame, topics=("detections",))["detections"]
    assert header_ok(dets, frame)
    assert len(dets.detections) == 2  # default threshold 0.3 keeps 0.9 and 0.4
    first, second = dets.detections
    x1, y1, x2, y2 = RECT  # the red rectangle drawn into the 640x360 frame
    assert first.bbox.center.position.x == pytest.approx((x1 + x2) / 2)
    assert first.bbox.center.position.y == pytest.approx((y1 + y2) / 2)
    assert first.bbox.size_x == pytest.approx(x2 - x1)
    assert first.bbox.size_y == pytest.approx(y2 - y1)
    assert first.results[0].hypothesis.class_id == DETECTION[0]
    assert first.results[0].hypothesis.score == pytest.approx(BRIGHT_SCORE, abs=1e-6)
    assert header_ok(first, frame)
    fx1, fy1, fx2, fy2 = FIXED_BOX  # model pixels -> input pixels with different x and y scales
    assert second.bbox.center.position.x == pytest.approx((fx1 + fx2) / 2 * SX)
    assert second.bbox.center.position.y == pytest.approx((fy1 + fy2) / 2 * SY)
    assert second.bbox.size_x == pytest.approx((fx2 - fx1) * SX)
    assert second.bbox.size_y == pytest.approx((fy2 - fy1) * SY)
    assert second.results[0].hypothesis.class_id == DETECTION[1]
    assert second.results[0].hypothesis.score == pytest.approx(FIXED_SCORE, abs=1e-6)


def test_run_time_parameter_changes_take_effect_and_invalid_values_are_rejected(running):
    node, probe = running
    frame = scene("bgr8")
    try:
        result = probe.set_parameter("score_threshold", 0.5)
        assert result.successful, result.reason
        dets = probe.outputs_for(frame, topics=("detections",))["detections"]
        assert [d.results[0].hypothesis.class_id for d in dets.detections] == [DETECTION[0]]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (probe.labels and abs(probe.labels[-1].threshold - 0.5) < 1e-6):
            time.sleep(0.05)
        assert probe.labels[-1].threshold == pytest.approx(0.5)

        for name, value, words in [("score_threshold", 1.5, "score_threshold"),
                                   ("output_resolution", "huge", "model, input"),
                                   ("max_detections", 0, "max_detections"),
                                   ("model_path", "/elsewhere.onnx", "unconfigured"),
                                   ("image_qos", "best_effort", "unconfigured")]:
            result = probe.set_parameter(name, value)
            assert not result.successful, name
            assert words in result.reason, (name, result.reason)

        assert probe.set_parameter("score_threshold", 0.1).successful
        assert probe.set_parameter("max_detections", 1).successful
        dets = probe.outputs_for(frame, topics=("detections",))["detections"]
        assert len(dets.detections) == 1 and dets.detections[0].results[0].hypothesis.score == pytest.approx(0.9)

        assert probe.set_parameter("output_resolution", "input").successful
        out = probe.outputs_for(frame, topics=IMAGE_OUTPUTS)
        for topic in ("segmentation", "segmentation/color", "depth"):
            assert (out[topic].width, out[topic].height) == (IMAGE_W, IMAGE_H), topic
        seg = image_to_array(out["segmentation"])
        x1, y1, x2, y2 = RECT
        assert seg[y1:y2, x1:x2].min() == 1 and seg.sum() == (x2 - x1) * (y2 - y1)
        assert (out["super_resolution"].width, out["super_resolution"].height) == (2 * MODEL_W, 2 * MODEL_H)
    finally:
        for name, value in [("score_threshold", 0.3), ("max_detections", 100), ("output_resolution", "model")]:
            probe.set_parameter(name, value)
    assert node.alive()


@pytest.mark.parametrize("encoding,padding", [("rgb8", 0), ("bgra8", 0), ("rgba8", 0), ("mono8", 0), ("bgr8", 13),
                                              ("bayer_rggb8", 0), ("bayer_gbrg16", 6), ("uyvy", 0), ("yuyv", 4),
                                              ("nv12", 0), ("nv21", 10)])
def test_supported_encodings_and_row_padding(running, encoding, padding):
    _, probe = running
    frame = scene(encoding, step_padding=padding)
    out = probe.outputs_for(frame, topics=("detections", "segmentation"))
    box = out["detections"].detections[0].bbox
    assert (box.center.position.x, box.center.position.y, box.size_x, box.size_y) == (
        pytest.approx(300.0), pytest.approx(180.0), pytest.approx(200.0), pytest.approx(180.0))
    assert image_to_array(out["segmentation"]).sum() == 20 * 24
    latest_diagnostics(probe, lambda v: v["input_format"] == f"{encoding} {IMAGE_W}x{IMAGE_H}")  # what came in


def test_bad_frames_are_skipped_with_one_warning_per_kind_of_problem(running):
    """Five bad frames of two kinds, three times, then 100 short frames whose texts all differ:
    one line per kind (not per text) in the throttle period, then one line carrying how many
    were suppressed; every bad frame is counted in the diagnostics."""
    node, probe = running
    bad = []
    yuv = scene("bgr8")
    yuv.encoding = "nv24"  # 4:4:4 YUV in two planes: not converted
    bad.append(yuv)
    generic = scene("bgr8")
    generic.encoding = "8UC3"  # no colour order
    bad.append(generic)
    short = scene("bgr8")
    short.data = array.array("B", bytes(IMAGE_W * 3 * 10))  # height x step needs far more
    bad.append(short)
    empty = Image(encoding="bgr8", height=0, width=0, step=0)
    empty.header.frame_id = "test_camera"
    bad.append(empty)
    narrow = scene("bgr8")
    narrow.step = 10  # smaller than width * 3
    bad.append(narrow)
    first = time.monotonic()
    for _ in range(3):
        for frame in bad:
            probe.publish(frame, with_info=False)
            time.sleep(0.05)
    rng = np.random.default_rng(0)
    for _ in range(100):  # random lengths: 100 different messages of one kind
        short.data = array.array("B", bytes(int(rng.integers(1, IMAGE_W * 3 * 100))))
        probe.publish(short, with_info=False)
        time.sleep(0.01)
    time.sleep(1.0)
    assert node.alive()
    log = node.log()
    assert log.count("frame skipped (encoding)") == 1 and "'nv24'" in log
    assert log.count("frame skipped (size)") == 1 and "height*step" in log
    time.sleep(max(0.0, first + 5.5 - time.monotonic()))  # past the throttle period
    probe.publish(yuv, with_info=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and node.log().count("frame skipped (encoding)") < 2:
        time.sleep(0.1)
    log = node.log()
    assert log.count("frame skipped (encoding)") == 2
    assert "(5 more 'encoding' problem(s) suppressed" in log  # 6 before, 1 logged
    assert "Traceback" not in log
    out = probe.outputs_for(scene("bgr8"), topics=("detections",))  # still serving
    assert len(out["detections"].detections) == 2
    values = latest_diagnostics(probe, lambda v: "encoding=7" in v["problems"])
    problems = dict(item.split("=") for item in values["problems"].split(", "))
    assert int(problems["size"]) > 50 and int(values["frames_rejected"]) >= int(problems["size"]) + 7


def latest_diagnostics(probe, accept, timeout: float = 15.0) -> Dict[str, str]:
    """The values of the newest diagnostics status (of the probe's node) that `accept` takes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with probe.lock:
            statuses = list(probe.diagnostics)
        for status in reversed(statuses):
            values = {v.key: v.value for v in status.values}
            values["message"] = status.message
            if accept(values):
                return values
        time.sleep(0.1)
    raise AssertionError(f"no accepted diagnostics within {timeout} s (last: {statuses[-1:] if statuses else None})")


def uniform_frame(red: int) -> Image:
    """A bgr8 frame of one colour (R = red): the bright-box model's depth is red / 32 everywhere."""
    pixels = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
    pixels[..., 2] = red
    msg = array_to_image(pixels, "bgr8")
    msg.header.frame_id = "test_camera"
    return msg


def cloud_array(msg) -> np.ndarray:
    """The PointCloud2's points through a dtype read from its own fields."""
    formats = {7: "<f4", 6: "<u4"}
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": [formats[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width)


def test_depth_camera_info_and_points_on_a_fronto_parallel_plane(running):
    _, probe = running
    frame = uniform_frame(128)  # depth 128 / 32 = 4 m everywhere
    out = probe.outputs_for(frame, topics=("depth", "depth/camera_info", "points"))
    info, cloud_msg = out["depth/camera_info"], out["points"]
    assert header_ok(info, frame) and header_ok(cloud_msg, frame)
    sx, sy = MODEL_W / IMAGE_W, MODEL_H / IMAGE_H  # camera image -> depth image (image_proc's rule)
    assert (info.width, info.height) == (MODEL_W, MODEL_H)
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3),
                               [[500 * sx, 0, 319.5 * sx], [0, 510 * sy, 179.5 * sy], [0, 0, 1]])
    np.testing.assert_allclose(np.asarray(info.p)[[0, 2, 5, 6]], [500 * sx, 319.5 * sx, 510 * sy, 179.5 * sy])
    assert (cloud_msg.height, cloud_msg.width) == (MODEL_H, MODEL_W)
    cloud = cloud_array(cloud_msg)
    v, u = np.mgrid[0:MODEL_H, 0:MODEL_W]
    np.testing.assert_allclose(cloud["z"], 4.0)
    np.testing.assert_allclose(cloud["x"], (u - 319.5 * sx) * 4.0 / (500 * sx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cloud["y"], (v - 179.5 * sy) * 4.0 / (510 * sy), rtol=1e-5, atol=1e-5)
    assert (cloud["rgb"].view(np.uint32) == (128 << 16)).all()  # packed 0x00RRGGBB: R = 128
    # The scene: the red rectangle's patch at 255/32 m, NaN (invalid depth) around it.
    assert cloud_msg.is_dense  # no invalid point
    cloud_msg = probe.outputs_for(scene("bgr8"), topics=("points",))["points"]
    cloud = cloud_array(cloud_msg)
    inside = np.zeros((MODEL_H, MODEL_W), bool)
    inside[int(RECT[1] / SY):int(RECT[3] / SY), int(RECT[0] / SX):int(RECT[2] / SX)] = True
    np.testing.assert_allclose(cloud["z"][inside], 255 / 32.0)
    assert np.isnan(cloud["z"][~inside]).all() and not cloud_msg.is_dense


def test_detection_overlay_image(running):
    from mtl_perception.inference.postprocess import PALETTE_BGR

    _, probe = running
    frame = scene("bgr8")
    image = probe.outputs_for(frame, topics=("detections/image",))["detections/image"]
    assert header_ok(image, frame)
    assert (image.encoding, image.width, image.height) == ("bgr8", IMAGE_W, IMAGE_H)
    pixels = image_to_array(image)
    x1, y1, x2, y2 = RECT  # the bright box, class 0, drawn in input-image pixels
    for y, x in [(180, x1), (180, x2 - 1), (y2 - 1, 300), (y1 + 1, 300)]:
        np.testing.assert_array_equal(pixels[y, x], PALETTE_BGR[0], err_msg=str((y, x)))
    np.testing.assert_array_equal(pixels[180, 300], [0, 0, 255])  # inside: the red input
    inner = (slice(y1 + 10, y2 - 10), slice(x1 + 10, x2 - 10))
    np.testing.assert_array_equal(pixels[inner], image_to_array(frame)[inner])
    np.testing.assert_array_equal(pixels[350, 630], [0, 0, 0])  # away from both boxes
    np.testing.assert_array_equal(pixels[50, 79], PALETTE_BGR[1])  # the fixed box (class 1): right edge


def test_diagnostics_report_rates_latency_drops_provider_and_model(running):
    node, probe = running
    with probe.lock:
        probe.diagnostics.clear()
    probe.count_outputs(scene("bgr8"), seconds=2.0, topics=("detections",))
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        with probe.lock:
            hits = [s for s in probe.diagnostics if float({v.key: v.value for v in s.values}["frames_processed"]) > 0]
        if hits:
            status = hits[-1]
            break
        time.sleep(0.1)
    assert status is not None, "no diagnostics from the node"
    values = {v.key: v.value for v in status.values}
    assert status.level == DiagnosticStatus.OK
    assert values["provider"] == "CPUExecutionProvider"
    assert values["model"] == "bright-box" and status.hardware_id == "bright-box"
    for name in ("input_rate_hz", "output_rate_hz", "latency_p50_ms", "latency_p95_ms", "drop_rate"):
        assert math.isfinite(float(values[name])), name
    assert float(values["latency_p95_ms"]) >= float(values["latency_p50_ms"]) > 0
    assert int(values["frames_received"]) >= int(values["frames_processed"]) > 0
    assert int(values["frames_dropped"]) >= 0
    assert values["input_topic"] == "/node_test/camera/image_raw"

    # A matched publisher that sends nothing: WARN after input_timeout.
    assert probe.set_parameter("input_timeout", 0.5).successful
    try:
        deadline = time.monotonic() + 10
        warned = None
        while time.monotonic() < deadline and warned is None:
            with probe.lock:
                warned = next((s for s in reversed(probe.diagnostics) if s.level == DiagnosticStatus.WARN), None)
            time.sleep(0.1)
        assert warned is not None, "no WARN while the matched camera is silent"
        assert "no frame" in warned.message and "/node_test/camera/image_raw" in warned.message
    finally:
        probe.set_parameter("input_timeout", 5.0)


def fresh_diagnostics(probe: Probe) -> Dict[str, str]:
    """The values of the node's next diagnostics status."""
    with probe.lock:
        probe.diagnostics.clear()
    return latest_diagnostics(probe, lambda values: True)


def test_a_camera_faster_than_the_model_is_counted_frame_for_frame(model_path):
    """A burst far faster than the node: frames replaced unread in the subscription (the gate is
    closed while the worker has a frame) count as received and dropped, from their sequence
    numbers, so received = the frames sent, and processed + dropped = received."""
    from mtl_perception.ros.frame_gate import MESSAGE_INFO_CALLBACKS

    ns = "/node_burst"
    node = NodeProcess("-r", f"__ns:={ns}", "-p", f"model_path:={model_path}", "-p", "diagnostics_period:=0.3")
    probe = Probe(ns)
    frame = scene("bgr8")
    try:
        probe.outputs_for(frame, topics=("detections",))  # matched and running
        time.sleep(1.0)
        before = fresh_diagnostics(probe)
        burst = 150
        for _ in range(burst):
            probe.publish(frame, with_info=False)
        time.sleep(1.5)
        after = fresh_diagnostics(probe)
        received = int(after["frames_received"]) - int(before["frames_received"])
        processed = int(after["frames_processed"]) - int(before["frames_processed"])
        dropped = int(after["frames_dropped"]) - int(before["frames_dropped"])
        assert (int(after["frames_rejected"]), int(after["frames_failed"])) == (0, 0)
        if MESSAGE_INFO_CALLBACKS:
            assert after["frame_intake"] == "on demand"
            assert received == burst, after
        else:
            assert after["frame_intake"] == "every frame"
        assert processed + dropped == received
        assert 0 < processed < burst and dropped > 0
        assert probe.outputs_for(frame, topics=("detections",))  # the gate reopened: still serving
        assert "Traceback" not in node.log()
    finally:
        probe.close()
        node.stop()


def test_lifecycle_transitions_and_best_effort_input(model_path):
    ns = "/node_lifecycle"
    node = NodeProcess("-r", f"__ns:={ns}", "-p", f"model_path:={model_path}", "-p", "autostart:=false",
                       "-p", "image_qos:=best_effort")
    probe = Probe(ns, best_effort=True)
    frame = scene("bgr8")
    try:
        assert probe.state() == "unconfigured"
        assert probe.count_outputs(frame, 1.0) == 0
        assert probe.transition(Transition.TRANSITION_CONFIGURE)
        assert probe.state() == "inactive"
        assert probe.count_outputs(frame, 1.5) == 0  # inactive: nothing processed or published
        assert probe.transition(Transition.TRANSITION_ACTIVATE)
        assert probe.state() == "active"
        out = probe.outputs_for(frame, topics=("detections", "segmentation"))
        assert len(out["detections"].detections) == 2
        assert not probe.set_parameter("model_path", str(model_path)).successful  # read-only while configured
        assert probe.transition(Transition.TRANSITION_DEACTIVATE)
        assert probe.state() == "inactive"
        time.sleep(0.5)
        assert probe.count_outputs(frame, 1.5) == 0
        assert probe.transition(Transition.TRANSITION_CLEANUP)
        assert probe.state() == "unconfigured"
        assert probe.set_parameter("model_path", str(model_path)).successful  # allowed again
        assert probe.transition(Transition.TRANSITION_CONFIGURE)
        assert probe.transition(Transition.TRANSITION_ACTIVATE)
        assert probe.outputs_for(frame, topics=("detections",))
        assert probe.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert probe.state() == "finalized"
        assert node.alive()
        assert "Traceback" not in node.log()
    finally:
        probe.close()
        rc = node.stop()
    assert rc == 0


def compressed(frame: Image, fmt: str, wire_format: str) -> CompressedImage:
    """`frame` (bgr8) encoded by OpenCV as jpeg (quality 95) or png, as a driver publishes it."""
    import cv2

    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]) if fmt == "jpeg" else (".png", [])
    ok, data = cv2.imencode(ext, image_to_array(frame), params)
    assert ok
    msg = CompressedImage(format=wire_format)
    msg.header.frame_id = "test_camera"
    msg.data = array.array("B", data.tobytes())
    return msg


def test_compressed_jpeg_and_png_input(model_path):
    """input_transport compressed: CompressedImage on <image topic>/compressed (the remapped one),
    decoded like a raw frame; undecodable data is skipped and counted; without any CameraInfo
    the diagnostics say the intrinsics-based outputs wait for it."""
    ns = "/node_compressed"
    node = NodeProcess("-r", f"__ns:={ns}", "-p", f"model_path:={model_path}", "-p", "input_transport:=compressed",
                       "-p", "diagnostics_period:=0.5", "-r", "image:=camera/image_raw")
    probe = Probe(ns, image_topic="camera/image_raw", compressed=True)
    try:
        png = compressed(scene("bgr8"), "png", "bgr8; png compressed bgr8")
        out = probe.outputs_for(png, topics=("detections", "segmentation"), with_info=False)
        assert header_ok(out["segmentation"], png)
        assert image_to_array(out["segmentation"]).sum() == 20 * 24  # lossless: exactly the raw result
        box = out["detections"].detections[0].bbox
        assert (box.center.position.x, box.center.position.y, box.size_x, box.size_y) == (
            pytest.approx(300.0), pytest.approx(180.0), pytest.approx(200.0), pytest.approx(180.0))

        jpeg = compressed(scene("bgr8"), "jpeg", "jpeg")
        out = probe.outputs_for(jpeg, topics=("detections", "depth"), with_info=False)
        box = out["detections"].detections[0].bbox  # within one model pixel of the raw result
        assert abs(box.center.position.x - 300.0) <= SX and abs(box.size_x - 200.0) <= 2 * SX
        assert abs(box.center.position.y - 180.0) <= SY and abs(box.size_y - 180.0) <= 2 * SY

        broken = CompressedImage(format="jpeg")
        broken.data = array.array("B", bytes(range(256)) * 4)
        for _ in range(3):
            probe.publish(broken, with_info=False)
            time.sleep(0.1)
        values = latest_diagnostics(probe, lambda v: "decode=" in v["problems"])
        assert values["input_transport"] == "compressed"
        assert values["input_format"] == f"bgr8 {IMAGE_W}x{IMAGE_H} (from jpeg)"  # the last frame decoded
        assert values["input_topic"] == f"{ns}/camera/image_raw/compressed"
        assert "no CameraInfo" in values["message"] and "depth/camera_info" in values["message"]
        assert values["camera_info"].startswith("none received")
        with probe.lock:
            assert not probe.got["depth/camera_info"] and not probe.got["points"]  # never guessed
        assert node.alive()
        log = node.log()
        assert "frame skipped (decode)" in log and "cannot be decoded" in log and "Traceback" not in log
    finally:
        probe.close()
        node.stop()


def test_auto_qos_receives_a_reliable_and_a_best_effort_camera(model_path):
    """image_qos auto (the default): reliable while the only publisher is reliable; a
    best-effort publisher appearing switches the subscription to best effort, which receives
    both; the choice is in the diagnostics."""
    ns = "/node_auto"
    node = NodeProcess("-r", f"__ns:={ns}", "-p", f"model_path:={model_path}", "-p", "diagnostics_period:=0.5",
                       "-p", "input_timeout:=1.5")
    listener = Probe(ns, image_topic="not_the_camera")  # diagnostics only
    reliable = best_effort = None
    try:
        # A camera that starts 2.5 s late (longer than input_timeout): no "no frame" warning at
        # start-up; silence counts from when its publisher appears.
        values = latest_diagnostics(listener, lambda v: v["message"].startswith("waiting for a publisher"))
        time.sleep(2.5)
        reliable = Probe(ns)
        appeared = time.monotonic()
        latest_diagnostics(listener, lambda v: v["input_publishers"] == "1")
        time.sleep(max(0.0, appeared + 1.0 - time.monotonic()))
        with listener.lock:
            levels = [(st.level, st.message) for st in listener.diagnostics]
        assert all(level == DiagnosticStatus.OK for level, _ in levels), levels
        out = reliable.outputs_for(scene("bgr8"), topics=("detections",))
        assert len(out["detections"].detections) == 2
        values = latest_diagnostics(reliable, lambda v: v["image_qos"].startswith("auto: reliable (1 reliable"))
        best_effort = Probe(ns, best_effort=True)
        out = best_effort.outputs_for(scene("bgr8"), topics=("detections",))
        assert len(out["detections"].detections) == 2
        values = latest_diagnostics(best_effort, lambda v: v["image_qos"].startswith("auto: best effort"))
        assert "1 reliable, 1 best-effort" in values["image_qos"]
        out = reliable.outputs_for(scene("bgr8"), topics=("detections",))  # the reliable camera still arrives
        assert len(out["detections"].detections) == 2
        log = node.log()
        assert "subscribed to /node_auto/image (Image): auto: reliable" in log
        assert "subscribed to /node_auto/image (Image): auto: best effort" in log
        assert "incompatible QoS" not in log  # the switch to best effort resolved the first mismatch
        assert values["incompatible_qos_events"] == "0"
    finally:
        for probe in (best_effort, reliable, listener):
            if probe is not None:
                probe.close()
        node.stop()


def test_reliable_subscription_reports_an_incompatible_best_effort_camera(model_path):
    ns = "/node_incompatible"
    node = NodeProcess("-r", f"__ns:={ns}", "-p", f"model_path:={model_path}", "-p", "image_qos:=reliable",
                       "-p", "diagnostics_period:=0.5")
    probe = Probe(ns, best_effort=True)
    try:
        assert probe.count_outputs(scene("bgr8"), 2.0, topics=("detections",)) == 0
        values = latest_diagnostics(probe, lambda v: int(v["incompatible_qos_events"]) > 0)
        assert values["image_qos"] == "reliable (set by image_qos)"
        log = node.log()
        assert f"incompatible QoS on {ns}/image" in log and "RELIABILITY" in log
    finally:
        probe.close()
        node.stop()


def _run_node(*ros_args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtl_perception.ros.node", "--ros-args", *ros_args],
                          env=ros_env(), capture_output=True, text=True, timeout=timeout)


def test_missing_or_unusable_models_exit_non_zero_with_one_line(tmp_path, model_path):
    missing = tmp_path / "nowhere" / "model.onnx"
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    bare = tmp_path / "bare.onnx"
    export_bright_box_model(bare, input_size=(MODEL_W, MODEL_H), metadata=False)
    cases = [(missing, "model file not found"), (corrupt, "cannot load model"), (bare, "metadata")]
    for path, words in cases:
        result = _run_node("-r", "__ns:=/node_bad_model", "-p", f"model_path:={path}")
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        errors = [line for line in output.splitlines() if "ERROR" in line]
        assert len(errors) == 1, output
        assert str(path) in errors[0] and words in errors[0], output
        assert "Traceback" not in output


def test_console_script_and_unset_model_path():
    script = Path(sys.executable).parent / "perception_node"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mtl_perception.ros.node"]
    result = subprocess.run(command + ["--ros-args", "-r", "__ns:=/node_unset"], env=ros_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "model_path is not set" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("mode", ["letterbox", "crop"])
def test_letterbox_and_crop_models_publish_boxes_in_camera_pixels(tmp_path, mode):
    """A 64x48 model on the 640x360 camera.

    letterbox: scale 0.1 on both axes, image rows 6..42 of the model. The red rectangle's box
    comes back exactly at RECT; the fixed box (model 0..8) starts in the padding and is clipped
    to the image's top edge; the padded rows are not image (segmentation 255, depth NaN); the
    depth intrinsics move down by the 6 rows of padding.
    crop: scale 2/15, the model sees camera columns 80..560: the fixed box is camera
    (80, 0, 140, 60) exactly, the rectangle's box within a model pixel (7.5 camera pixels) of
    RECT (its edges fall between model pixels); cx moves left by the 80 cut columns."""
    path = tmp_path / f"{mode}.onnx"
    export_bright_box_model(path, input_size=(MODEL_W, MODEL_H), resize=mode)
    ns = f"/node_{mode}"
    node = NodeProcess("-r", f"__ns:={ns}", "-p", f"model_path:={path}")
    probe = Probe(ns)
    try:
        out = probe.outputs_for(scene("bgr8"), topics=("detections", "segmentation", "depth", "depth/camera_info"))
        first, second = out["detections"].detections
        fixed, tolerance = ((0.0, 0.0, 80.0, 20.0), 1e-6) if mode == "letterbox" else ((80.0, 0.0, 140.0, 60.0), 7.5)
        for det, (x1, y1, x2, y2), tol in ((first, RECT, tolerance), (second, fixed, 1e-6)):
            box = det.bbox
            got = (box.center.position.x - box.size_x / 2, box.center.position.y - box.size_y / 2,
                   box.center.position.x + box.size_x / 2, box.center.position.y + box.size_y / 2)
            np.testing.assert_allclose(got, (x1, y1, x2, y2), atol=tol)
        ids, depth = image_to_array(out["segmentation"]), image_to_array(out["depth"])
        k = np.asarray(out["depth/camera_info"].k).reshape(3, 3)
        if mode == "letterbox":
            assert (ids[:6] == 255).all() and (ids[42:] == 255).all() and (ids[6:42] != 255).all()
            assert (ids[15:33, 20:40] == 1).all() and np.isnan(depth[:6]).all() and np.isnan(depth[42:]).all()
            np.testing.assert_allclose(k, [[50.0, 0, 31.95], [0, 51.0, 179.5 * 0.1 + 6], [0, 0, 1]])
        else:
            assert (ids != 255).all()
            s = 2 / 15
            np.testing.assert_allclose(k, [[500 * s, 0, (319.5 - 80) * s], [0, 510 * s, 179.5 * s], [0, 0, 1]])
        assert node.alive() and "Traceback" not in node.log()
    finally:
        probe.close()
        node.stop()
