"""`perception_node`: every task of one exported model, in real time, on a camera topic.

A managed (lifecycle) node in the ros2/demos pattern: the model and publishers are created in
`on_configure`, the subscriptions, worker and diagnostics in `on_activate`, and released in
reverse. With `autostart` (default true) it configures and activates itself, so a plain
`ros2 run mtl_perception perception_node --ros-args -p model_path:=model.onnx` works without a
lifecycle manager.

Data flow, never a backlog: the `image` callback only checks the message cheaply and stores it in
a single newest-wins slot (`LatestFrame`); a frame arriving while one is pending replaces it and
is counted as dropped. A worker thread takes the newest frame, resizes it to the model input,
runs the model and publishes only the outputs somebody subscribes to, each with the input
header. Latency therefore stays bounded by about one inference whatever the camera rate.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from mtl_perception.inference.latest_frame import LatestFrame
from mtl_perception.inference.model import ModelError, PerceptionModel, RuntimeOptions, normalise_provider_names
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.preprocess import resize_image
from mtl_perception.messages.image import ImageConversionError, array_to_image, encoding_info, image_to_array, to_color
from mtl_perception.inference.postprocess import overlay_segmentation, select_detections, valid_depth
from mtl_perception.messages.outputs import detection_array, label_info, sr_camera_info

NODE_NAME = "perception_node"
OUTPUT_RESOLUTIONS = ("model", "input")
IMAGE_QOS = ("reliable", "best_effort")
#: Changing these needs the model or the subscription to be made again: only while unconfigured.
RECONFIGURE_ONLY = ("model_path", "providers", "fp16", "trt_engine_cache_dir", "intra_op_threads",
                    "thread_spinning", "image_qos", "diagnostics_period")
#: Topic of each task kind's outputs (relative, so they can be remapped).
TOPICS = {
    "segmentation": ("segmentation", "segmentation/color", "label_info"),
    "depth": ("depth",),
    "detection": ("detections",),
    "super_resolution": ("super_resolution", "super_resolution/camera_info"),
}
WARN_PERIOD_S = 5.0  # throttle for repeated warnings of the same kind


@dataclass(frozen=True)
class Settings:
    """The run-time adjustable parameters, swapped atomically when one changes."""

    score_threshold: float = 0.3
    max_detections: int = 100
    output_resolution: str = "model"
    overlay_alpha: float = 0.5
    input_timeout: float = 5.0


def _describe(text: str, *, float_range: Optional[Tuple[float, float]] = None,
              int_range: Optional[Tuple[int, int]] = None) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=text)
    if float_range is not None:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(float_range[0]), to_value=float(float_range[1]), step=0.0)]
    if int_range is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(int_range[0]), to_value=int(int_range[1]), step=1)]
    return descriptor


class _Throttle:
    """At most one message per key per period (distinct problems are each reported)."""

    def __init__(self, period: float = WARN_PERIOD_S) -> None:
        self.period = period
        self._last: Dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self.period:
                return False
            if len(self._last) > 256:
                self._last.clear()
            self._last[key] = now
            return True


class _Stats:
    """Counters and recent timings shared by the worker and the diagnostics timer."""

    WINDOW_S = 10.0  # percentiles cover the frames of the last 10 s

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed = 0
        self.rejected = 0
        self.failed = 0
        # (monotonic time, stamp -> outputs published ms or NaN, model.run ms, frame taken -> published ms)
        self.samples: deque = deque(maxlen=5000)
        self.last_frame_monotonic: Optional[float] = None

    def recent(self, now: float) -> np.ndarray:
        """[N, 3] latency, inference, processing (ms) of the frames of the last WINDOW_S."""
        while self.samples and self.samples[0][0] < now - self.WINDOW_S:
            self.samples.popleft()
        return np.array([s[1:] for s in self.samples], np.float64).reshape(-1, 3)


class PerceptionNode(LifecycleNode):
    """Lifecycle node serving every task of one exported ONNX model (see module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self._settings = self._read_settings()
        self._configured = False
        self._active = False
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._model: Optional[PerceptionModel] = None
        self._slot: LatestFrame = LatestFrame()
        self._stats = _Stats()
        self._throttle = _Throttle()
        self._worker: Optional[threading.Thread] = None
        self._pubs: Dict[str, Any] = {}
        self._image_sub = None
        self._info_sub = None
        self._diag_timer = None
        self._camera_info: Optional[CameraInfo] = None
        self._last_diag: Optional[Tuple[float, int, int]] = None
        self._color_order = "rgb"
        self._activation_time = time.monotonic()

    # ------------------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        d = self.declare_parameter
        d("model_path", "", _describe(
            "exported ONNX model, or a model bundle's manifest / folder (the runtime reads everything else "
            "from their metadata)"))
        d("providers", ["tensorrt", "cuda", "cpu"], _describe(
            "execution providers in order of preference (tensorrt, cuda, cpu or onnxruntime names); "
            "unavailable ones are skipped, CPU is always the last resort"))
        d("fp16", False, _describe("TensorRT FP16 kernels"))
        d("trt_engine_cache_dir", "~/.cache/mtl_perception/tensorrt", _describe(
            "where TensorRT engines are cached so they are not rebuilt on every start ('' disables)"))
        d("intra_op_threads", 0, _describe("onnxruntime intra-op threads (0: its default)", int_range=(0, 256)))
        d("thread_spinning", False, _describe(
            "let onnxruntime's intra-op threads busy-wait between inferences (they then burn CPU that publishing "
            "and other processes need; off measured faster end to end on a 2-core CPU)"))
        d("image_qos", "reliable", _describe(
            "reliability of the image subscription, KEEP_LAST 1: 'reliable' (default, loses no large frames "
            "across processes) or 'best_effort' (matches sensor-data publishers)"))
        d("score_threshold", Settings.score_threshold, _describe(
            "minimum detection score published (run-time adjustable)", float_range=(0.0, 1.0)))
        d("max_detections", Settings.max_detections, _describe(
            "most detections published per frame (run-time adjustable)", int_range=(1, 10000)))
        d("output_resolution", Settings.output_resolution, _describe(
            "size of segmentation and depth outputs: 'model' (network size) or 'input' (camera image size)"))
        d("overlay_alpha", Settings.overlay_alpha, _describe(
            "weight of the class colours in segmentation/color", float_range=(0.0, 1.0)))
        d("input_timeout", Settings.input_timeout, _describe(
            "seconds without a frame, while a publisher is matched, before diagnostics warn",
            float_range=(0.1, 3600.0)))
        d("diagnostics_period", 1.0, _describe("seconds between /diagnostics messages", float_range=(0.05, 60.0)))
        d("autostart", True, _describe("configure and activate at start (no lifecycle manager needed)"))

    def _read_settings(self) -> Settings:
        p = self.get_parameter
        return Settings(
            score_threshold=float(p("score_threshold").value),
            max_detections=int(p("max_detections").value),
            output_resolution=str(p("output_resolution").value),
            overlay_alpha=float(p("overlay_alpha").value),
            input_timeout=float(p("input_timeout").value),
        )

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        updates: Dict[str, Any] = {}
        for param in params:
            name, value = param.name, param.value
            if name in RECONFIGURE_ONLY and self._configured:
                return SetParametersResult(
                    successful=False, reason=f"{name} can only change while the node is unconfigured "
                    "(deactivate and clean it up first)")
            reason = _validate(name, value)
            if reason:
                return SetParametersResult(successful=False, reason=f"{name}: {reason}")
            if name in Settings.__dataclass_fields__:
                updates[name] = value
        if updates:
            old = self._settings
            self._settings = replace(old, **updates)
            if "score_threshold" in updates and self._active and updates["score_threshold"] != old.score_threshold:
                # The callback runs before the value is stored: publish with the new one.
                self._publish_label_info(self._settings.score_threshold)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        path = str(self.get_parameter("model_path").value)
        if not path:
            self.get_logger().error("model_path is not set (use --ros-args -p model_path:=/path/to/model.onnx)")
            return TransitionCallbackReturn.FAILURE
        cache = str(self.get_parameter("trt_engine_cache_dir").value)
        options = runtime_options(
            providers=[p for p in self.get_parameter("providers").value if p.strip()] or None,
            fp16=bool(self.get_parameter("fp16").value),
            trt_engine_cache_dir=os.path.expanduser(cache) if cache else None,
            intra_op_threads=int(self.get_parameter("intra_op_threads").value),
            thread_spinning=bool(self.get_parameter("thread_spinning").value),
        )
        try:
            self._model = load_model(os.path.expanduser(path), options)
        except ModelError as exc:
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        meta = self._model.metadata
        self._color_order = meta.input.color_order
        self._create_publishers()
        self._configured = True
        w, h = self._model.input_size
        tasks = ", ".join(f"{name} ({task.kind})" for name, task in meta.tasks.items())
        self.get_logger().info(
            f"model '{meta.name}' {w}x{h} {meta.input.color_order} on {self._model.providers[0]}: {tasks}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        reliability = (ReliabilityPolicy.BEST_EFFORT if self.get_parameter("image_qos").value == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        # Best effort matches both reliable and best-effort camera_info publishers.
        info_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._slot = LatestFrame()
        self._stats = _Stats()
        self._last_diag = None
        self._activation_time = time.monotonic()
        self._image_sub = self.create_subscription(Image, "image", self._on_image, image_qos)
        if "super_resolution/camera_info" in self._pubs:
            self._info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, info_qos)
        self._active = True
        self._worker = threading.Thread(target=self._work, name="perception_worker", daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(float(self.get_parameter("diagnostics_period").value),
                                             self._publish_diagnostics)
        self._publish_label_info(self._settings.score_threshold)
        self.get_logger().info(
            f"active: subscribed to {self._image_sub.topic_name} ({self.get_parameter('image_qos').value}, "
            "KEEP_LAST 1)")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def stop(self) -> None:
        """Stops the worker (for a clean exit from any state)."""
        self._stop_processing()

    def _stop_processing(self) -> None:
        self._active = False
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for sub in (self._image_sub, self._info_sub):
            if sub is not None:
                self.destroy_subscription(sub)
        self._image_sub = self._info_sub = None
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        self._slot.clear()

    def _release(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        self._model = None
        self._camera_info = None
        self._configured = False

    def _create_publishers(self) -> None:
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        small_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        kinds = {task.kind for task in self._model.metadata.tasks.values()}
        make = self.create_lifecycle_publisher
        if "segmentation" in kinds:
            self._pubs["segmentation"] = make(Image, "segmentation", image_qos)
            self._pubs["segmentation/color"] = make(Image, "segmentation/color", image_qos)
            self._pubs["label_info"] = make(LabelInfo, "label_info", latched)
        if "depth" in kinds:
            self._pubs["depth"] = make(Image, "depth", image_qos)
        if "detection" in kinds:
            self._pubs["detections"] = make(Detection2DArray, "detections", small_qos)
        if "super_resolution" in kinds:
            self._pubs["super_resolution"] = make(Image, "super_resolution", image_qos)
            self._pubs["super_resolution/camera_info"] = make(CameraInfo, "super_resolution/camera_info", small_qos)
        self._pubs["/diagnostics"] = make(DiagnosticArray, "/diagnostics", small_qos)

    # ------------------------------------------------------------------------------- callbacks
    def _on_image(self, msg: Image) -> None:
        try:
            check_image(msg)
        except ImageConversionError as exc:
            with self._stats.lock:
                self._stats.rejected += 1
            if self._throttle.ready(str(exc)):
                self.get_logger().warning(f"frame skipped: {exc}")
            return
        with self._stats.lock:
            self._stats.last_frame_monotonic = time.monotonic()
        self._slot.put(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _work(self) -> None:
        slot = self._slot
        while True:
            msg = slot.take(timeout=0.5)
            if msg is None:
                if slot.closed:
                    return
                continue
            try:
                self._process(msg)
            except ImageConversionError as exc:  # checked in the callback; belt and braces
                if self._throttle.ready(str(exc)):
                    self.get_logger().warning(f"frame skipped: {exc}")
            except Exception as exc:  # keep serving: one bad frame must not stop the node
                if not self.context.ok():
                    return  # shutting down (Ctrl-C): publishers are gone, nothing to report
                with self._stats.lock:
                    self._stats.failed += 1
                if self._throttle.ready(f"{type(exc).__name__}: {exc}"):
                    self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}")

    # -------------------------------------------------------------------------------- the work
    def _process(self, msg: Image) -> None:
        model, pubs, settings = self._model, self._pubs, self._settings
        if model is None:
            return
        start = time.perf_counter()
        raw = image_to_array(msg)  # a view of msg.data, row padding skipped
        height, width = raw.shape[:2]
        model_w, model_h = model.input_size
        small = resize_image(raw, (model_w, model_h))
        model_input = to_color(small, msg.encoding, self._color_order)
        before = time.perf_counter()
        outputs = model.run(model_input)
        inference_s = time.perf_counter() - before
        header = msg.header
        at_input = settings.output_resolution == "input"
        meta = model.metadata
        for task_name, spec in meta.tasks.items():
            out = outputs[task_name]
            if spec.kind == "segmentation":
                self._publish_segmentation(out["class_map"], spec, header, msg, small, at_input, settings)
            elif spec.kind == "depth":
                pub = pubs["depth"]
                if pub.get_subscription_count() > 0:
                    depth = valid_depth(out["depth"], spec.min_depth, spec.max_depth)
                    if at_input:
                        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
                    pub.publish(array_to_image(depth, "32FC1", header))
            elif spec.kind == "detection":
                pub = pubs["detections"]
                if pub.get_subscription_count() > 0:
                    dets = select_detections(
                        out["boxes"], out["scores"], out["classes"], scale_x=width / model_w,
                        scale_y=height / model_h, threshold=settings.score_threshold,
                        max_detections=settings.max_detections, width=width, height=height)
                    pub.publish(detection_array(header, dets, spec.class_names))
            elif spec.kind == "super_resolution":
                self._publish_super_resolution(out["image"], header, width, height)
        self._record(header, inference_s, time.perf_counter() - start)

    def _publish_segmentation(self, class_map: np.ndarray, spec: Any, header: Any, msg: Image,
                              small: np.ndarray, at_input: bool, settings: Settings) -> None:
        pub, color_pub = self._pubs["segmentation"], self._pubs["segmentation/color"]
        want_ids, want_color = pub.get_subscription_count() > 0, color_pub.get_subscription_count() > 0
        if not (want_ids or want_color):
            return
        if at_input:
            class_map = cv2.resize(class_map, (int(msg.width), int(msg.height)), interpolation=cv2.INTER_NEAREST)
        if want_ids:
            pub.publish(array_to_image(class_map, "mono8", header))
        if want_color:
            base = to_color(msg, order="bgr") if at_input else to_color(small, msg.encoding, "bgr")
            overlay = overlay_segmentation(base, class_map, settings.overlay_alpha, spec.ignore_index)
            color_pub.publish(array_to_image(overlay, "bgr8", header))

    def _publish_super_resolution(self, image: np.ndarray, header: Any, width: int, height: int) -> None:
        pub, info_pub = self._pubs["super_resolution"], self._pubs["super_resolution/camera_info"]
        sr_h, sr_w = image.shape[:2]
        if pub.get_subscription_count() > 0:
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if self._color_order == "rgb" else image
            pub.publish(array_to_image(bgr, "bgr8", header))
        info = self._camera_info
        if info is not None and info_pub.get_subscription_count() > 0:
            info_pub.publish(sr_camera_info(info, header, width, height, sr_w, sr_h))

    def _publish_label_info(self, threshold: float) -> None:
        pub = self._pubs.get("label_info")
        if pub is None or self._model is None:
            return
        names = next(t.class_names for t in self._model.metadata.tasks.values() if t.kind == "segmentation")
        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        pub.publish(label_info(header, names, threshold))

    def _record(self, header: Any, inference_s: float, processing_s: float) -> None:
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
        latency_ms = (now_ns - stamp_ns) * 1e-6 if stamp_ns > 0 else math.nan
        with self._stats.lock:
            self._stats.processed += 1
            self._stats.samples.append((time.monotonic(), latency_ms, inference_s * 1e3, processing_s * 1e3))

    # ----------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        if self._model is None or self._image_sub is None:
            return
        counts = self._slot.counts()
        now = time.monotonic()
        stats = self._stats
        with stats.lock:
            processed, rejected, failed = stats.processed, stats.rejected, stats.failed
            recent = stats.recent(now)
            last_frame = stats.last_frame_monotonic
        latencies = recent[:, 0][np.isfinite(recent[:, 0])]
        inference, processing = recent[:, 1], recent[:, 2]
        received = counts.received + rejected
        if self._last_diag is None:
            in_rate = out_rate = 0.0
        else:
            t0, received0, processed0 = self._last_diag
            dt = max(now - t0, 1e-6)
            in_rate, out_rate = (received - received0) / dt, (processed - processed0) / dt
        self._last_diag = (now, received, processed)

        level, message = DiagnosticStatus.OK, "ok"
        topic = self._image_sub.topic_name
        publishers = self.count_publishers(topic)
        silent_for = now - (last_frame if last_frame is not None else self._activation_time)
        if publishers == 0:
            message = f"waiting for a publisher on {topic}"
        elif silent_for >= self._settings.input_timeout:
            level = DiagnosticStatus.WARN
            message = (f"no frame for {silent_for:.1f} s although {publishers} publisher(s) on {topic}: check "
                       f"QoS (image_qos is {self.get_parameter('image_qos').value}) and encoding")
            if self._throttle.ready("no-input"):
                self.get_logger().warning(message)
        elif counts.dropped and counts.received:
            message = f"ok; dropping {100.0 * counts.drop_rate:.0f} % of frames (camera faster than the model)"

        def pct(values: np.ndarray, q: float) -> str:
            return f"{np.percentile(values, q):.2f}" if values.size else "nan"

        values = {
            "input_rate_hz": f"{in_rate:.2f}",
            "output_rate_hz": f"{out_rate:.2f}",
            "latency_p50_ms": pct(latencies, 50),
            "latency_p95_ms": pct(latencies, 95),
            "inference_p50_ms": pct(inference, 50),
            "processing_p50_ms": pct(processing, 50),
            "frames_received": str(received),
            "frames_processed": str(processed),
            "frames_dropped": str(counts.dropped),
            "frames_rejected": str(rejected),
            "frames_failed": str(failed),
            "drop_rate": f"{counts.drop_rate:.3f}",
            "provider": self._model.providers[0],
            "model": self._model.metadata.name,
            "model_path": str(self._model.path),
            "input_topic": topic,
            "input_publishers": str(publishers),
        }
        status = DiagnosticStatus()
        status.level = level
        status.name = self.get_fully_qualified_name().lstrip("/")
        status.message = message
        status.hardware_id = self._model.metadata.name
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._pubs["/diagnostics"].publish(array)


def runtime_options(providers: Optional[List[str]] = None, fp16: bool = False,
                    trt_engine_cache_dir: Optional[str] = None, intra_op_threads: int = 0,
                    thread_spinning: bool = False) -> RuntimeOptions:
    """The loader's RuntimeOptions for the node (and the benchmark, which must run the model the
    same way). Thread spinning is off by default: busy-waiting onnxruntime threads take the CPU
    the node needs to publish (measured: stamp-to-published 24 -> 17.5 ms at 10 Hz on 2 cores)."""
    return RuntimeOptions(providers=providers, fp16=fp16, trt_engine_cache_dir=trt_engine_cache_dir,
                          intra_op_threads=intra_op_threads, allow_spinning=thread_spinning)


def check_image(msg: Any) -> None:
    """Raises ImageConversionError unless the message is an image the node can use: a colour
    or mono encoding, non-zero size, enough data for height x step."""
    info = encoding_info(msg.encoding)
    if info.order is None:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r} (supported: mono8, rgb8, bgr8, rgba8, bgra8 and their "
            "16-bit forms)")
    image_to_array(msg)  # size, step and data length checks; a view, no copy


def _validate(name: str, value: Any) -> str:
    """Why a parameter value is invalid ('' when it is fine)."""
    if name == "score_threshold" and not (isinstance(value, float) and 0.0 <= value <= 1.0):
        return f"must be a number in [0, 1], got {value!r}"
    if name == "max_detections" and not (isinstance(value, int) and value >= 1):
        return f"must be a positive integer, got {value!r}"
    if name == "overlay_alpha" and not (isinstance(value, float) and 0.0 <= value <= 1.0):
        return f"must be a number in [0, 1], got {value!r}"
    if name in ("input_timeout", "diagnostics_period") and not (isinstance(value, float) and value > 0):
        return f"must be a positive number of seconds, got {value!r}"
    if name == "output_resolution" and value not in OUTPUT_RESOLUTIONS:
        return f"must be one of {', '.join(OUTPUT_RESOLUTIONS)}, got {value!r}"
    if name == "image_qos" and value not in IMAGE_QOS:
        return f"must be one of {', '.join(IMAGE_QOS)}, got {value!r}"
    if name == "providers":
        try:
            normalise_provider_names([p for p in value if p.strip()])
        except ModelError as exc:
            return str(exc)
    return ""


def main(args: Optional[List[str]] = None) -> int:
    """`perception_node` console script / `ros2 run mtl_perception perception_node`."""
    rclpy.init(args=args)
    node: Optional[PerceptionNode] = None
    code = 0
    try:
        node = PerceptionNode()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1  # on_configure logged the reason in one line
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("activation failed")
                return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
