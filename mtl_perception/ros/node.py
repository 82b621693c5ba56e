"""`perception_node`: every task of one exported model, in real time, on a camera topic.

A managed (lifecycle) node in the ros2/demos pattern: the model and publishers are created in
`on_configure`, the subscriptions, worker and diagnostics in `on_activate`, and released in
reverse. With `autostart` (default true) it configures and activates itself, so a plain
`ros2 run mtl_perception perception_node --ros-args -p model_path:=model.onnx` works without a
lifecycle manager.

Input: sensor_msgs/Image on `image`, or with `input_transport: compressed` CompressedImage on the
image topic's resolved name + `/compressed` (image_transport's naming: remapping `image` moves
both). The subscription's reliability follows `image_qos` (`ros.qos`: `auto` matches the
publishers on the topic and is re-decided when they change), KEEP_LAST 1; an incompatible-QoS
event is logged and counted. Bad frames are logged once per kind of problem per period
(`ros.throttle`), and "no frames" counts from when a publisher appeared (`ros.watchdog`).

Data flow, never a backlog: the `image` callback only checks the message cheaply and stores it in
a single newest-wins slot (`LatestFrame`); a frame arriving while one is pending replaces it and
is counted as dropped. A worker thread takes the newest frame, resizes it to the model input,
runs the model and publishes only the outputs somebody subscribes to, each with the input
header. Latency therefore stays bounded by about one inference whatever the camera rate. While
the worker has a frame, the subscription is not taken from at all (`ros.frame_gate`): the newest
frame waits in the middleware unread, and the frames it replaced there are counted as dropped
from the publishers' sequence numbers.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import fields, replace
from typing import Any, Dict, List, Optional, Tuple

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
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from mtl_perception.inference.latest_frame import FrameCounts, LatestFrame, SequenceGaps
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import ModelError, PerceptionModel
from mtl_perception.inference.preprocess import model_input
from mtl_perception.kinds import registry
from mtl_perception.kinds.base import (
    DetectionsOut,
    ImageOut,
    LabelsOut,
    Payload,
    PointsOut,
    ScaledCameraInfo,
)
from mtl_perception.messages.compressed import check_compressed, compressed_to_array
from mtl_perception.messages.detections_cdr import detection_array_cdr
from mtl_perception.messages.image import (
    ImageConversionError,
    array_to_image,
    color_encoding_info,
    image_to_array,
)
from mtl_perception.messages.outputs import detection_array, label_info, mapped_camera_info, mapped_intrinsics
from mtl_perception.messages.pointcloud import depth_points, pointcloud2
from mtl_perception.messages.stamps import stamp_ns
from mtl_perception.ros.frame_gate import FrameGate, publication_sequence, with_message_info
from mtl_perception.ros.message_types import message_class, publisher_qos
from mtl_perception.ros.parameters import (
    BY_NAME,
    PARAMETERS,
    Param,
    Settings,
    runtime_options,
    validate,
)
from mtl_perception.ros.qos import ImageQoS, decide_image_qos, incompatible_qos_callbacks, publishers_signature
from mtl_perception.ros.serialized_outputs import detections_bytes_supported
from mtl_perception.ros.throttle import ProblemThrottle
from mtl_perception.ros.watchdog import InputWatch

NODE_NAME = "perception_node"
WARN_PERIOD_S = 5.0  # throttle for repeated warnings of the same kind
PUBLISHER_POLL_S = 1.0  # how often the image topic's publishers are read (image_qos auto, no-frames warning)
NO_FRAME_YET = "no frame yet"  # diagnostics input_format before the first processed frame


def _describe(param: Param) -> ParameterDescriptor:
    """The ROS descriptor of one entry of the parameter table (description and range)."""
    descriptor = ParameterDescriptor(description=param.description)
    if param.float_range is not None:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(param.float_range[0]), to_value=float(param.float_range[1]), step=0.0)]
    if param.int_range is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(param.int_range[0]),
                                                 to_value=int(param.int_range[1]), step=1)]
    return descriptor


#: Where a frame's time goes in the node (diagnostics `<stage>_p50_ms`, beside `inference` and
#: `processing`): waiting in the slot for the worker, message -> model input (view, resize,
#: colour), outputs -> message inputs (overlays, boxes to camera pixels ...), building and
#: publishing the messages.
FRAME_STAGES = ("wait", "preprocess", "render", "publish")


class _Stats:
    """Counters and recent timings shared by the worker and the diagnostics timer."""

    WINDOW_S = 10.0  # percentiles cover the frames of the last 10 s

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed = 0
        self.rejected = 0
        self.failed = 0
        self.incompatible_qos = 0
        self.unread = 0  # frames replaced in the subscription before the node took them (sequence gaps)
        self.gated = False  # whether the newest frame came with a usable sequence number, so the gate is used
        # (monotonic time, then ms: stamp -> outputs published (or NaN), model.run, frame taken ->
        # published, and the FRAME_STAGES)
        self.samples: deque = deque(maxlen=5000)
        self.watch = InputWatch(Settings.input_timeout)  # frame times under `lock`

    def recent(self, now: float) -> np.ndarray:
        """[N, 3 + len(FRAME_STAGES)] latency, inference, processing, stages (ms) of the last WINDOW_S."""
        while self.samples and self.samples[0][0] < now - self.WINDOW_S:
            self.samples.popleft()
        return np.array(self.samples, np.float64).reshape(-1, 4 + len(FRAME_STAGES))[:, 1:]


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
        self._gate = FrameGate()
        self._sequences = SequenceGaps()
        self._wake = self.create_guard_condition(lambda: None)  # the worker wakes the executor (gate opened)
        self._stats = _Stats()
        self._throttle = ProblemThrottle(WARN_PERIOD_S)
        self._worker: Optional[threading.Thread] = None
        self._pubs: Dict[str, Any] = {}
        self._image_sub = None
        self._info_sub = None
        self._diag_timer = None
        self._poll_timer = None
        self._camera_info: Optional[CameraInfo] = None
        self._last_diag: Optional[Tuple[float, int, int]] = None
        self._color_order = "rgb"
        self._compressed = False
        self._image_topic = ""
        self._image_qos: Optional[ImageQoS] = None
        self._camera_publishers: Tuple[Any, ...] = ()
        self._pending_incompatible: Optional[str] = None
        self._detections_as_bytes = False
        self._input_format = NO_FRAME_YET  # what the camera sends, as the last processed frame had it

    # ------------------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        for param in PARAMETERS:
            self.declare_parameter(param.name, param.default, _describe(param))

    def _read_settings(self) -> Settings:
        return Settings(**{f.name: type(f.default)(self.get_parameter(f.name).value) for f in fields(Settings)})

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        updates: Dict[str, Any] = {}
        for param in params:
            name, value = param.name, param.value
            if name in BY_NAME and not BY_NAME[name].runtime and self._configured:
                return SetParametersResult(
                    successful=False, reason=f"{name} can only change while the node is unconfigured "
                    "(deactivate and clean it up first)")
            reason = validate(name, value)
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
        options = runtime_options({p.name: self.get_parameter(p.name).value for p in PARAMETERS})
        try:
            self._model = load_model(os.path.expanduser(path), options)
        except ModelError as exc:
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        meta = self._model.metadata
        self._color_order = meta.input.color_order
        self._create_publishers()
        self._detections_as_bytes = detections_bytes_supported()
        if not self._detections_as_bytes:
            self.get_logger().info("vision_msgs here is not the 4.x layout: detections are built as messages")
        self._configured = True
        w, h = self._model.input_size
        tasks = ", ".join(f"{name} ({task.kind})" for name, task in meta.tasks.items())
        self.get_logger().info(
            f"model '{meta.name}' {w}x{h} {meta.input.color_order} on {self._model.providers[0]}: {tasks}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        # Best effort matches both reliable and best-effort camera_info publishers.
        info_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._slot = LatestFrame()
        self._gate = FrameGate()
        self._sequences = SequenceGaps()
        self._stats = _Stats()
        self._throttle = ProblemThrottle(WARN_PERIOD_S)  # problem counts since activation, like the stats
        self._last_diag = None
        self._input_format = NO_FRAME_YET
        self._compressed = self.get_parameter("input_transport").value == "compressed"
        # image_transport's naming: the compressed topic is the (remapped) image topic + /compressed.
        self._image_topic = self.resolve_topic_name("image") + ("/compressed" if self._compressed else "")
        self._resubscribe_if_needed()
        self._poll_timer = self.create_timer(PUBLISHER_POLL_S, self._poll_publishers)
        if any(registry.kind(t.kind).needs_camera_info for t in self._model.metadata.tasks.values()):
            self._info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, info_qos)
        self._active = True
        self._worker = threading.Thread(target=self._work, name="perception_worker", daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(float(self.get_parameter("diagnostics_period").value),
                                             self._publish_diagnostics)
        self._publish_label_info(self._settings.score_threshold)
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
        for timer in (self._diag_timer, self._poll_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._diag_timer = self._poll_timer = None
        self._image_qos, self._camera_publishers = None, ()
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
        """One lifecycle publisher per output topic of the model's task kinds, and /diagnostics."""
        for topic in registry.topics_for(self._model.metadata.tasks, live=True):
            self._pubs[topic.name] = self.create_lifecycle_publisher(
                message_class(topic.msgtype), topic.name, publisher_qos(topic.qos))
        self._pubs["/diagnostics"] = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics",
                                                                     publisher_qos("small"))

    # ------------------------------------------------------------------------ image subscription
    def _poll_publishers(self) -> None:
        """Timer: re-decides the image QoS when the publishers change and tells the no-frames
        watch how many there are (it counts silence from when one appeared)."""
        resubscribed = self._resubscribe_if_needed()
        pending, self._pending_incompatible = self._pending_incompatible, None
        if pending is not None and not resubscribed:
            self._report_incompatible_qos(pending)  # auto could not resolve it: a real mismatch
        with self._stats.lock:
            self._stats.watch.poll(len(self._camera_publishers), time.monotonic())

    def _resubscribe_if_needed(self) -> bool:
        """(Re)creates the image subscription when there is none or the QoS decision changed;
        True when it did."""
        infos = self.get_publishers_info_by_topic(self._image_topic)
        signature = publishers_signature(infos)
        if self._image_sub is not None and signature == self._camera_publishers:
            return False
        self._camera_publishers = signature
        choice = decide_image_qos(str(self.get_parameter("image_qos").value), infos)
        if self._image_sub is not None and choice.reliability == self._image_qos.reliability:
            self._image_qos = choice  # same profile, new publisher counts in the description
            return False
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
        self._image_qos = choice
        msg_type, callback = (CompressedImage, self._on_compressed) if self._compressed else (Image, self._on_image)
        requested = "best effort" if choice.best_effort else "reliable"
        self._image_sub = self.create_subscription(
            msg_type, self._image_topic, with_message_info(callback), choice.profile(), callback_group=self._gate,
            event_callbacks=incompatible_qos_callbacks(self._image_topic, requested, self._on_incompatible_qos))
        self.get_logger().info(f"subscribed to {self._image_topic} ({msg_type.__name__}): {choice.description}, "
                               "KEEP_LAST 1")
        return True

    def _on_incompatible_qos(self, text: str) -> None:
        """Under `auto` a best-effort camera appearing meets the reliable subscription first: the
        next poll re-decides, and only an event that survives it is reported."""
        if self.get_parameter("image_qos").value == "auto":
            self._pending_incompatible = text
        else:
            self._report_incompatible_qos(text)

    def _report_incompatible_qos(self, text: str) -> None:
        with self._stats.lock:
            self._stats.incompatible_qos += 1
        line = self._throttle.report("qos", text)
        if line is not None:
            self.get_logger().warning(line)

    # ------------------------------------------------------------------------------- callbacks
    def _on_image(self, msg: Image, info: Optional[dict]) -> None:
        self._accept(msg, image_problem(msg), info)

    def _on_compressed(self, msg: CompressedImage, info: Optional[dict]) -> None:
        try:
            check_compressed(msg)  # decoding happens in the worker, for the newest frame only
        except ImageConversionError as exc:
            self._accept(msg, ("decode", str(exc)), info)
            return
        self._accept(msg, None, info)

    def _accept(self, msg: Any, problem: Optional[Tuple[str, str]], info: Optional[dict]) -> None:
        """Stores a usable frame in the slot and, where frames are numbered, closes the gate until
        the worker is free; counts and reports (throttled per kind) a bad one."""
        publishers = self._camera_publishers  # (GID hex, best effort) of each, from the last poll
        sequence = publication_sequence(info, sole_publisher=publishers[0][0] if len(publishers) == 1 else None)
        unread = 0 if sequence is None else self._sequences.missed(*sequence)
        with self._stats.lock:
            self._stats.unread += unread
            self._stats.gated = sequence is not None  # how the newest frame came in
            if problem is None:
                self._stats.watch.frame(time.monotonic())
        if problem is not None:
            self._reject(*problem)
            return
        if sequence is not None:
            self._gate.close()  # before the put: the worker reopens it only after taking this frame
        self._slot.put((msg, time.perf_counter()))

    def _reject(self, kind: str, text: str) -> None:
        with self._stats.lock:
            self._stats.rejected += 1
        line = self._throttle.report(kind, text)
        if line is not None:
            self.get_logger().warning(f"frame skipped ({kind}): {line}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _work(self) -> None:
        slot = self._slot
        while True:
            if not slot.pending and self._gate.reopen():
                self._wake.trigger()  # the executor waits on the image subscription again
            item = slot.take(timeout=0.5)
            if item is None:
                if slot.closed:
                    return
                continue
            try:
                self._process(*item)
            except ImageConversionError as exc:  # compressed data that does not decode
                self._reject("decode", str(exc))
            except Exception as exc:  # keep serving: one bad frame must not stop the node
                if not self.context.ok():
                    return  # shutting down (Ctrl-C): publishers are gone, nothing to report
                with self._stats.lock:
                    self._stats.failed += 1
                line = self._throttle.report("failed", f"{type(exc).__name__}: {exc}")
                if line is not None:
                    self.get_logger().error(f"frame failed: {line}")

    # -------------------------------------------------------------------------------- the work
    def _process(self, msg: Image, received: float) -> None:
        """One frame: model input, model, message inputs, messages; each stage timed (`FRAME_STAGES`)."""
        model, settings = self._model, self._settings
        if model is None:
            return
        start = time.perf_counter()
        if self._compressed:
            pixels, encoding = compressed_to_array(msg)
            (height, width), source = pixels.shape[:2], f" (from {msg.format or 'compressed data'})"
        else:  # a view of msg.data, row padding skipped
            pixels, encoding, source = image_to_array(msg), msg.encoding, ""
            height, width = msg.height, msg.width
        self._input_format = f"{encoding} {width}x{height}{source}"
        frame = model_input(pixels, encoding, model.input_size, self._color_order, model.metadata.input.resize)
        prepared = time.perf_counter()
        outputs = model.run(frame.image)
        inferred = time.perf_counter()
        payloads = registry.render(model.metadata.tasks, outputs, frame, settings.render(self._color_order),
                                   self._subscribed)
        rendered = time.perf_counter()
        self._publish(payloads, msg.header)
        done = time.perf_counter()
        self._record(msg.header, (inferred - prepared) * 1e3, (done - start) * 1e3,
                     ((start - received) * 1e3, (prepared - start) * 1e3, (rendered - inferred) * 1e3,
                      (done - rendered) * 1e3))

    def _subscribed(self, topic: str) -> bool:
        return self._pubs[topic].get_subscription_count() > 0

    def _publish(self, payloads: Dict[str, Payload], header: Any) -> None:
        for topic, payload in payloads.items():
            msg = self._message(payload, header)
            if msg is not None:
                self._pubs[topic].publish(msg)

    def _message(self, payload: Payload, header: Any) -> Any:
        """The rclpy message a kind's builder input stands for (None: cannot be built yet)."""
        if isinstance(payload, ImageOut):
            return array_to_image(payload.array, payload.encoding, header)
        if isinstance(payload, DetectionsOut):
            if self._detections_as_bytes:  # the same message, serialized without building it
                return detection_array_cdr(header, payload.detections, payload.class_names)
            return detection_array(header, payload.detections, payload.class_names)
        if isinstance(payload, ScaledCameraInfo):
            info = self._camera_info
            return None if info is None else mapped_camera_info(info, header, payload.mapping)
        if isinstance(payload, PointsOut):
            info = self._camera_info
            if info is None:
                return None
            k = mapped_intrinsics(info, payload.mapping)
            return pointcloud2(header, depth_points(payload.depth, k), rgb=payload.rgb)
        if isinstance(payload, LabelsOut):
            return label_info(header, payload.class_names, payload.threshold)
        raise TypeError(f"unknown output payload {type(payload).__name__}")

    def _publish_label_info(self, threshold: float) -> None:
        if self._model is None:
            return
        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        settings = replace(self._settings, score_threshold=threshold).render(self._color_order)
        self._publish(registry.latched(self._model.metadata.tasks, settings), header)

    def _record(self, header: Any, inference_ms: float, processing_ms: float, stages_ms: Tuple[float, ...]) -> None:
        now_ns = self.get_clock().now().nanoseconds
        sent_ns = stamp_ns(header.stamp)
        latency_ms = (now_ns - sent_ns) * 1e-6 if sent_ns > 0 else math.nan
        with self._stats.lock:
            self._stats.processed += 1
            self._stats.samples.append((time.monotonic(), latency_ms, inference_ms, processing_ms, *stages_ms))

    # ----------------------------------------------------------------------------- diagnostics
    def _input_status(self, state: Any, counts: Any) -> Tuple[int, str]:
        """Level and message of the diagnostics: waiting / silent input (warned, throttled), drops,
        and outputs that wait for the camera's CameraInfo (never guessed)."""
        level, message, topic = DiagnosticStatus.OK, "ok", self._image_topic
        if state.status == "waiting":
            message = f"waiting for a publisher on {topic}"
        elif state.status == "silent":
            level = DiagnosticStatus.WARN
            qos = self._image_qos.description if self._image_qos is not None else ""
            message = (f"no frame for {state.silent_for:.1f} s although {state.publishers} publisher(s) on {topic}: "
                       f"check QoS (image_qos {qos}), encoding and input_transport")
            line = self._throttle.report("no-input", message)
            if line is not None:
                self.get_logger().warning(line)
        elif counts.dropped and counts.received:
            message = f"ok; dropping {100.0 * counts.drop_rate:.0f} % of frames (camera faster than the model)"
        if self._info_sub is not None and self._camera_info is None:
            waiting = [t for t in ("depth/camera_info", "points", "super_resolution/camera_info") if t in self._pubs]
            message += (f"; no CameraInfo on {self._info_sub.topic_name} yet: {', '.join(waiting)} not published "
                        "(intrinsics are not guessed)")
        return level, message

    def _publish_diagnostics(self) -> None:
        if self._model is None or self._image_sub is None:
            return
        now = time.monotonic()
        stats = self._stats
        topic = self._image_topic
        publishers = self.count_publishers(topic)
        with stats.lock:
            processed, rejected, failed = stats.processed, stats.rejected, stats.failed
            unread, gated = stats.unread, stats.gated
            recent = stats.recent(now)
            stats.watch.timeout = self._settings.input_timeout
            state = stats.watch.poll(publishers, now)
            incompatible = stats.incompatible_qos
        latencies = recent[:, 0][np.isfinite(recent[:, 0])]
        # two percentile calls for all columns (one per column cost ~4x as much, once a second, on
        # the node's main thread)
        latency_pct = np.percentile(latencies, [50, 95]) if latencies.size else np.full(2, np.nan)
        medians = np.percentile(recent[:, 1:], 50, axis=0) if len(recent) else np.full(recent.shape[1] - 1, np.nan)
        inference, processing, stages = medians[0], medians[1], medians[2:]
        slot = self._slot.counts()  # frames unread in the subscription count as received and dropped
        counts = FrameCounts(slot.received + unread, slot.taken, slot.dropped + unread)
        received = counts.received + rejected
        if self._last_diag is None:
            in_rate = out_rate = 0.0
        else:
            t0, received0, processed0 = self._last_diag
            dt = max(now - t0, 1e-6)
            in_rate, out_rate = (received - received0) / dt, (processed - processed0) / dt
        self._last_diag = (now, received, processed)

        level, message = self._input_status(state, counts)

        def ms(value: float) -> str:
            return f"{value:.2f}" if np.isfinite(value) else "nan"

        values = {
            "input_rate_hz": f"{in_rate:.2f}",
            "output_rate_hz": f"{out_rate:.2f}",
            "latency_p50_ms": ms(latency_pct[0]),
            "latency_p95_ms": ms(latency_pct[1]),
            "inference_p50_ms": ms(inference),
            "processing_p50_ms": ms(processing),
            **{f"{stage}_p50_ms": ms(stages[i]) for i, stage in enumerate(FRAME_STAGES)},
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
            "input_transport": "compressed" if self._compressed else "raw",
            "input_format": self._input_format,
            "image_qos": self._image_qos.description if self._image_qos is not None else "",
            "incompatible_qos_events": str(incompatible),
            "frame_intake": "on demand" if gated else "every frame",
            "problems": ", ".join(f"{k}={v}" for k, v in sorted(self._throttle.counts().items())
                                  if k not in ("no-input", "qos")) or "none",  # bad frames by kind
        }
        if self._info_sub is not None:
            values["camera_info"] = ("received" if self._camera_info is not None
                                     else f"none received on {self._info_sub.topic_name}")
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


def image_problem(msg: Any) -> Optional[Tuple[str, str]]:
    """None if the message is an image the node can use (a colour, mono, Bayer or YUV encoding,
    non-zero size, enough data for height x step), else (kind, one line): kind 'encoding' or
    'size'."""
    try:
        color_encoding_info(msg.encoding)
    except ImageConversionError as exc:
        return "encoding", str(exc)
    try:
        image_to_array(msg)  # size, step and data length checks; a view, no copy
    except ImageConversionError as exc:
        return "size", str(exc)
    return None


def check_image(msg: Any) -> None:
    """Raises ImageConversionError naming the problem unless the node can use the image."""
    problem = image_problem(msg)
    if problem is not None:
        raise ImageConversionError(problem[1])


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
