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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from mtl_perception.bags.evaluate import (
    EvalOptions,
    _stats,
    default_out_dir,
    evaluate_bag,
)
from mtl_perception.bags.io import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    BagError,
    BagWriter,
    MessageError,
    camera_image,
    camera_info_topic_for,
    find_camera_topic,
    open_bag,
)
from mtl_perception.evaluation.report import summary_lines
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import RuntimeOptions
from mtl_perception.kinds import registry
from mtl_perception.messages.image import (
    ImageConversionError,
    array_to_image,
    color_encoding_info,
    image_to_array,
)
from mtl_perception.messages.stamps import raw_stamp
from mtl_perception.ros.processes import log_tail, start_node, stop_process
from mtl_perception.ros.spin import spin_in_background

#: Output topics recorded (relative to the node namespace): every kind's per-frame topics but the
#: on-demand views (segmentation/color: the node renders it only while someone subscribes, and
#: recording it would add work).
RECORDED = registry.topics(recorded=True)


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
        # ROS is imported where the graph is made: `mtl-perception`'s parser reads this module's
        # add_arguments on machines without ROS (make-bag, eval-bag).
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image

        from mtl_perception.ros.message_types import message_class

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
            self.clock_pub = self.node.create_publisher(Clock, "/clock", pub_qos)
        self.lock = threading.Lock()
        self.received: List[tuple] = []  # (relative topic, receive time ns, serialised bytes)
        self.last_receive = time.monotonic()
        self.diagnostics: Optional[Dict[str, str]] = None
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.diag_prefix = f"{ns.strip('/')}/" if ns else ""
        msgtypes = {t.name: t.msgtype for t in RECORDED}
        self.subs = {}
        for rel in outputs:
            self.subs[rel] = self.node.create_subscription(message_class(msgtypes[rel]), f"{ns}/{rel}",
                                                           self._receiver(rel), rec_qos, raw=True)
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


def _check_camera(reader: Any, msgtype: str, raw: bytes) -> Optional[str]:
    """Why the node would reject this camera message (None if it would take it)."""
    try:
        msg = reader.deserialize(raw, msgtype)
        if msgtype == COMPRESSED_IMAGE:
            camera_image(msg, msgtype, "bgr")
        else:
            color_encoding_info(msg.encoding)
            image_to_array(msg)
    except (ImageConversionError, MessageError) as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------ replay
@dataclass
class _Plan:
    """What one replay reads, plays and records."""

    meta: Any  # the model's ModelMetadata
    ns: str  # the node's namespace ("/" for none)
    outputs: List[str]  # the model's recorded output topics, relative
    record_path: Path
    camera: Any  # TopicInfo of the bag's camera
    info_topic: Optional[str]
    publish_topic: str  # where the camera is played (decoded images for a compressed topic)
    total: int
    storage: str


def _record_path(out: Path, options: ReplayOptions) -> Path:
    """Where the outputs are recorded (BagError if it exists: bags are never overwritten)."""
    record_path = Path(options.record) if options.record else out / "recorded"
    if record_path.exists():
        raise BagError(f"{record_path}: already exists; choose a new --record path or report folder")
    return record_path


def _plan(reader: Any, meta: Any, record_path: Path, options: ReplayOptions) -> _Plan:
    ns = "/" + options.node_namespace.strip("/") if options.node_namespace.strip("/") else "/"
    camera = find_camera_topic(reader.topics, options.image_topic, path=reader.path)
    info_topic = camera_info_topic_for(camera.name)
    if reader.topics.get(info_topic) is None or reader.topics[info_topic].msgtype != CAMERA_INFO:
        info_topic = None
    compressed = camera.msgtype == COMPRESSED_IMAGE
    publish_topic = camera.name[: -len("/compressed")] if compressed and camera.name.endswith("/compressed") \
        else camera.name
    if compressed and publish_topic == camera.name:
        publish_topic = camera.name + "/decoded"
    return _Plan(meta=meta, ns=ns, outputs=[t.name for t in registry.topics_for(meta.tasks, recorded=True)],
                 record_path=record_path, camera=camera, info_topic=info_topic, publish_topic=publish_topic,
                 total=camera.count if options.limit is None else min(options.limit, camera.count),
                 storage=options.record_storage or reader.storage or "sqlite3")


def _node_params(plan: _Plan, model_path: str, options: ReplayOptions) -> Dict[str, Any]:
    """A started node's parameters: detections unthresholded (mAP comparable with eval-bag)."""
    params: Dict[str, Any] = {"model_path": str(Path(model_path).resolve()), "score_threshold": 0.0,
                              "max_detections": registry.all_detections(plan.meta.tasks)}
    if options.providers:
        params["providers"] = [p for p in options.providers.split(",") if p]
    if options.clock:
        params["use_sim_time"] = True
    params.update(options.node_params)
    return params


class _Clock:
    """Publishes bag time on /clock at `hz` from when playing starts, scaled by the rate."""

    def __init__(self, graph: _Graph, rate: float, hz: float, start_ns: int) -> None:
        self.graph, self.rate, self.hz = graph, rate, hz
        self.bag_ns, self.wall = start_ns, time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, bag_ns: int) -> None:
        self.bag_ns, self.wall = bag_ns, time.monotonic()
        self.graph.publish_clock(bag_ns)
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0 / self.hz):
            self.graph.publish_clock(self.bag_ns + int((time.monotonic() - self.wall) * 1e9 * self.rate))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2.0)


def _wait_for_node(graph: _Graph, plan: _Plan, reader: Any, options: ReplayOptions,
                   node_proc: Optional[subprocess.Popen], node_log: Any) -> None:
    """Until the node subscribes to the camera and publishes every wanted output (ReplayError if not)."""
    deadline = time.monotonic() + options.startup_timeout
    wanted = [rel for rel in plan.outputs if rel in graph.subs]
    while True:
        if options.clock:  # a sim-time node needs a clock before it can do anything
            graph.publish_clock(reader.start_ns)
        have_sub = graph.image_pub.get_subscription_count() > 0
        have_pubs = [rel for rel, sub in graph.subs.items() if sub.get_publisher_count() > 0]
        if have_sub and all(rel in have_pubs for rel in wanted):
            return
        if node_proc is not None and node_proc.poll() is not None:
            raise ReplayError(f"perception_node exited ({node_proc.returncode}):\n{log_tail(node_log.name)}")
        if time.monotonic() > deadline:
            missing = [f"{plan.ns.rstrip('/')}/{rel}" for rel in wanted if rel not in have_pubs]
            why = [] if have_sub else [f"nobody subscribes to {plan.publish_topic}"]
            why += [f"no publisher on {', '.join(missing)}"] if missing else []
            tail = f"\n{log_tail(node_log.name)}" if node_log is not None else ""
            raise ReplayError(f"no perception node ready within {options.startup_timeout:g} s: "
                              f"{'; '.join(why)} (start one with image remapped to {plan.publish_topic} in "
                              f"namespace {plan.ns}, or use --start-node){tail}")
        time.sleep(0.1)


@dataclass
class _Played:
    published: Dict[int, int] = field(default_factory=dict)  # stamp -> publish time ns
    bad_input: Dict[int, str] = field(default_factory=dict)  # stamp -> why the node would reject it
    first_pub: Optional[int] = None
    play_s: float = 0.0


def _camera_payload(reader: Any, msgtype: str, raw: bytes, problem: Optional[str]) -> Any:
    """What is published for one camera message: its bytes, a decoded Image for a compressed one,
    None for a compressed one that cannot be decoded."""
    if msgtype != COMPRESSED_IMAGE:
        return bytes(raw)
    if problem is not None:
        return None
    from sensor_msgs.msg import Image

    msg = reader.deserialize(raw, msgtype)
    return array_to_image(camera_image(msg, msgtype, "bgr"), "bgr8", _rclpy_header(msg.header), msg_cls=Image)


def _play(graph: _Graph, reader: Any, plan: _Plan, options: ReplayOptions, clock: Optional[_Clock]) -> _Played:
    """Publishes the camera (and camera_info) at the recorded pace times the rate."""
    played = _Played()
    t0_bag: Optional[int] = None
    t0_wall = time.monotonic()
    sent = 0
    topics = [plan.camera.name] + ([plan.info_topic] if plan.info_topic else [])
    for topic, msgtype, log_ns, raw in reader.messages(topics):
        if topic == plan.camera.name and sent >= plan.total:
            break
        if t0_bag is None:
            t0_bag, t0_wall = log_ns, time.monotonic()
            if clock is not None:
                clock.start(log_ns)
        delay = t0_wall + (log_ns - t0_bag) / 1e9 / options.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        graph.publish_clock(log_ns)  # bag time reaches each message's time before it is sent
        if topic != plan.camera.name:
            graph.info_pub.publish(bytes(raw))
            continue
        stamp = raw_stamp(raw)
        problem = _check_camera(reader, msgtype, raw)
        payload = _camera_payload(reader, msgtype, raw, problem)
        now = time.time_ns()
        if payload is not None:
            graph.image_pub.publish(payload)
        played.first_pub = played.first_pub if played.first_pub is not None else now
        sent += 1
        if stamp is not None:
            played.published[stamp] = now
            if problem is not None:
                played.bad_input[stamp] = problem
    played.play_s = max(time.monotonic() - t0_wall, 1e-9)
    return played


def _drain(graph: _Graph, options: ReplayOptions) -> None:
    """Until no output arrived for drain_s (at most max_drain_s)."""
    drain_start = time.monotonic()
    while time.monotonic() - drain_start < options.max_drain_s:
        with graph.lock:
            quiet = time.monotonic() - max(graph.last_receive, drain_start) >= options.drain_s
        if quiet:
            break
        time.sleep(0.05)
    time.sleep(0.2)


def _node_errors(node_log: Any) -> List[str]:
    """ERROR and Traceback lines of a started node's log (which is then removed)."""
    if node_log is None:
        return []
    node_log.close()
    errors = [line for line in Path(node_log.name).read_text(errors="replace").splitlines()
              if "ERROR" in line or "Traceback" in line]
    os.unlink(node_log.name)
    return errors


@dataclass
class _Session:
    """What the live part of a replay left: the outputs received and what the node reported."""

    played: _Played
    received: List[tuple]  # (relative topic, receive time ns, serialised bytes)
    diagnostics: Optional[Dict[str, str]]
    node_errors: List[str]


def _live(reader: Any, plan: _Plan, model_path: str, options: ReplayOptions, log: Callable[[str], None]) -> _Session:
    """Starts the node if asked, waits for it, plays the bag, drains the outputs; stops everything."""
    node_proc = node_log = clock = None
    graph = _Graph(plan.publish_topic, plan.info_topic, plan.ns,
                   plan.outputs if options.start_node else [t.name for t in RECORDED], options.clock)
    try:
        if options.start_node:
            params = _node_params(plan, model_path, options)
            remaps = [("image", plan.publish_topic)] + ([("camera_info", plan.info_topic)] if plan.info_topic else [])
            node_log = tempfile.NamedTemporaryFile("w+", prefix="perception_node.", suffix=".log", delete=False)
            log(f"replay: starting perception_node in {plan.ns} (model {model_path})")
            try:
                node_proc = start_node(plan.ns, params, node_log, remaps)
            except ValueError as exc:
                raise ReplayError(str(exc)) from None
        _wait_for_node(graph, plan, reader, options, node_proc, node_log)
        time.sleep(options.settle_s)
        log(f"replay: playing {plan.total} frames of {plan.camera.name} at {options.rate:g}x into "
            f"{plan.publish_topic}")
        clock = _Clock(graph, options.rate, options.clock_hz, reader.start_ns) if options.clock else None
        played = _play(graph, reader, plan, options, clock)
        _drain(graph, options)
    finally:
        if clock is not None:
            clock.stop()
        if node_proc is not None:
            stop_process(node_proc)
        node_errors = _node_errors(node_log)
        with graph.lock:
            received = list(graph.received)
        diagnostics = graph.diagnostics
        graph.close()
    return _Session(played, received, diagnostics, node_errors)


def _write_recording(session: _Session, plan: _Plan) -> None:
    """The node's outputs as received, into a new bag like `ros2 bag record`."""
    msgtypes = {t.name: t.msgtype for t in RECORDED}
    with BagWriter(plan.record_path, plan.storage) as writer:
        for rel, recv_ns, data in session.received:
            writer.write(f"{plan.ns.rstrip('/')}/{rel}", recv_ns, data, msgtypes[rel])


def _online(session: _Session, plan: _Plan, options: ReplayOptions) -> Tuple[Dict[str, Any], Dict[int, float]]:
    """The online statistics (latency per frame and topic, drops, throughput) and the end-to-end
    latency (ms) by stamp."""
    played = session.played
    published, bad_input = played.published, played.bad_input
    per_topic: Dict[str, List[float]] = {}
    per_frame_last: Dict[int, int] = {}
    per_frame_first: Dict[int, int] = {}
    counts: Dict[str, int] = {}
    orphans = 0
    for rel, recv_ns, data in session.received:
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
    span_s = ((last_recv - played.first_pub) / 1e9) if (last_recv and played.first_pub) else None
    online = {
        "node": "started by replay" if options.start_node else "user's node",
        "namespace": plan.ns, "camera_topic_published": plan.publish_topic, "rate": options.rate,
        "clock": options.clock, "frames_published": len(published), "bad_input_frames": len(bad_input),
        "bad_input_examples": [{"stamp_ns": s, "detail": d} for s, d in list(bad_input.items())[:10]],
        "frames_returned": returned, "dropped": dropped,
        "drop_rate": (dropped / good) if good else None,
        "input_rate_hz": len(published) / played.play_s if played.play_s else None,
        "throughput_hz": (returned / span_s) if span_s else None,
        "playback_s": played.play_s, "messages": dict(sorted(counts.items())), "unmatched_outputs": orphans,
        "latency_ms": {"end_to_end": _stats(list(e2e.values())), "first_output": _stats(list(first.values())),
                       **{f"topic {rel}": _stats(v) for rel, v in sorted(per_topic.items())}},
        "latency_definition": "receive time of the node's output here minus publish time of the camera message "
                              "with the same header stamp (one clock, this process); end_to_end = last output of "
                              "the frame",
        "node_diagnostics": session.diagnostics, "node_errors": session.node_errors[:10],
        "recorded_bag": str(plan.record_path), "recorded_storage": plan.storage,
    }
    return online, e2e


def replay_bag(bag: os.PathLike | str, out_dir: os.PathLike | str, model_path: str,
               options: Optional[ReplayOptions] = None, log: Any = None) -> Dict[str, Any]:
    """Plays `bag` into a perception_node, records its outputs, scores them; returns the report
    (also written to out_dir, with the recorded bag). Raises ReplayError / BagError / ModelError."""
    options = options or ReplayOptions()
    log = log or (lambda s: None)
    if not options.rate > 0:
        raise ValueError(f"rate must be positive, got {options.rate}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_path = _record_path(out, options)
    meta = load_model(model_path, RuntimeOptions(providers=["cpu"])).metadata
    reader = open_bag(bag)
    try:
        plan = _plan(reader, meta, record_path, options)
        session = _live(reader, plan, model_path, options, log)
    finally:
        reader.close()
    _write_recording(session, plan)
    online, e2e = _online(session, plan, options)
    if online["frames_returned"] == 0:
        raise ReplayError(f"the node returned none of the {online['frames_published']} frames played "
                          f"(outputs expected under {plan.ns}; recorded bag: {plan.record_path})")

    def row_extra(stamp: Optional[int]) -> Dict[str, Any]:
        return {"end_to_end_ms": e2e.get(stamp)} if stamp is not None else {}

    eval_options = EvalOptions(image_topic=plan.camera.name, limit=options.limit, samples=options.samples,
                               progress=options.progress)
    return evaluate_bag(bag, out, options=eval_options, metadata=meta, predictions=plan.record_path,
                        predictions_namespace=plan.ns, extra={"online": online, "mode": "online"},
                        row_extra=row_extra,
                        latency_series={"end to end (camera publish -> last output received)": list(e2e.values())})


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
    print("\n".join(summary_lines(report)))
    print(f"report: {out}/summary.md, {out}/metrics.json; recorded outputs: {report['online']['recorded_bag']}")
    return 0


__all__ = ["ReplayOptions", "ReplayError", "replay_bag", "add_arguments", "main"]
