"""Model-only latency against end-to-end latency through ROS, side by side in one run.

    mtl-perception benchmark --model runs/quick/model.onnx --width 640 --height 480 --frames 200 --json bench.json

1. model only, back to back: onnxruntime through the runtime loader (same providers as the
   node) on frames already resized to the model input; gives the model's throughput.
2. model only, paced; the ROS floor; end to end, alternating in blocks at the same camera rate
   (half the model's throughput, at most 30 Hz) so that all three see the same background load
   and the same idle gaps between frames:
   - model only, paced: as 1, one frame per camera period;
   - ROS floor: the same width x height frame to a do-nothing Python node that sends its
     header back (what any Python ROS node costs here);
   - end to end: `perception_node` in its own process; this process publishes the frames with
     CameraInfo, subscribes to every output and times publish -> last output of that frame
     received. Frames are serialized once and published as bytes with a fresh stamp (as a C++
     camera driver would), for the floor and end to end alike. The overhead ratio is
     p50(end to end) / p50(model only, paced).
3. overload: the camera `overload_factor` times faster than the model's throughput: latency
   percentiles stay bounded (newest frame wins, no queue) and drops are counted, both here
   (frames without outputs) and by the node (its /diagnostics); then the ROS floor at that rate
   (what the transport alone costs there).

Unless told otherwise (--stock-dds) or the environment names a Fast DDS profile, every process
uses `dds_profile`'s large shared-memory segment. Results are printed as a table and returned
(and written, with --json) as one JSON document. No assertion is made on the timings.
"""
from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from mtl_perception.inference.loader import load_model
from mtl_perception.inference.pixels import color_to_array
from mtl_perception.inference.preprocess import model_input
from mtl_perception.kinds import registry
from mtl_perception.messages.stamps import STAMP_OFFSET, cdr_stamp_format, raw_stamp, stamp_ns
from mtl_perception.ros.camera_source import camera_info_msg, image_msg, pinhole_k
from mtl_perception.ros.message_types import message_class
from mtl_perception.ros.node import FRAME_STAGES
from mtl_perception.ros.parameters import runtime_options
from mtl_perception.ros.processes import start_node, stop_process

TARGET_RATIO = 1.15
#: The node's own share of a frame (end to end - model only - ROS floor, p50) it should stay within.
NODE_SHARE_GOAL_MS = 2.0
#: Overload: end-to-end p95 within this multiple of (model-only p95 + ROS floor p50).
OVERLOAD_GOAL_FACTOR = 2.0
#: Where a frame's time goes inside the node (its diagnostics `<stage>_p50_ms`).
NODE_STAGES = ("inference", "processing", *FRAME_STAGES)

#: The ROS floor: a process that answers every image with its header on `echo`, nothing else.
ECHO_NODE = """
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
rclpy.init()
node = rclpy.create_node("benchmark_echo")
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
pub = node.create_publisher(Header, "echo", qos)
node.create_subscription(Image, "echo_image", lambda msg: pub.publish(msg.header), qos)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
finally:
    rclpy.try_shutdown()
"""


def _percentiles(values_ms: Sequence[float]) -> Dict[str, float]:
    arr = np.asarray(values_ms, np.float64)
    if arr.size == 0:
        return {"count": 0, "p50_ms": float("nan"), "p95_ms": float("nan"), "mean_ms": float("nan"),
                "max_ms": float("nan")}
    return {"count": int(arr.size), "p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "mean_ms": float(arr.mean()), "max_ms": float(arr.max())}


def camera_frames(width: int, height: int, count: int = 4) -> List[np.ndarray]:
    """BGR frames of the synthetic world at the camera size (falls back to noise)."""
    try:
        from mtl_perception.data.synthetic import Camera, render_frame

        camera = Camera.default(width, height)
        return [np.ascontiguousarray(render_frame(0, i, camera).image[..., ::-1]) for i in range(count)]
    except Exception:  # the benchmark must not depend on the renderer
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


class _ModelTimer:
    """The model in this process, on frames already resized to its input."""

    def __init__(self, model_path: str, frames_bgr: Sequence[np.ndarray], encoding: str, runtime: Mapping[str, Any]):
        self.runtime = dict(runtime)
        self.model = load_model(model_path, runtime_options(self.runtime))
        order = self.model.metadata.input.color_order
        resize = self.model.metadata.input.resize
        self.inputs = [model_input(color_to_array(f, encoding, "bgr"), encoding, self.model.input_size, order,
                                   resize).image for f in frames_bgr]
        self._index = 0

    def run(self, count: int, rate_hz: Optional[float] = None) -> List[float]:
        """Per-frame times (ms): back to back, or one frame every 1/rate_hz s like a camera."""
        times = []
        start = time.perf_counter()
        for i in range(count):
            frame = self.inputs[self._index % len(self.inputs)]
            self._index += 1
            before = time.perf_counter()
            self.model.run(frame)
            times.append((time.perf_counter() - before) * 1e3)
            if rate_hz:
                delay = start + (i + 1) / rate_hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        return times

    def describe(self) -> Dict[str, Any]:
        meta = self.model.metadata
        return {"name": meta.name, "path": str(self.model.path), "input_size": list(self.model.input_size),
                "resize": meta.input.resize, "tasks": {n: t.kind for n, t in meta.tasks.items()}}


class _SerializedFrames:
    """The camera's frames serialized once; each publish patches the header stamp in place and
    hands rclpy the bytes, as a C++ camera driver publishes: without Python's per-frame message
    serialization (1.7 ms for a 1920x1080 frame here), which would otherwise load the CPU the
    node shares, most of all at twice the model's rate."""

    def __init__(self, messages: Sequence[Any]):
        from rclpy.serialization import deserialize_message, serialize_message

        self.frames = [bytearray(serialize_message(m)) for m in messages]
        self._format = cdr_stamp_format(self.frames[0])
        probe = self.stamped(0, 12, 34)
        back = deserialize_message(probe, type(messages[0])).header.stamp
        if (back.sec, back.nanosec) != (12, 34):
            raise RuntimeError("unexpected CDR layout of sensor_msgs/Image: cannot patch the stamp")

    def stamped(self, index: int, sec: int, nanosec: int) -> bytes:
        frame = self.frames[index % len(self.frames)]
        struct.pack_into(self._format, frame, STAMP_OFFSET, sec, nanosec)
        return bytes(frame)


class _Harness:
    """The camera and every output's subscriber, in this process, spinning in a thread.

    The output subscriptions take serialized bytes and read only the header stamp (checked once
    per topic against the deserialized message), as a C++ consumer would: Python's
    deserialization of six outputs per frame would otherwise load the two cores the node shares
    just as it publishes."""

    def __init__(self, namespace: str, frames_bgr: Sequence[np.ndarray], encoding: str, outputs: Sequence[str]):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node("benchmark_camera", namespace=namespace, context=self.context)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, "image", qos)
        self.echo_pub = self.node.create_publisher(Image, "echo_image", qos)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", qos)
        h, w = frames_bgr[0].shape[:2]
        self.frames = _SerializedFrames([image_msg(f, "camera", encoding) for f in frames_bgr])
        self.info = camera_info_msg(pinhole_k(w, h, 70.0), w, h, "camera")
        msgtypes = {t.name: t.msgtype for t in registry.topics()}
        self.outputs = list(outputs)
        self.lock = threading.Lock()
        self.sent: Dict[int, float] = {}
        self.arrivals: Dict[int, Dict[str, float]] = {}
        self.diagnostics: Optional[Dict[str, str]] = None
        self.diag_name = f"{namespace.strip('/')}/perception_node".lstrip("/")
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.stamp_checks: Dict[str, bool] = {}  # topic: whether the stamp read from its bytes is right
        for topic in self.outputs:
            cls = message_class(msgtypes[topic])
            self.node.create_subscription(cls, topic, self._receiver(topic, cls), out_qos, raw=True)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, out_qos)
        self.echoes: Dict[int, float] = {}
        self.node.create_subscription(Header, "echo", self._on_echo, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self._index = 0

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down
            pass

    def _receiver(self, topic: str, message_type: Any):
        from rclpy.serialization import deserialize_message

        def callback(data: bytes) -> None:
            now = time.perf_counter()
            key = raw_stamp(data)
            if topic not in self.stamp_checks:
                self.stamp_checks[topic] = stamp_ns(deserialize_message(data, message_type).header.stamp) == key
            with self.lock:
                self.arrivals.setdefault(key, {})[topic] = now
        return callback

    def _on_echo(self, header: Any) -> None:
        now = time.perf_counter()
        with self.lock:
            self.echoes[stamp_ns(header.stamp)] = now

    def run_echo(self, rate_hz: float, count: int) -> List[float]:
        """The same frames through a do-nothing process: publish -> its header back (ms)."""
        keys = []
        start = time.perf_counter()
        for i in range(count):
            key, _, data = self._next_frame()
            with self.lock:
                self.sent[key] = time.perf_counter()
            self.echo_pub.publish(data)
            keys.append(key)
            delay = start + (i + 1) / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        time.sleep(0.3)
        with self.lock:
            return [(self.echoes[k] - self.sent[k]) * 1e3 for k in keys if k in self.echoes]

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == self.diag_name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _next_frame(self) -> Tuple[int, Any, bytes]:
        """(key, stamp, serialized frame) of the next frame, stamped now."""
        stamp = self.node.get_clock().now().to_msg()
        data = self.frames.stamped(self._index, stamp.sec, stamp.nanosec)
        self._index += 1
        return stamp_ns(stamp), stamp, data

    def publish(self) -> int:
        key, stamp, data = self._next_frame()
        self.info.header.stamp = stamp
        self.info_pub.publish(self.info)
        with self.lock:
            self.sent[key] = time.perf_counter()
        self.image_pub.publish(data)
        return key

    def complete(self, key: int) -> Optional[float]:
        """Latency (ms) of a frame once all outputs have arrived, else None."""
        with self.lock:
            got = self.arrivals.get(key, {})
            if len(got) < len(self.outputs):
                return None
            return (max(got.values()) - self.sent[key]) * 1e3

    def wait_ready(self, timeout: float) -> bool:
        """Until the node subscribes to the image and every output topic has its publisher."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.image_pub.get_subscription_count() > 0 and self.echo_pub.get_subscription_count() > 0 and all(
                    self.node.count_publishers(self.node.resolve_topic_name(t)) > 0 for t in self.outputs):
                return True
            time.sleep(0.1)
        return False

    def round_trip(self, timeout: float) -> Optional[float]:
        key = self.publish()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latency = self.complete(key)
            if latency is not None:
                return latency
            time.sleep(0.005)
        return None

    def run(self, rate_hz: float, count: int, settle_s: float = 2.0) -> Dict[str, Any]:
        """Publishes `count` frames at `rate_hz`; latencies (ms) of the frames whose outputs all
        arrived, and how many did not get outputs."""
        keys = []
        start = time.perf_counter()
        for i in range(count):
            keys.append(self.publish())
            delay = start + (i + 1) / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.perf_counter() - start
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline and self.complete(keys[-1]) is None:
            time.sleep(0.01)
        time.sleep(0.2)
        latencies = [lat for lat in (self.complete(k) for k in keys) if lat is not None]
        return {"latencies_ms": latencies, "published": count, "seconds": elapsed}

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(timeout=2.0)


def _diag_delta(before: Optional[Dict[str, str]], after: Optional[Dict[str, str]]) -> Dict[str, Any]:
    if not after:
        return {}
    def num(d: Optional[Dict[str, str]], key: str) -> float:
        try:
            return float((d or {}).get(key, 0))
        except ValueError:
            return float("nan")
    received = num(after, "frames_received") - num(before, "frames_received")
    dropped = num(after, "frames_dropped") - num(before, "frames_dropped")
    return {"node_frames_received": int(received), "node_frames_dropped": int(dropped),
            "node_drop_rate": dropped / received if received else 0.0,
            "node_frames_processed": int(num(after, "frames_processed") - num(before, "frames_processed")),
            **{f"node_{stage}_p50_ms": num(after, f"{stage}_p50_ms") for stage in NODE_STAGES},
            "node_latency_p50_ms": num(after, "latency_p50_ms"),
            "node_latency_p95_ms": num(after, "latency_p95_ms")}


def _summary(latencies: Sequence[float], published: int, seconds: float, rate_hz: float) -> Dict[str, Any]:
    result = _percentiles(latencies)
    result.update(rate_hz=rate_hz, achieved_rate_hz=published / seconds if seconds else 0.0,
                  frames_published=published, frames_complete=len(latencies),
                  frames_without_outputs=published - len(latencies))
    return result


def _back_to_back(timer: _ModelTimer, frames: int, log: Any) -> Dict[str, Any]:
    """Phase 1: the model alone, back to back (after 10 warm-up runs)."""
    log(f"benchmark: model only, back to back, {frames} frames ...")
    timer.run(10)
    back_to_back = _percentiles(timer.run(frames))
    back_to_back["max_rate_hz"] = 1e3 / back_to_back["p50_ms"]
    return back_to_back


def _warm_up(harness: _Harness, node: subprocess.Popen, node_log: Any, startup_timeout: float) -> None:
    """Until the node is matched and every output flows (RuntimeError with its log if it does not)."""
    if not harness.wait_ready(startup_timeout):
        raise RuntimeError("the node did not come up: " + _tail(node_log))
    for _ in range(10):
        if harness.round_trip(10.0) is None and node.poll() is not None:
            raise RuntimeError("the node exited: " + _tail(node_log))
    wrong = sorted(topic for topic, right in harness.stamp_checks.items() if not right)
    if wrong:
        raise RuntimeError(f"cannot read the header stamp from the serialized {', '.join(wrong)}")


def _alternate(timer: _ModelTimer, harness: _Harness, rate_hz: float, frames: int, block: int) -> Dict[str, Any]:
    """Phase 2: model only (paced), the ROS floor and end to end in alternating blocks at one rate."""
    paced: List[float] = []
    floor: List[float] = []
    e2e_lat: List[float] = []
    published, seconds = 0, 0.0
    for _ in range(max(1, frames // block)):
        paced += timer.run(block, rate_hz)
        floor += harness.run_echo(rate_hz, block)
        part = harness.run(rate_hz, block, settle_s=1.0)
        e2e_lat += part["latencies_ms"]
        published += part["published"]
        seconds += part["seconds"]
    time.sleep(1.2)
    return {"paced": paced, "floor": floor, "e2e": _summary(e2e_lat, published, seconds, rate_hz),
            "diagnostics": harness.diagnostics}


def _overload(harness: _Harness, rate_hz: float, frames: int) -> Dict[str, Any]:
    """Phase 3: the camera faster than the model; latency here and drops counted by the node.
    Then the ROS floor at the same rate: what the transport alone costs at that frame rate."""
    before = harness.diagnostics
    part = harness.run(rate_hz, frames)
    overload = _summary(part["latencies_ms"], part["published"], part["seconds"], rate_hz)
    time.sleep(2.5)  # the next diagnostics message covers the whole phase
    overload.update(_diag_delta(before, harness.diagnostics))
    echoes = harness.run_echo(rate_hz, frames)
    overload["ros_floor_at_this_rate"] = dict(_percentiles(echoes), frames_published=frames,
                                              frames_echoed=len(echoes))
    return overload


@dataclass
class _Run:
    """One benchmark run's settings."""

    model_path: str
    runtime: Mapping[str, Any]  # the node's runtime parameters that the model-only timer shares
    frames: int
    block: int
    startup_timeout: float
    overload_factor: float
    log: Any
    encoding: str  # the camera's


def _through_ros(run: _Run, images: Sequence[np.ndarray], timer: _ModelTimer, outputs: Sequence[str],
                 e2e_rate: float, overload_rate: float) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Phases 2 and 3 with the node and the echo process running; both stopped at the end."""
    namespace = f"/mtl_benchmark_{os.getpid()}"
    params: Dict[str, Any] = {"model_path": run.model_path, "diagnostics_period": 1.0, **run.runtime}
    frames, log = run.frames, run.log
    with tempfile.TemporaryFile("w+") as node_log:
        node = start_node(namespace, params, node_log)
        echo = subprocess.Popen([sys.executable, "-c", ECHO_NODE, "--ros-args", "-r", f"__ns:={namespace}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        harness = None
        try:
            harness = _Harness(namespace, images, run.encoding, outputs)
            _warm_up(harness, node, node_log, run.startup_timeout)
            log(f"benchmark: model only and end to end alternating, {e2e_rate:.1f} Hz, {frames} frames each ...")
            alternating = _alternate(timer, harness, e2e_rate, frames, run.block)
            log(f"benchmark: overload at {overload_rate:.1f} Hz ({run.overload_factor:g}x the model), "
                f"{frames} frames ...")
            overload = _overload(harness, overload_rate, frames)
        finally:
            if harness is not None:
                harness.close()
            for proc in (node, echo):
                stop_process(proc, 10.0)  # SIGINT: the node's clean shutdown
    return alternating, overload


def run_benchmark(model_path: str, width: int = 640, height: int = 480, frames: int = 200,
                  providers: Optional[Sequence[str]] = None, rate_hz: Optional[float] = None,
                  overload_factor: float = 2.0, block: int = 20, startup_timeout: float = 60.0,
                  stock_dds: bool = False, intra_op_threads: int = 0, encoding: str = "bgr8",
                  log: Any = print) -> Dict[str, Any]:
    """See the module docstring. The paced model-only and end-to-end measurements alternate in
    blocks of `block` frames at the same rate, so both see the same background load and the same
    idle gaps between frames (an idle CPU makes the next inference slower than a warm loop).
    Unless `stock_dds` (or the environment names its own profile), every process of the run uses
    `dds_profile`'s large shared-memory segment. `providers` and `intra_op_threads` (0:
    onnxruntime's default, every core) apply to the node and the model-only timer alike. The
    camera sends `encoding` (bgr8, or a Bayer / YUV format as a raw sensor would); the model-only
    timer's inputs come from the same frames in it."""
    dds = _select_dds_profile(stock_dds)
    images = camera_frames(width, height)
    runtime: Dict[str, Any] = {}
    if providers:
        runtime["providers"] = list(providers)
    if intra_op_threads:
        runtime["intra_op_threads"] = int(intra_op_threads)
    timer = _ModelTimer(model_path, images, encoding, runtime)
    back_to_back = _back_to_back(timer, frames, log)
    model_p50 = back_to_back["p50_ms"]
    e2e_rate = rate_hz or min(30.0, 0.5 * 1e3 / model_p50)
    overload_rate = overload_factor * 1e3 / model_p50
    outputs = [t.name for t in registry.topics_for(timer.model.metadata.tasks, per_frame=True)]
    run = _Run(model_path, runtime, frames, block, startup_timeout, overload_factor, log, encoding)
    alternating, overload = _through_ros(run, images, timer, outputs, e2e_rate, overload_rate)
    return _result(timer, width, height, encoding, outputs, dds, back_to_back, alternating, overload, overload_factor)


def _result(timer: _ModelTimer, width: int, height: int, encoding: str, outputs: Sequence[str], dds: str,
            back_to_back: Dict[str, Any], alternating: Dict[str, Any], overload: Dict[str, Any],
            overload_factor: float) -> Dict[str, Any]:
    """The JSON document of one run."""
    model_p50 = back_to_back["p50_ms"]
    e2e_rate = alternating["e2e"]["rate_hz"]
    model_paced = _percentiles(alternating["paced"])
    model_paced["rate_hz"] = e2e_rate
    e2e = alternating["e2e"]
    e2e.update({k: v for k, v in _diag_delta(None, alternating["diagnostics"]).items()
                if k in {f"node_{stage}_p50_ms" for stage in NODE_STAGES}})
    node_diagnostics = alternating["diagnostics"] or {}
    e2e["node_input_format"] = node_diagnostics.get("input_format")  # what the node got
    e2e["node_frame_intake"] = node_diagnostics.get("frame_intake")  # on demand / every frame
    ratio = e2e["p50_ms"] / model_paced["p50_ms"]
    floor = _percentiles(alternating["floor"])
    return {
        "schema": "mtl_perception.tools.benchmark/2",
        "model": timer.describe(),
        "provider": timer.model.providers[0],
        "intra_op_threads": timer.runtime.get("intra_op_threads", 0),  # 0: onnxruntime's default
        "input": {"width": width, "height": height, "encoding": encoding},
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "outputs": list(outputs),
        "dds_profile": dds,
        "model_only_back_to_back": back_to_back,
        "model_only": model_paced,
        "end_to_end": e2e,
        "ros_floor": dict(floor, rate_hz=e2e_rate,
                          what="the same image to a do-nothing Python node and its header back"),
        "goals": _goals(model_paced, floor, e2e, overload),
        "overhead_ms_p50": e2e["p50_ms"] - model_paced["p50_ms"],
        "overhead_ratio_p50": ratio,
        "overhead_ratio_p50_vs_back_to_back": e2e["p50_ms"] / model_p50,
        # model.run timed inside the node process itself (same frames, same time): no cross-process variance
        "overhead_ratio_p50_vs_node_inference": e2e["p50_ms"] / e2e["node_inference_p50_ms"]
        if e2e.get("node_inference_p50_ms") else None,
        "target_ratio_p50": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
        "overload": dict(overload, camera_to_model_rate=overload_factor,
                         p95_over_model_p50=overload["p95_ms"] / model_p50),
    }


def _goals(model: Dict[str, Any], floor: Dict[str, Any], e2e: Dict[str, Any], overload: Dict[str, Any]
           ) -> Dict[str, Any]:
    """The node's own share of a frame beyond the model and the transport, and overload latency,
    against their goals (all from this one run)."""
    share = e2e["p50_ms"] - model["p50_ms"] - floor["p50_ms"]
    limit = OVERLOAD_GOAL_FACTOR * (model["p95_ms"] + floor["p50_ms"])
    return {"node_share_ms_p50": share, "node_share_goal_ms": NODE_SHARE_GOAL_MS,
            "node_share_met": bool(share <= NODE_SHARE_GOAL_MS),
            "overload_p95_ms": overload["p95_ms"], "overload_p95_limit_ms": limit,
            "overload_p95_over_limit": overload["p95_ms"] / limit, "overload_met": bool(overload["p95_ms"] <= limit),
            "overload_frames_dropped_by_node": overload.get("node_frames_dropped"),
            "overload_frames_without_outputs": overload.get("frames_without_outputs")}


def _select_dds_profile(stock: bool) -> str:
    """Sets this process's environment (inherited by the node and echo processes)."""
    from mtl_perception.ros.dds_profile import large_frame_env, user_profile

    if user_profile():
        return f"user: {user_profile()}"
    if stock:
        return "stock"
    import atexit
    import shutil

    directory = tempfile.mkdtemp(prefix="mtl-dds-")
    atexit.register(shutil.rmtree, directory, True)
    env = large_frame_env(directory=directory)
    os.environ.update(env)
    # named, not its path: a temporary file of this run (results are kept and shared)
    return f"large shared memory ({Path(user_profile(env)).name})" if user_profile(env) else "stock (not Fast DDS)"


def _tail(log_file: Any, lines: int = 5) -> str:
    log_file.flush()
    log_file.seek(0)
    return " | ".join(log_file.read().strip().splitlines()[-lines:])


def format_table(result: Dict[str, Any]) -> str:
    b, m, e, o = result["model_only_back_to_back"], result["model_only"], result["end_to_end"], result["overload"]
    rows = [
        ("", "rate Hz", "frames", "p50 ms", "p95 ms", "notes"),
        ("model only, back to back", f"{b['max_rate_hz']:.1f}*", str(b["count"]), f"{b['p50_ms']:.2f}",
         f"{b['p95_ms']:.2f}", f"{result['provider']}; * = 1/p50"),
        ("model only, paced", f"{m['rate_hz']:.1f}", str(m["count"]), f"{m['p50_ms']:.2f}", f"{m['p95_ms']:.2f}",
         "same rate as end to end, alternating blocks"),
        ("ROS floor", f"{result['ros_floor']['rate_hz']:.1f}", str(result["ros_floor"]["count"]),
         f"{result['ros_floor']['p50_ms']:.2f}", f"{result['ros_floor']['p95_ms']:.2f}",
         "image to a do-nothing node, header back"),
        ("end to end", f"{e['rate_hz']:.1f}", f"{e['frames_complete']}/{e['frames_published']}", f"{e['p50_ms']:.2f}",
         f"{e['p95_ms']:.2f}", f"publish -> all {len(result['outputs'])} outputs received; node inference p50 "
         f"{e.get('node_inference_p50_ms', float('nan')):.2f} ms"),
        ("overload", f"{o['rate_hz']:.1f}", f"{o['frames_complete']}/{o['frames_published']}", f"{o['p50_ms']:.2f}",
         f"{o['p95_ms']:.2f}", f"node dropped {o.get('node_frames_dropped', '?')} of "
         f"{o.get('node_frames_received', '?')}"),
        ("ROS floor at overload rate", f"{o['rate_hz']:.1f}",
         f"{o['ros_floor_at_this_rate']['frames_echoed']}/{o['ros_floor_at_this_rate']['frames_published']}",
         f"{o['ros_floor_at_this_rate']['p50_ms']:.2f}", f"{o['ros_floor_at_this_rate']['p95_ms']:.2f}",
         "the transport alone at that rate"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    inp, host = result["input"], result["host"]
    lines.insert(0, f"model {result['model']['name']} {result['model']['input_size'][0]}x"
                    f"{result['model']['input_size'][1]}, camera {inp['width']}x{inp['height']} {inp['encoding']}, "
                    f"{host['cpus']} CPUs, load average {host['load_average_1min']:.2f}; onnxruntime intra-op threads "
                    f"{result['intra_op_threads'] or 'default'}; DDS profile: "
                    f"{result['dds_profile'].split(':')[0]}")
    lines.append(f"overhead p50: {result['overhead_ms_p50']:.2f} ms; ratio end to end / model only (paced): "
                 f"{result['overhead_ratio_p50']:.3f} (target <= {result['target_ratio_p50']}: "
                 f"{'met' if result['meets_target'] else 'missed'}); vs back to back: "
                 f"{result['overhead_ratio_p50_vs_back_to_back']:.3f}; vs the node's own model.run: "
                 f"{result['overhead_ratio_p50_vs_node_inference'] or float('nan'):.3f}")
    lines.append(f"overload: camera {o['camera_to_model_rate']:g}x the model rate, p95 = "
                 f"{o['p95_over_model_p50']:.2f}x model p50, frames without outputs {o['frames_without_outputs']}")
    stages = ", ".join(f"{stage} {e.get(f'node_{stage}_p50_ms', float('nan')):.2f}" for stage in NODE_STAGES)
    lines.append(f"node stages p50 ms (its diagnostics): {stages}")
    g = result["goals"]
    lines.append(f"goals: node's own share (end to end - model - floor, p50) {g['node_share_ms_p50']:.2f} ms "
                 f"(<= {g['node_share_goal_ms']:g}: {'met' if g['node_share_met'] else 'missed'}); overload p95 "
                 f"{g['overload_p95_ms']:.2f} ms <= 2 x (model p95 + floor p50) = {g['overload_p95_limit_ms']:.2f} ms: "
                 f"{'met' if g['overload_met'] else 'missed'}")
    return "\n".join(lines)


def main(args: Any) -> int:
    """`mtl-perception benchmark` (argparse namespace from cli.py)."""
    providers = [p for p in args.providers.split(",") if p] if args.providers else None
    result = run_benchmark(args.model, args.width, args.height, args.frames, providers, args.rate,
                           args.overload_factor, stock_dds=args.stock_dds, intra_op_threads=args.intra_op_threads,
                           encoding=args.encoding,
                           log=lambda line: print(line, file=sys.stderr))
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(format_table(result))
    return 0
