"""`mtl-perception replay`: a recorded drive through a live perception_node, then scored.

Like `ros2 bag play` + `ros2 bag record` + `eval-bag` in one command (rclpy, no rosbag2 needed):

1. optionally starts `perception_node` itself (`--start-node`, in its own process, outputs under
   `--node-namespace`, its `image` input remapped to the bag's camera topic, detections
   unthresholded so mAP is comparable with offline evaluation); otherwise uses the node the user
   started (remap its `image` to the camera topic, put it in the namespace given);
2. waits until the node subscribes to the camera topic and publishes its outputs;
3. plays the camera topic (and camera_info) at `--rate` times the recorded speed, keeping every
   header as recorded; raw sensor_msgs/Image messages are published byte for byte, CompressedImage
   messages are decoded and published as bgr8 Images on the topic without `/compressed` (the node
   takes raw images); with `--clock` it also publishes /clock (bag time) for use_sim_time;
4. records every output of the node (serialised, as received, stamped with the receive time) into
   a bag like `ros2 bag record`;
5. scores: end-to-end latency per frame and topic (receive time minus publish time of the camera
   message with the same header stamp, one clock, this process), frames dropped by the node,
   throughput, and the accuracy metrics of `eval-bag` on the frames that came back.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mtl_perception.bags.io import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    DETECTIONS,
    IMAGE,
    BagError,
    BagWriter,
    MessageError,
    camera_image,
    camera_info_topic_for,
    find_camera_topic,
    open_bag,
)
from mtl_perception.ros.processes import log_tail, start_ros_process, stop_process
from mtl_perception.ros.spin import spin_in_background
from mtl_perception.bags.evaluate import EvalOptions, _stats, default_out_dir, evaluate_bag, raw_stamp
from mtl_perception.messages.image import ImageConversionError, encoding_info, image_to_array

#: Output topics recorded (relative to the node namespace) and their types. segmentation/color is
#: left out: the node renders it only while someone subscribes, and recording it would add work.
RECORDED = {"segmentation": IMAGE, "depth": IMAGE, "detections": DETECTIONS, "super_resolution": IMAGE,
            "super_resolution/camera_info": CAMERA_INFO}
KIND_TOPICS = {"segmentation": "segmentation", "depth": "depth", "detection": "detections",
               "super_resolution": "super_resolution"}


class ReplayError(RuntimeError):
    """Replay cannot run; str() says why in one line (plus the node's log tail where useful)."""


@dataclass
class ReplayOptions:
    rate: float = 1.0  # playback speed relative to the recording
    clock: bool = False  # publish /clock; a node started here then uses sim time
    clock_hz: float = 50.0
    start_node: bool = False
    node_namespace: str = "/perception"
    node_params: Dict[str, str] = field(default_factory=dict)  # extra -p NAME:=VALUE for a started node
    providers: Optional[str] = None  # for a started node, e.g. "cpu"
    image_topic: Optional[str] = None
    limit: Optional[int] = None
    record: Optional[str] = None  # recorded bag (default: <out>/recorded)
    record_storage: Optional[str] = None  # default: the input bag's
    startup_timeout: float = 90.0
    settle_s: float = 1.0  # after discovery, before the first frame
    drain_s: float = 1.5  # quiet time after the last frame before recording stops
    max_drain_s: float = 15.0
    samples: int = 6
    progress: bool = False


# ------------------------------------------------------------------------------ ROS plumbing
class _Graph:
    """Player publishers and recorder subscriptions in this process (own rclpy context)."""

    def __init__(self, image_topic: str, info_topic: Optional[str], namespace: str, outputs: Sequence[str],
                 clock: bool) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from vision_msgs.msg import Detection2DArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node(f"mtl_replay_{os.getpid()}", context=self.context)
        pub_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        rec_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, image_topic, pub_qos)
        self.info_pub = self.node.create_publisher(CameraInfo, info_topic, pub_qos) if info_topic else None
        self.clock_pub = None
        self.clock_lock = threading.Lock()
        self.last_clock = -1
        if clock:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = self.node.create_publisher(Clock, "/clock", pub_qos)
        self.lock = threading.Lock()
        self.received: List[tuple] = []  # (relative topic, receive time ns, serialised bytes)
        self.last_receive = time.monotonic()
        self.diagnostics: Optional[Dict[str, str]] = None
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.diag_prefix = f"{ns.strip('/')}/" if ns else ""
        types = {IMAGE: Image, DETECTIONS: Detection2DArray, CAMERA_INFO: CameraInfo}
        self.subs = {}
        for rel in outputs:
            self.subs[rel] = self.node.create_subscription(types[RECORDED[rel]], f"{ns}/{rel}", self._receiver(rel),
                                                           rec_qos, raw=True)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, rec_qos)
        self.executor, self.thread = spin_in_background(self.node, self.context)

    def _receiver(self, rel: str):
        def callback(data: bytes) -> None:
            now = time.time_ns()
            with self.lock:
                self.received.append((rel, now, bytes(data)))
                self.last_receive = time.monotonic()
        return callback

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.endswith("perception_node") and status.name.startswith(self.diag_prefix):
                self.diagnostics = {"message": status.message, **{kv.key: kv.value for kv in status.values}}

    def publish_clock(self, bag_ns: int) -> None:
        """Publishes /clock = bag_ns, never going backwards (sim-time jumps back reset timers)."""
        if self.clock_pub is None:
            return
        from rosgraph_msgs.msg import Clock

        with self.clock_lock:
            if bag_ns <= self.last_clock:
                return
            self.last_clock = bag_ns
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(bag_ns // 1_000_000_000), int(bag_ns % 1_000_000_000)
        self.clock_pub.publish(msg)

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=2.0)
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()
            self.thread.join(timeout=5.0)


def _start_node(model: str, namespace: str, image_topic: str, info_topic: Optional[str], params: Dict[str, str],
                log: Any) -> subprocess.Popen:
    remaps = [("image", image_topic)] + ([("camera_info", info_topic)] if info_topic else [])
    return start_ros_process("mtl_perception.ros.node", namespace,
                             {"model_path": str(Path(model).resolve()), **params}, log, remaps)


def _check_camera(reader: Any, msgtype: str, raw: bytes) -> Optional[str]:
    """Why the node would reject this camera message (None if it would take it)."""
    try:
        msg = reader.deserialize(raw, msgtype)
        if msgtype == COMPRESSED_IMAGE:
            camera_image(msg, msgtype, "bgr")
        else:
            if encoding_info(msg.encoding).order is None:
                raise ImageConversionError(f"unsupported image encoding {msg.encoding!r} for a camera")
            image_to_array(msg)
    except (ImageConversionError, MessageError) as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------ replay
def replay_bag(bag: os.PathLike | str, out_dir: os.PathLike | str, model_path: str,
               options: ReplayOptions = ReplayOptions(), log: Any = None) -> Dict[str, Any]:
    """Plays `bag` into a perception_node, records its outputs, scores them; returns the report
    (also written to out_dir, with the recorded bag). Raises ReplayError / BagError / ModelError."""
    from mtl_perception.inference.model import RuntimeOptions
    from mtl_perception.inference.loader import load_model
    from mtl_perception.messages.image import array_to_image

    log = log or (lambda s: None)
    if not options.rate > 0:
        raise ValueError(f"rate must be positive, got {options.rate}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_path = Path(options.record) if options.record else out / "recorded"
    if record_path.exists():
        raise BagError(f"{record_path}: already exists; choose a new --record path or report folder")
    model = load_model(model_path, RuntimeOptions(providers=["cpu"]))
    meta = model.metadata
    del model
    ns = "/" + options.node_namespace.strip("/") if options.node_namespace.strip("/") else "/"
    outputs = [KIND_TOPICS[t.kind] for t in meta.tasks.values()]
    if "super_resolution" in outputs:
        outputs.append("super_resolution/camera_info")

    reader = open_bag(bag)
    try:
        camera = find_camera_topic(reader.topics, options.image_topic, path=reader.path)
        info_topic = camera_info_topic_for(camera.name)
        if reader.topics.get(info_topic) is None or reader.topics[info_topic].msgtype != CAMERA_INFO:
            info_topic = None
        publish_topic = camera.name[: -len("/compressed")] if (camera.msgtype == COMPRESSED_IMAGE and
                                                                 camera.name.endswith("/compressed")) else camera.name
        if camera.msgtype == COMPRESSED_IMAGE and publish_topic == camera.name:
            publish_topic = camera.name + "/decoded"
        total = camera.count if options.limit is None else min(options.limit, camera.count)
        storage = options.record_storage or reader.storage or "sqlite3"

        node_proc = None
        node_log = None
        graph = _Graph(publish_topic, info_topic, ns, outputs if options.start_node else list(RECORDED),
                       options.clock)
        published: Dict[int, int] = {}  # stamp -> publish time ns
        bad_input: Dict[int, str] = {}
        clock_stop = threading.Event()
        clock_thread = None
        try:
            if options.start_node:
                params = {"score_threshold": "0.0",
                          "max_detections": str(max(1, next((t.top_k for t in meta.tasks.values()
                                                             if t.kind == "detection"), 100)))}
                if options.providers:
                    params["providers"] = "[" + ",".join(p for p in options.providers.split(",") if p) + "]"
                if options.clock:
                    params["use_sim_time"] = "true"
                params.update(options.node_params)
                node_log = tempfile.NamedTemporaryFile("w+", prefix="perception_node.", suffix=".log", delete=False)
                log(f"replay: starting perception_node in {ns} (model {model_path})")
                node_proc = _start_node(model_path, ns, publish_topic, info_topic, params, node_log)
            # -- wait for the node
            deadline = time.monotonic() + options.startup_timeout
            if options.clock:  # a sim-time node needs a clock before it can do anything
                graph.publish_clock(reader.start_ns)
            while True:
                have_sub = graph.image_pub.get_subscription_count() > 0
                have_pubs = [rel for rel, sub in graph.subs.items() if sub.get_publisher_count() > 0]
                wanted = [rel for rel in outputs if rel in graph.subs]
                if have_sub and all(rel in have_pubs for rel in wanted):
                    break
                if node_proc is not None and node_proc.poll() is not None:
                    raise ReplayError(f"perception_node exited ({node_proc.returncode}):\n{log_tail(node_log.name)}")
                if time.monotonic() > deadline:
                    missing = [f"{ns.rstrip('/')}/{rel}" for rel in wanted if rel not in have_pubs]
                    why = [] if have_sub else [f"nobody subscribes to {publish_topic}"]
                    why += [f"no publisher on {', '.join(missing)}"] if missing else []
                    tail = f"\n{log_tail(node_log.name)}" if node_log is not None else ""
                    raise ReplayError(f"no perception node ready within {options.startup_timeout:g} s: "
                                      f"{'; '.join(why)} (start one with image remapped to {publish_topic} in "
                                      f"namespace {ns}, or use --start-node){tail}")
                if options.clock:
                    graph.publish_clock(reader.start_ns)
                time.sleep(0.1)
            time.sleep(options.settle_s)
            # -- play
            log(f"replay: playing {total} frames of {camera.name} at {options.rate:g}x into {publish_topic}")
            from sensor_msgs.msg import Image

            t0_bag: Optional[int] = None
            t0_wall = time.monotonic()
            bag_now = [reader.start_ns]
            if options.clock:
                def tick() -> None:
                    while not clock_stop.wait(1.0 / options.clock_hz):
                        graph.publish_clock(bag_now[0] + int((time.monotonic() - t0_wall) * 1e9 * options.rate))
                clock_thread = threading.Thread(target=tick, daemon=True)
            sent = 0
            first_pub: Optional[int] = None
            topics = [camera.name] + ([info_topic] if info_topic else [])
            for topic, msgtype, log_ns, raw in reader.messages(topics):
                if topic == camera.name and sent >= total:
                    break
                if t0_bag is None:
                    t0_bag = log_ns
                    bag_now[0] = log_ns
                    t0_wall = time.monotonic()
                    if clock_thread is not None:
                        graph.publish_clock(log_ns)
                        clock_thread.start()
                delay = t0_wall + (log_ns - t0_bag) / 1e9 / options.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                graph.publish_clock(log_ns)  # bag time reaches each message's time before it is sent
                if topic != camera.name:
                    graph.info_pub.publish(bytes(raw))
                    continue
                stamp = raw_stamp(raw)
                problem = _check_camera(reader, msgtype, raw)
                if msgtype == COMPRESSED_IMAGE and problem is None:
                    msg = reader.deserialize(raw, msgtype)
                    bgr = camera_image(msg, msgtype, "bgr")
                    header = _rclpy_header(msg.header)
                    payload: Any = array_to_image(bgr, "bgr8", header, msg_cls=Image)
                else:
                    payload = bytes(raw)
                if msgtype == COMPRESSED_IMAGE and problem is not None:
                    payload = None  # cannot be turned into an Image: not published
                now = time.time_ns()
                if payload is not None:
                    graph.image_pub.publish(payload)
                first_pub = first_pub if first_pub is not None else now
                sent += 1
                if stamp is not None:
                    published[stamp] = now
                    if problem is not None:
                        bad_input[stamp] = problem
            play_s = max(time.monotonic() - t0_wall, 1e-9)
            # -- drain
            drain_start = time.monotonic()
            while time.monotonic() - drain_start < options.max_drain_s:
                with graph.lock:
                    quiet = time.monotonic() - max(graph.last_receive, drain_start) >= options.drain_s
                if quiet:
                    break
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            clock_stop.set()
            if clock_thread is not None and clock_thread.is_alive():
                clock_thread.join(timeout=2.0)
            if node_proc is not None:
                stop_process(node_proc)
            node_errors: List[str] = []
            if node_log is not None:
                node_log.close()
                node_errors = [line for line in Path(node_log.name).read_text(errors="replace").splitlines()
                               if "ERROR" in line or "Traceback" in line]
                os.unlink(node_log.name)
            with graph.lock:
                received = list(graph.received)
            diagnostics = graph.diagnostics
            graph.close()
    finally:
        reader.close()

    # -- the recorded bag
    with BagWriter(record_path, storage) as writer:
        for rel, recv_ns, data in received:
            writer.write(f"{ns.rstrip('/')}/{rel}", recv_ns, data, RECORDED[rel])

    # -- online statistics
    per_topic: Dict[str, List[float]] = {}
    per_frame_last: Dict[int, int] = {}
    per_frame_first: Dict[int, int] = {}
    counts: Dict[str, int] = {}
    orphans = 0
    for rel, recv_ns, data in received:
        counts[rel] = counts.get(rel, 0) + 1
        stamp = raw_stamp(data)
        sent_ns = published.get(stamp) if stamp is not None else None
        if sent_ns is None:
            orphans += 1
            continue
        per_topic.setdefault(rel, []).append((recv_ns - sent_ns) / 1e6)
        per_frame_last[stamp] = max(per_frame_last.get(stamp, recv_ns), recv_ns)
        per_frame_first[stamp] = min(per_frame_first.get(stamp, recv_ns), recv_ns)
    returned = len(per_frame_last)
    good = len(published) - len([s for s in bad_input if s not in per_frame_last])
    dropped = max(0, good - returned)
    e2e = {s: (t - published[s]) / 1e6 for s, t in per_frame_last.items()}
    first = {s: (t - published[s]) / 1e6 for s, t in per_frame_first.items()}
    last_recv = max(per_frame_last.values()) if per_frame_last else None
    span_s = ((last_recv - first_pub) / 1e9) if (last_recv and first_pub) else None
    online = {
        "node": "started by replay" if options.start_node else "user's node",
        "namespace": ns, "camera_topic_published": publish_topic, "rate": options.rate, "clock": options.clock,
        "frames_published": len(published), "bad_input_frames": len(bad_input),
        "bad_input_examples": [{"stamp_ns": s, "detail": d} for s, d in list(bad_input.items())[:10]],
        "frames_returned": returned, "dropped": dropped,
        "drop_rate": (dropped / good) if good else None,
        "input_rate_hz": len(published) / play_s if play_s else None,
        "throughput_hz": (returned / span_s) if span_s else None,
        "playback_s": play_s, "messages": dict(sorted(counts.items())), "unmatched_outputs": orphans,
        "latency_ms": {"end_to_end": _stats(list(e2e.values())), "first_output": _stats(list(first.values())),
                       **{f"topic {rel}": _stats(v) for rel, v in sorted(per_topic.items())}},
        "latency_definition": "receive time of the node's output here minus publish time of the camera message "
                              "with the same header stamp (one clock, this process); end_to_end = last output of "
                              "the frame",
        "node_diagnostics": diagnostics, "node_errors": node_errors[:10],
        "recorded_bag": str(record_path), "recorded_storage": storage,
    }
    if returned == 0:
        raise ReplayError(f"the node returned none of the {len(published)} frames played "
                          f"(outputs expected under {ns}; recorded bag: {record_path})")

    def row_extra(stamp: Optional[int]) -> Dict[str, Any]:
        return {"end_to_end_ms": e2e.get(stamp)} if stamp is not None else {}

    eval_options = EvalOptions(image_topic=camera.name, limit=options.limit, samples=options.samples,
                               progress=options.progress)
    report = evaluate_bag(bag, out, options=eval_options, metadata=meta, predictions=record_path,
                          predictions_namespace=ns, extra={"online": online, "mode": "online"},
                          row_extra=row_extra,
                          latency_series={"end to end (camera publish -> last output received)": list(e2e.values())})
    return report


def _rclpy_header(header: Any) -> Any:
    from std_msgs.msg import Header

    out = Header()
    out.stamp.sec = int(header.stamp.sec)
    out.stamp.nanosec = int(header.stamp.nanosec)
    out.frame_id = str(header.frame_id)
    return out


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(p: Any) -> None:
    p.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap) or a single .db3/.mcap file")
    p.add_argument("--model", required=True, help="the node's model (.onnx): started with it, or read for scoring")
    p.add_argument("--out", help="report folder (default: <bag>_replay beside the bag)")
    p.add_argument("--start-node", action="store_true", help="start perception_node here (default: use a running one)")
    p.add_argument("--node-namespace", default="/perception", help="namespace of the node's outputs")
    p.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra parameter for the started node (repeatable), e.g. score_threshold:=0.3")
    p.add_argument("--providers", help="execution providers of the started node, e.g. cpu or cuda,cpu")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed (1 = as recorded)")
    p.add_argument("--clock", action="store_true", help="publish /clock (bag time); a started node uses sim time")
    p.add_argument("--image-topic", help="camera topic in the bag (default: found automatically)")
    p.add_argument("--limit", type=int, help="play only the first N camera frames")
    p.add_argument("--record", help="bag to record the node's outputs to (default: <out>/recorded)")
    p.add_argument("--record-storage", choices=("sqlite3", "mcap"), help="default: the input bag's storage")
    p.add_argument("--startup-timeout", type=float, default=90.0, help="seconds to wait for the node")
    p.add_argument("--samples", type=int, default=6, help="sample overlays to write")


def main(args: Any) -> int:
    try:
        params = {}
        for item in args.node_param:
            if ":=" not in item:
                raise ValueError(f"--node-param {item!r}: expected NAME:=VALUE")
            name, value = item.split(":=", 1)
            params[name] = value
        options = ReplayOptions(rate=args.rate, clock=args.clock, start_node=args.start_node,
                                node_namespace=args.node_namespace, node_params=params, providers=args.providers,
                                image_topic=args.image_topic, limit=args.limit, record=args.record,
                                record_storage=args.record_storage, startup_timeout=args.startup_timeout,
                                samples=args.samples)
        out = args.out or default_out_dir(args.bag, "replay")
        with open_bag(args.bag) as reader:  # a bad bag is reported before anything starts
            find_camera_topic(reader.topics, options.image_topic, path=reader.path)
        report = replay_bag(args.bag, out, args.model, options, log=lambda s: print(s, file=sys.stderr))
    except ReplayError as exc:
        print(f"mtl-perception replay: {exc}", file=sys.stderr)
        return 1
    from mtl_perception.evaluation.report import summary_lines

    print("\n".join(summary_lines(report)))
    print(f"report: {out}/summary.md, {out}/metrics.json; recorded outputs: {report['online']['recorded_bag']}")
    return 0


__all__ = ["ReplayOptions", "ReplayError", "replay_bag", "add_arguments", "main"]
