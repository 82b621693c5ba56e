"""`mtl-perception demo`: the system working, end to end, in one command.

Starts `perception_node` and a synthetic `camera_source` as separate processes (in a private
namespace), subscribes to every output for a while, and reports what the node published: rate
and latency per topic, the node's own diagnostics (rates, latency, drops, provider), as text and
JSON, plus a PNG mosaic of one frame: input, segmentation overlay, depth colour map, detection
boxes, super-resolution.

    mtl-perception demo --model runs/quick/model.onnx --out runs/demo --seconds 15
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import ModelError, RuntimeOptions
from mtl_perception.kinds import registry
from mtl_perception.messages.image import image_to_array, to_color
from mtl_perception.messages.stamps import stamp_ns
from mtl_perception.ros.dds_profile import large_frame_env, user_profile
from mtl_perception.ros.message_types import message_class
from mtl_perception.ros.processes import (
    log_tail,
    start_node,
    start_ros_process,
    stop_process,
)
from mtl_perception.ros.spin import spin_in_background

PANEL = (320, 240)  # w, h of one mosaic tile


class DemoError(RuntimeError):
    """The demo cannot run; str() says why in one line."""


# ------------------------------------------------------------------------------ visualisation
def depth_colormap(depth: np.ndarray) -> np.ndarray:
    """BGR colour map of inverse depth (near = warm), NaN black; scaled per image."""
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape + (3,), np.uint8)
    if not valid.any():
        return out
    inv = np.zeros(depth.shape, np.float32)
    inv[valid] = 1.0 / depth[valid]
    lo, hi = np.percentile(inv[valid], [2, 98])
    scaled = np.clip((inv - lo) / max(hi - lo, 1e-6), 0, 1)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    out[valid] = colour[valid]
    return out


def draw_detections(image_bgr: np.ndarray, detections: Any) -> np.ndarray:
    """Boxes (input-image pixels) with class name and score."""
    out = image_bgr.copy()
    thickness = max(1, round(out.shape[1] / 320))
    for det in detections.detections:
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        w, h = det.bbox.size_x, det.bbox.size_y
        p1, p2 = (int(round(cx - w / 2)), int(round(cy - h / 2))), (int(round(cx + w / 2)), int(round(cy + h / 2)))
        hyp = det.results[0].hypothesis if det.results else None
        colour = (0, 255, 255)
        cv2.rectangle(out, p1, p2, colour, thickness)
        if hyp is not None:
            text = f"{hyp.class_id} {hyp.score:.2f}"
            scale = 0.35 * thickness
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            org = (p1[0], max(th + 2, p1[1] - 3))
            cv2.rectangle(out, (org[0], org[1] - th - 2), (org[0] + tw, org[1] + 2), (0, 0, 0), -1)
            cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def _tile(image: Optional[np.ndarray], title: str) -> np.ndarray:
    w, h = PANEL
    tile = np.zeros((h, w, 3), np.uint8)
    if image is not None:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        scale = min(w / image.shape[1], h / image.shape[0])
        size = (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
        resized = cv2.resize(image, size, interpolation=interp)
        y, x = (h - size[1]) // 2, (w - size[0]) // 2
        tile[y:y + size[1], x:x + size[0]] = resized
    else:
        cv2.putText(tile, "(not published)", (10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (160, 160, 160), 1,
                    cv2.LINE_AA)
    cv2.rectangle(tile, (0, 0), (w, 18), (0, 0, 0), -1)
    cv2.putText(tile, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _text_tile(lines: Sequence[str]) -> np.ndarray:
    w, h = PANEL
    tile = np.full((h, w, 3), 24, np.uint8)
    for i, line in enumerate(lines[:15]):
        cv2.putText(tile, line[:52], (6, 18 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (230, 230, 230), 1, cv2.LINE_AA)
    return tile


def mosaic(frame: Dict[str, Any], lines: Sequence[str]) -> np.ndarray:
    """2x3 tiles: input, segmentation overlay, depth | detections, super-resolution, numbers."""
    image = to_color(frame["image"], order="bgr") if "image" in frame else None
    seg = to_color(frame["segmentation/color"], order="bgr") if "segmentation/color" in frame else None
    depth = depth_colormap(image_to_array(frame["depth"])) if "depth" in frame else None
    boxes = (draw_detections(image, frame["detections"]) if image is not None and "detections" in frame else None)
    sr = to_color(frame["super_resolution"], order="bgr") if "super_resolution" in frame else None

    def size(msg_key: str) -> str:
        m = frame.get(msg_key)
        return f" {m.width}x{m.height}" if m is not None else ""

    n_det = len(frame["detections"].detections) if "detections" in frame else 0
    top = np.hstack([_tile(image, "input" + size("image")),
                     _tile(seg, "segmentation/color" + size("segmentation/color")),
                     _tile(depth, "depth (inverse, NaN black)" + size("depth"))])
    bottom = np.hstack([_tile(boxes, f"detections ({n_det})"), _tile(sr, "super_resolution" + size("super_resolution")),
                        _text_tile(lines)])
    return np.vstack([top, bottom])


# ------------------------------------------------------------------------------- the recorder
class _Recorder:
    """Subscribes to the camera and every output topic of every kind in this process; a spinning thread."""

    def __init__(self, namespace: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node("demo_recorder", namespace=namespace, context=self.context)
        self.lock = threading.Lock()
        self.recording = False
        self.arrivals: Dict[str, List[float]] = defaultdict(list)
        self.latencies: Dict[str, List[float]] = defaultdict(list)
        self.frames: "OrderedDict[int, Dict[str, Any]]" = OrderedDict()
        self.latched: Dict[str, Any] = {}  # newest message of each topic that is not per frame
        self.diagnostics: Optional[Dict[str, Any]] = None
        self.diag_name = f"{namespace.strip('/')}/perception_node"
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Image, "image", self._receiver("image"), qos)
        for topic in registry.topics():
            if topic.per_frame:
                self.node.create_subscription(message_class(topic.msgtype), topic.name, self._receiver(topic.name),
                                              qos)
            else:
                self.node.create_subscription(message_class(topic.msgtype), topic.name,
                                              self._latched_receiver(topic.name), latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos)
        self.executor, self.thread = spin_in_background(self.node, self.context)

    def _receiver(self, topic: str):
        def callback(msg: Any) -> None:
            now_ns = self.node.get_clock().now().nanoseconds
            key = stamp_ns(msg.header.stamp)
            with self.lock:
                frame = self.frames.setdefault(key, {})
                frame[topic] = msg
                while len(self.frames) > 30:
                    self.frames.popitem(last=False)
                if self.recording:
                    self.arrivals[topic].append(time.monotonic())
                    if topic != "image":
                        self.latencies[topic].append((now_ns - key) * 1e-6)
        return callback

    def _latched_receiver(self, topic: str):
        def callback(msg: Any) -> None:
            self.latched[topic] = msg
        return callback

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == self.diag_name:
                self.diagnostics = {"level": int.from_bytes(status.level, "little") if isinstance(status.level, bytes)
                                    else int(status.level), "message": status.message,
                                    **{kv.key: kv.value for kv in status.values}}

    def complete_frame(self, topics: Sequence[str]) -> Optional[Dict[str, Any]]:
        with self.lock:
            for key in reversed(self.frames):
                frame = self.frames[key]
                if all(t in frame for t in topics):
                    return dict(frame)
        return None

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(timeout=5.0)


def _dds_profile(out_dir: str, stock_dds: bool) -> str:
    """Unless `stock_dds` or the environment names its own profile, gives this process and its
    children `dds_profile`'s large shared-memory segment; says which profile is in use."""
    if user_profile():
        return f"user: {user_profile()}"
    if stock_dds:
        return "stock"
    out_dir_path = Path(out_dir)
    out_dir_path.mkdir(parents=True, exist_ok=True)
    os.environ.update(large_frame_env(directory=str(out_dir_path.resolve())))  # this process and its children
    return f"large shared memory: {user_profile()}" if user_profile() else "stock (not Fast DDS)"


def _model_metadata(model_path: str) -> Any:
    """The model's metadata; DemoError in one line on a bad model (the node would say the same)."""
    try:
        return load_model(model_path, RuntimeOptions(providers=["cpu"])).metadata
    except ModelError as exc:
        raise DemoError(str(exc)) from None


@dataclass
class _Processes:
    """The node and the camera started by the demo, with their log files."""

    node: subprocess.Popen
    camera: subprocess.Popen
    node_log: Any
    cam_log: Any

    def check(self) -> None:
        if self.node.poll() is not None:
            raise DemoError(f"perception_node exited ({self.node.returncode}):\n{log_tail(self.node_log.name)}")
        if self.camera.poll() is not None:
            raise DemoError(f"camera_source exited ({self.camera.returncode}):\n{log_tail(self.cam_log.name)}")

    def stop(self) -> List[str]:
        """Stops both; returns the node's ERROR / Traceback lines (the logs are removed)."""
        stop_process(self.camera, 10.0)
        stop_process(self.node, 10.0)
        self.node_log.close()
        self.cam_log.close()
        errors = [line for line in Path(self.node_log.name).read_text(errors="replace").splitlines()
                  if "ERROR" in line or "Traceback" in line]
        for f in (self.node_log.name, self.cam_log.name):
            os.unlink(f)
        return errors


def _start(namespace: str, model_path: str, providers: Optional[Sequence[str]], rate: float, width: int,
           height: int) -> _Processes:
    node_params: Dict[str, Any] = {"model_path": str(Path(model_path).resolve())}
    if providers:
        node_params["providers"] = list(providers)
    camera_params = {"source": "synthetic", "rate": f"{float(rate)}", "width": str(width), "height": str(height),
                     "synthetic_frames": "12"}
    node_log = tempfile.NamedTemporaryFile("w+", prefix="perception_node.", suffix=".log", delete=False)
    cam_log = tempfile.NamedTemporaryFile("w+", prefix="camera_source.", suffix=".log", delete=False)
    try:
        node = start_node(namespace, node_params, node_log)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    camera = start_ros_process("mtl_perception.ros.camera_source", namespace, camera_params, cam_log)
    return _Processes(node, camera, node_log, cam_log)


def _observe(recorder: _Recorder, procs: _Processes, expected: Sequence[str], seconds: float, warmup: float,
             startup_timeout: float, log: Any) -> Tuple[float, Optional[Dict[str, Any]], Dict[str, Any]]:
    """Waits for every expected topic, warms up, records `seconds`; (elapsed, last complete
    frame, the node's diagnostics)."""
    deadline = time.monotonic() + startup_timeout
    while recorder.complete_frame(expected) is None:
        procs.check()
        if time.monotonic() > deadline:
            raise DemoError(f"no outputs within {startup_timeout:g} s; node log:\n{log_tail(procs.node_log.name)}")
        time.sleep(0.1)
    log(f"demo: outputs flowing; warming up {warmup:g} s, then recording {seconds:g} s ...")
    time.sleep(warmup)
    with recorder.lock:
        recorder.recording = True
    start = time.monotonic()
    time.sleep(seconds)
    with recorder.lock:
        recorder.recording = False
    elapsed = time.monotonic() - start
    time.sleep(1.2)  # one more diagnostics message
    return elapsed, recorder.complete_frame(expected), recorder.diagnostics or {}


def _topic_stats(recorder: _Recorder, expected: Sequence[str], elapsed: float) -> Dict[str, Dict[str, Any]]:
    topics = {}
    for topic in expected:
        arrivals = recorder.arrivals.get(topic, [])
        lat = np.asarray(recorder.latencies.get(topic, []), np.float64)
        topics[topic] = {
            "messages": len(arrivals),
            "rate_hz": len(arrivals) / elapsed,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
        }
    return topics


def run_demo(model_path: str, out_dir: str = "runs/demo", seconds: float = 15.0, rate: float = 10.0,
             width: int = 640, height: int = 480, providers: Optional[Sequence[str]] = None,
             warmup: float = 3.0, startup_timeout: float = 90.0, stock_dds: bool = False,
             log: Any = print) -> Dict[str, Any]:
    """Runs the demo; returns the report (also written to out_dir/report.json, report.txt and
    mosaic.png). Raises DemoError with the node's last log lines if it does not come up. Unless
    `stock_dds` (or the environment names its own profile), every process of the demo uses
    `dds_profile`'s large shared-memory segment, as a deployment with large frames should."""
    dds = _dds_profile(out_dir, stock_dds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = _model_metadata(model_path)
    namespace = f"/mtl_demo_{os.getpid()}"
    expected = ["image"] + [t.name for t in registry.topics_for(meta.tasks, per_frame=True)]
    recorder = _Recorder(namespace)
    procs = None
    try:
        procs = _start(namespace, model_path, providers, rate, width, height)
        log(f"demo: model {meta.name} ({model_path}); camera {width}x{height} synthetic at {rate:g} Hz; "
            f"namespace {namespace}")
        elapsed, frame, diagnostics = _observe(recorder, procs, expected, seconds, warmup, startup_timeout, log)
    finally:
        node_errors = procs.stop() if procs is not None else []
        recorder.close()
    labels = recorder.latched.get("label_info")
    report = {
        "schema": "mtl_perception.tools.demo/1",
        "model": {"name": meta.name, "path": str(model_path), "input_size": [meta.input.width, meta.input.height],
                  "tasks": {n: t.kind for n, t in meta.tasks.items()}},
        "camera": {"source": "synthetic", "width": width, "height": height, "rate_hz": rate},
        "dds_profile": dds,
        "seconds": elapsed,
        "topics": _topic_stats(recorder, expected, elapsed),
        "node_diagnostics": diagnostics,
        "label_info_classes": [c.class_name for c in labels.class_map] if labels else None,
        "node_errors": node_errors,
        "mosaic": str(out / "mosaic.png"),
    }
    if frame is not None:
        cv2.imwrite(str(out / "mosaic.png"), mosaic(frame, _mosaic_lines(report)))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.txt").write_text(format_report(report) + "\n")
    return report


def _mosaic_lines(report: Dict[str, Any]) -> List[str]:
    d = report["node_diagnostics"]
    m = report["model"]
    lines = [f"model {m['name']} {m['input_size'][0]}x{m['input_size'][1]}",
             f"provider {d.get('provider', '?')}",
             f"camera {report['camera']['width']}x{report['camera']['height']} @ {report['camera']['rate_hz']:g} Hz",
             f"node in {d.get('input_rate_hz', '?')} Hz, out {d.get('output_rate_hz', '?')} Hz",
             f"node latency p50 {d.get('latency_p50_ms', '?')} ms",
             f"node latency p95 {d.get('latency_p95_ms', '?')} ms",
             f"inference p50 {d.get('inference_p50_ms', '?')} ms",
             f"dropped {d.get('frames_dropped', '?')} of {d.get('frames_received', '?')}",
             "received here (stamp -> arrival):"]
    for topic, t in report["topics"].items():
        if topic != "image" and t["latency_p50_ms"] is not None:
            lines.append(f" {topic[:24]} {t['rate_hz']:.1f} Hz {t['latency_p50_ms']:.0f} ms")
    return lines


def format_report(report: Dict[str, Any]) -> str:
    m, c, d = report["model"], report["camera"], report["node_diagnostics"]
    lines = [f"model: {m['name']} ({m['path']}), input {m['input_size'][0]}x{m['input_size'][1]}, "
             f"tasks {', '.join(f'{k} ({v})' for k, v in m['tasks'].items())}",
             f"camera: {c['source']} {c['width']}x{c['height']} bgr8 at {c['rate_hz']:g} Hz; recorded "
             f"{report['seconds']:.1f} s; DDS profile: {report['dds_profile'].split(':')[0]}",
             "",
             f"{'topic':<30} {'messages':>8} {'rate Hz':>8} {'p50 ms':>8} {'p95 ms':>8}"
             "   (latency: stamp -> received here)"]
    for topic, t in report["topics"].items():
        p50 = f"{t['latency_p50_ms']:.1f}" if t["latency_p50_ms"] is not None else "-"
        p95 = f"{t['latency_p95_ms']:.1f}" if t["latency_p95_ms"] is not None else "-"
        lines.append(f"{topic:<30} {t['messages']:>8} {t['rate_hz']:>8.2f} {p50:>8} {p95:>8}")
    if d:
        lines += ["",
                  f"node diagnostics ({'OK' if d.get('level') == 0 else 'level ' + str(d.get('level'))}: "
                  f"{d.get('message', '')}):",
                  f"  provider {d.get('provider')}, model {d.get('model')}",
                  f"  input {d.get('input_rate_hz')} Hz, output {d.get('output_rate_hz')} Hz",
                  f"  latency stamp -> published p50 {d.get('latency_p50_ms')} ms, p95 {d.get('latency_p95_ms')} ms; "
                  f"inference p50 {d.get('inference_p50_ms')} ms",
                  f"  frames received {d.get('frames_received')}, processed {d.get('frames_processed')}, dropped "
                  f"{d.get('frames_dropped')} (drop rate {d.get('drop_rate')}), rejected {d.get('frames_rejected')}"]
    else:
        lines += ["", "node diagnostics: none received"]
    if report["label_info_classes"]:
        lines.append(f"label_info: {', '.join(report['label_info_classes'])}")
    if report["node_errors"]:
        lines += ["node errors:"] + [f"  {e}" for e in report["node_errors"][:5]]
    lines.append(f"mosaic: {report['mosaic']}")
    return "\n".join(lines)


def main(args: Any) -> int:
    """`mtl-perception demo` (argparse namespace from cli.py)."""
    providers = [p for p in args.providers.split(",") if p] if args.providers else None
    try:
        report = run_demo(args.model, args.out, args.seconds, args.rate, args.width, args.height, providers,
                          stock_dds=args.stock_dds, log=lambda s: print(s, file=sys.stderr))
    except DemoError as exc:
        print(f"mtl-perception demo: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0
