"""`mtl-perception eval-bag`: score a model on a recorded drive, offline and deterministic.

Reads the camera topic of a rosbag2 bag (sqlite3 or mcap; sensor_msgs/Image or CompressedImage),
feeds every frame to the model exactly as `perception_node` does (resize to the model input,
area when shrinking, then the model's colour order), times it, and, where the bag has ground
truth for a frame (matched by header stamp), scores the outputs with the shared per-frame
scoring of `mtl_perception.evaluation.evaluate` (`score_frame`): the same metrics, at the same resolution,
as `mtl-perception evaluate` and training validation, i.e. at the model's input resolution
with label images resized nearest-neighbour and boxes scaled to input pixels. Detection mAP
uses every top-K output (no score threshold), as in evaluate.

The same scoring reads predictions recorded from a live node instead of running a model
(`predictions=`: a bag of the node's outputs, see `replay`): outputs are matched to camera
frames by header stamp and brought back to the model's resolution (label images nearest, boxes
scaled from camera pixels).

Frames whose image cannot be used (unsupported encoding, wrong data length, undecodable
compressed data, unreadable message) are skipped and counted by reason; so are unusable ground
truth messages. A bag with no usable frame at all is an error.
"""
from __future__ import annotations

import math
import os
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from mtl_perception.bags.io import (
    CAMERA_INFO,
    DETECTIONS,
    GROUND_TRUTH_TOPICS,
    IMAGE,
    OUTPUT_TOPICS,
    BagError,
    BagReader,
    BagWriter,
    MessageError,
    camera_image,
    camera_info_topic_for,
    detections_from_msg,
    detections_msg,
    find_camera_topic,
    image_msg,
    open_bag,
)
from mtl_perception.evaluation.evaluate import baselines, make_metrics, score_frame
from mtl_perception.inference.preprocess import resize_image
from mtl_perception.messages.image import ImageConversionError, image_to_array

SCHEMA = "mtl_perception.bag_report/1"
GT_TYPES = {"segmentation": IMAGE, "depth": IMAGE, "detections": DETECTIONS}
MAX_EXAMPLES = 20  # skipped-frame examples kept in the report
BASELINE_FRAMES = 500  # frames whose labels the baselines are computed on (evenly spaced)


# ------------------------------------------------------------------------------------ options
@dataclass
class EvalOptions:
    image_topic: Optional[str] = None  # None: found automatically
    gt_topics: Dict[str, str] = field(default_factory=lambda: dict(GROUND_TRUTH_TOPICS))
    camera_info_topic: Optional[str] = None  # None: beside the image topic
    match_window_s: float = 1.0  # how long (bag time) a frame waits for its ground truth
    limit: Optional[int] = None  # evaluate only the first N camera frames
    samples: int = 6  # sample overlays written
    output_bag: Optional[str] = None  # write the model outputs to this new bag
    output_storage: Optional[str] = None  # None: the input bag's storage
    output_namespace: str = "/perception"
    output_resolution: str = "model"  # 'model' or 'input' for segmentation and depth in the output bag
    score_threshold: float = 0.3  # detections written to the output bag (metrics use all)
    progress: bool = False


# ---------------------------------------------------------------------------- frame matching
def raw_stamp(raw: bytes) -> Optional[int]:
    """Header stamp (ns) of a serialised message that starts with a std_msgs/Header (CDR)."""
    if len(raw) < 12 or raw[0] != 0:
        return None
    sec, nsec = struct.unpack_from("<iI" if raw[1] & 1 else ">iI", raw, 4)
    return int(sec) * 1_000_000_000 + int(nsec)


@dataclass
class Entry:
    """One serialised message."""

    topic: str
    msgtype: str
    log_ns: int
    raw: bytes


@dataclass
class BagFrameData:
    index: int  # position of the camera message on its topic
    stamp: Optional[int]
    image: Entry
    others: Dict[str, Entry] = field(default_factory=dict)  # by topic


def join_frames(reader: BagReader, image_topic: str, other_topics: Sequence[str], window_ns: int,
                unmatched: Optional[Dict[str, int]] = None) -> Iterator[BagFrameData]:
    """Camera frames in bag order, each with the messages of `other_topics` that carry the same
    header stamp. Messages may come before or after their frame; a frame waits at most
    `window_ns` of log time for them. Unmatched messages are counted in `unmatched` by topic."""
    others = [t for t in other_topics if t in reader.topics]
    pending: deque = deque()
    by_stamp: Dict[int, BagFrameData] = {}
    buffers: Dict[str, Dict[int, Entry]] = {t: {} for t in others}
    counter = 0
    unmatched = unmatched if unmatched is not None else {}

    def complete(frame: BagFrameData) -> bool:
        return all(t in frame.others for t in others)

    def release(now: int) -> Iterator[BagFrameData]:
        while pending and (complete(pending[0]) or now - pending[0].image.log_ns > window_ns):
            frame = pending.popleft()
            if frame.stamp is not None and by_stamp.get(frame.stamp) is frame:
                del by_stamp[frame.stamp]
            yield frame

    for topic, msgtype, log_ns, raw in reader.messages([image_topic] + others):
        entry = Entry(topic, msgtype, log_ns, raw)
        stamp = raw_stamp(raw)
        if topic == image_topic:
            frame = BagFrameData(counter, stamp, entry)
            counter += 1
            if stamp is not None:
                for t in others:
                    match = buffers[t].pop(stamp, None)
                    if match is not None:
                        frame.others[t] = match
                by_stamp.setdefault(stamp, frame)
            pending.append(frame)
        elif stamp is not None:
            frame = by_stamp.get(stamp)
            if frame is not None and topic not in frame.others:
                frame.others[topic] = entry
            else:
                buffers[topic][stamp] = entry
        yield from release(log_ns)
        for t, buf in buffers.items():  # forget messages too old to meet a frame
            old = [s for s, e in buf.items() if log_ns - e.log_ns > window_ns]
            for s in old:
                del buf[s]
                unmatched[t] = unmatched.get(t, 0) + 1
    while pending:
        frame = pending.popleft()
        yield frame
    for t, buf in buffers.items():
        if buf:
            unmatched[t] = unmatched.get(t, 0) + len(buf)


# ------------------------------------------------------------------------------ ground truth
def _label_target(store_deser: Callable[[Entry], Any], entries: Mapping[str, Optional[Entry]], tasks: Mapping,
                  camera_size: Tuple[int, int], model_size: Tuple[int, int],
                  problems: Callable[[str, str], None], unknown_classes: Dict[str, int]) -> Dict[str, Any]:
    """Ground truth of one frame at the model's resolution: "semantic", "depth", "boxes" +
    "labels"; a label that is absent or unusable is left out (and reported to `problems`);
    labelled boxes of classes the model lacks are left out and counted in `unknown_classes`."""
    width, height = model_size
    cam_w, cam_h = camera_size
    target: Dict[str, Any] = {}
    kinds = {task.kind: task for task in tasks.values()}
    seg = entries.get("segmentation")
    if seg is not None and "segmentation" in kinds:
        task = kinds["segmentation"]
        try:
            msg = store_deser(seg)
            if msg.encoding not in ("mono8", "8UC1"):
                raise ImageConversionError(f"segmentation encoding {msg.encoding!r} (expected mono8 class ids)")
            labels = np.ascontiguousarray(image_to_array(msg))
            ids = np.unique(labels)
            bad = ids[(ids >= len(task.class_names)) & (ids != task.ignore_index)]
            if bad.size:
                raise ImageConversionError(
                    f"segmentation ids {bad[:5].tolist()} outside the model's {len(task.class_names)} classes")
            target["semantic"] = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        except (ImageConversionError, MessageError) as exc:
            problems("segmentation", str(exc))
    dep = entries.get("depth")
    if dep is not None and "depth" in kinds:
        try:
            msg = store_deser(dep)
            arr = image_to_array(msg)
            if msg.encoding in ("32FC1", "64FC1"):
                depth = arr.astype(np.float32)
            elif msg.encoding in ("16UC1", "mono16"):  # REP 118: millimetres, 0 invalid
                depth = arr.astype(np.float32) / 1000.0
                depth[arr == 0] = np.nan
            else:
                raise ImageConversionError(f"depth encoding {msg.encoding!r} (expected 32FC1 metres or 16UC1 mm)")
            target["depth"] = cv2.resize(np.ascontiguousarray(depth), (width, height),
                                         interpolation=cv2.INTER_NEAREST)
        except (ImageConversionError, MessageError) as exc:
            problems("depth", str(exc))
    det = entries.get("detections")
    if det is not None and "detection" in kinds:
        try:
            msg = store_deser(det)
            boxes, _, labels, unknown = detections_from_msg(msg, kinds["detection"].class_names)
            for name in unknown:
                unknown_classes[name] = unknown_classes.get(name, 0) + 1
            scale = np.array([width / cam_w, height / cam_h] * 2, np.float32)
            target["boxes"] = boxes * scale
            target["labels"] = labels
        except (MessageError, AttributeError, TypeError) as exc:
            problems("detections", f"malformed Detection2DArray: {exc}")
    return target


# ------------------------------------------------------------------------------ predictions
def outputs_from_messages(msgs: Mapping[str, Any], tasks: Mapping, model_size: Tuple[int, int],
                          camera_size: Tuple[int, int], color_order: str = "rgb") -> Dict[str, Dict[str, np.ndarray]]:
    """Node output messages (by relative topic name) -> `PerceptionModel.run`-shaped outputs at the
    model's resolution, for the tasks whose topic is present. Label images are resized nearest,
    boxes scaled from camera pixels to model pixels."""
    width, height = model_size
    cam_w, cam_h = camera_size
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for name, task in tasks.items():
        if task.kind == "segmentation" and "segmentation" in msgs:
            ids = np.ascontiguousarray(image_to_array(msgs["segmentation"]))
            out[name] = {"class_map": cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)}
        elif task.kind == "depth" and "depth" in msgs:
            depth = np.ascontiguousarray(image_to_array(msgs["depth"]).astype(np.float32))
            out[name] = {"depth": cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)}
        elif task.kind == "detection" and "detections" in msgs:
            boxes, scores, labels, _ = detections_from_msg(msgs["detections"], task.class_names)
            scale = np.array([width / cam_w, height / cam_h] * 2, np.float32)
            out[name] = {"boxes": boxes * scale, "scores": scores, "classes": labels}
        elif task.kind == "super_resolution" and "super_resolution" in msgs:
            from mtl_perception.messages.image import to_color

            sr = to_color(msgs["super_resolution"], order=color_order)
            want = (width * task.scale, height * task.scale)
            if (sr.shape[1], sr.shape[0]) != want:
                sr = resize_image(sr, want)
            out[name] = {"image": sr}
    return out


class RecordedOutputs:
    """Reads a bag of node outputs (under `namespace`) in step with the camera frames: `take(stamp)`
    returns the messages of that stamp by relative topic. Outputs are expected in about stamp
    order (as a node publishes them); a look-ahead absorbs small reorderings between topics."""

    LOOKAHEAD = 64

    def __init__(self, path: os.PathLike | str, namespace: str):
        self.reader = open_bag(path)
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.topics = {f"{ns}/{rel}": rel for rel in OUTPUT_TOPICS.values()}
        present = [t for t in self.topics if t in self.reader.topics]
        if not present:
            raise BagError(f"{path}: no perception outputs under {ns or '/'} "
                           f"(topics: {self.reader.topic_summary()})")
        self.present = present
        self._iter = self.reader.messages(present)
        self._buffer: Dict[int, Dict[str, Entry]] = {}
        self._ahead = 0
        self._done = False
        self.log_ns: Dict[int, Dict[str, int]] = {}  # stamp -> relative topic -> receive (log) time
        self.counts: Dict[str, int] = {}
        self.orphans = 0

    def _read_until(self, stamp: int) -> None:
        while not self._done and (self._ahead < self.LOOKAHEAD):
            try:
                topic, msgtype, log_ns, raw = next(self._iter)
            except StopIteration:
                self._done = True
                break
            s = raw_stamp(raw)
            if s is None:
                continue
            rel = self.topics[topic]
            self._buffer.setdefault(s, {})[rel] = Entry(topic, msgtype, log_ns, raw)
            self.log_ns.setdefault(s, {})[rel] = log_ns
            self.counts[rel] = self.counts.get(rel, 0) + 1
            if s > stamp:
                self._ahead += 1

    def take(self, stamp: Optional[int]) -> Dict[str, Any]:
        if stamp is None:
            return {}
        self._read_until(stamp)
        for s in [s for s in self._buffer if s < stamp]:
            del self._buffer[s]
            self.orphans += 1
        entries = self._buffer.pop(stamp, {})
        self._ahead = sum(1 for s, topics in self._buffer.items() for _ in topics if s > stamp)
        msgs = {}
        for rel, entry in entries.items():
            try:
                msgs[rel] = self.reader.deserialize(entry.raw, entry.msgtype)
            except MessageError:
                continue
        return msgs

    def close(self) -> None:
        self.reader.close()


# ------------------------------------------------------------------------------- the output bag
class OutputBag:
    """Writes model outputs as the node publishes them (same topics under a namespace, same
    encodings), with each input frame's header and log time."""

    def __init__(self, path: str, storage: str, namespace: str, tasks: Mapping, color_order: str,
                 resolution: str, threshold: float, max_detections: int = 100):
        self.writer = BagWriter(path, storage)
        self.ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.tasks, self.color_order = tasks, color_order
        self.resolution, self.threshold, self.max_detections = resolution, threshold, max_detections
        self.camera_info: Optional[Any] = None

    def topic(self, rel: str) -> str:
        return f"{self.ns}/{rel}"

    def write(self, header: Any, log_ns: int, outputs: Mapping, camera_rgb: np.ndarray, small_rgb: np.ndarray) -> None:
        from mtl_perception.inference.postprocess import overlay_segmentation, select_detections, valid_depth
        from mtl_perception.messages.outputs import sr_camera_info

        store = self.writer.store
        cam_h, cam_w = camera_rgb.shape[:2]
        model_h, model_w = small_rgb.shape[:2]
        at_input = self.resolution == "input"
        for name, task in self.tasks.items():
            o = outputs.get(name)
            if o is None:
                continue
            if task.kind == "segmentation":
                class_map = o["class_map"]
                if at_input:
                    class_map = cv2.resize(class_map, (cam_w, cam_h), interpolation=cv2.INTER_NEAREST)
                self.writer.write(self.topic("segmentation"), log_ns, image_msg(class_map, "mono8", header, store))
                base = camera_rgb if at_input else small_rgb
                overlay = overlay_segmentation(np.ascontiguousarray(base[..., ::-1]), class_map, 0.5, task.ignore_index)
                self.writer.write(self.topic("segmentation/color"), log_ns, image_msg(overlay, "bgr8", header, store))
            elif task.kind == "depth":
                depth = valid_depth(np.array(o["depth"], np.float32), task.min_depth, task.max_depth)
                if at_input:
                    depth = cv2.resize(depth, (cam_w, cam_h), interpolation=cv2.INTER_NEAREST)
                self.writer.write(self.topic("depth"), log_ns, image_msg(depth, "32FC1", header, store))
            elif task.kind == "detection":
                dets = select_detections(o["boxes"], o["scores"], o["classes"], scale_x=cam_w / model_w,
                                         scale_y=cam_h / model_h, threshold=self.threshold,
                                         max_detections=self.max_detections, width=cam_w, height=cam_h)
                names = [task.class_names[c] if 0 <= c < len(task.class_names) else str(c)
                         for c in dets.classes.tolist()]
                self.writer.write(self.topic("detections"), log_ns,
                                  detections_msg(header, dets.boxes, dets.scores.tolist(), names, store))
            elif task.kind == "super_resolution":
                sr = o["image"]
                bgr = np.ascontiguousarray(sr[..., ::-1]) if self.color_order == "rgb" else sr
                self.writer.write(self.topic("super_resolution"), log_ns, image_msg(bgr, "bgr8", header, store))
                if self.camera_info is not None:
                    info = sr_camera_info(self.camera_info, header, cam_w, cam_h, sr.shape[1], sr.shape[0])
                    self.writer.write(self.topic("super_resolution/camera_info"), log_ns, info, CAMERA_INFO)

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------- the report
class _Skips:
    def __init__(self) -> None:
        self.by_reason: Dict[str, int] = {}
        self.examples: List[Dict[str, Any]] = []

    def add(self, reason: str, detail: str, **where: Any) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({**where, "reason": reason, "detail": detail})

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def _skip_reason(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, MessageError):
        return "unreadable_message"
    if "unsupported" in text and "encoding" in text or "no colour order" in text or "not a camera image" in text:
        return "unsupported_encoding"
    if "cannot be decoded" in text or "decodes to" in text:
        return "undecodable_compressed_image"
    if "bytes" in text or "step" in text or "zero-size" in text:
        return "wrong_data_size"
    return "bad_image"


def _stats(values: Sequence[float]) -> Dict[str, Optional[float]]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not v.size:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {"n": int(v.size), "mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
            "p95": float(np.percentile(v, 95)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def frame_scalars(frame_metrics: Mapping[str, Any], tasks: Mapping, outputs: Mapping,
                  target: Mapping) -> Dict[str, float]:
    """Per-frame values for the metrics-over-time plot and frames.csv."""
    row: Dict[str, float] = {}
    for name, m in frame_metrics.items():
        kind = tasks[name].kind
        values = m.compute()
        keys = {"segmentation": ("miou", "pixel_acc"), "depth": ("abs_rel", "delta1"),
                "super_resolution": ("psnr", "psnr_bicubic"), "detection": ()}[kind]
        for key in keys:
            row[f"{name}/{key}"] = float(values[key])
        if kind == "detection":
            o = outputs[name]
            row[f"{name}/detections@0.3"] = float(np.sum(np.asarray(o["scores"]) >= 0.3))
            row[f"{name}/ground_truth_boxes"] = float(len(target["boxes"]))
    return row


# ------------------------------------------------------------------------------------- the run
def evaluate_bag(bag: os.PathLike | str, out_dir: os.PathLike | str, model: Any = None,
                 options: EvalOptions = EvalOptions(), *, metadata: Any = None,
                 predictions: Optional[os.PathLike | str] = None, predictions_namespace: str = "/perception",
                 extra: Optional[Dict[str, Any]] = None,
                 row_extra: Optional[Callable[[Optional[int]], Dict[str, Any]]] = None,
                 latency_series: Optional[Dict[str, List[float]]] = None) -> Dict[str, Any]:
    """Evaluates `model` (a PerceptionModel) on `bag`, or scores recorded `predictions` (a bag of
    node outputs under `predictions_namespace`; `metadata` = the model's ModelMetadata). Writes
    the report folder `out_dir` and returns the report dict (also out_dir/metrics.json).

    For recorded predictions, `extra` adds report sections, `row_extra(stamp)` per-frame columns
    and `latency_series` the latency histograms (name -> milliseconds).
    """
    from mtl_perception.evaluation import report as report_mod

    if (model is None) == (predictions is None):
        raise ValueError("give either a model or recorded predictions")
    meta = model.metadata if model is not None else metadata
    if meta is None:
        raise ValueError("scoring recorded predictions needs the model's metadata")
    tasks = meta.tasks
    color_order = meta.input.color_order
    model_size = (meta.input.width, meta.input.height)
    sr_task = next((t for t in tasks.values() if t.kind == "super_resolution"), None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    reader = open_bag(bag)
    recorded = RecordedOutputs(predictions, predictions_namespace) if predictions is not None else None
    output_bag: Optional[OutputBag] = None
    try:
        gt_topics = {k: v for k, v in options.gt_topics.items() if v}
        camera = find_camera_topic(reader.topics, options.image_topic, exclude=list(gt_topics.values()),
                                   path=reader.path)
        present_gt: Dict[str, str] = {}
        for kind, topic in gt_topics.items():
            info = reader.topics.get(topic)
            if info is None:
                continue
            if info.msgtype != GT_TYPES[kind]:
                raise BagError(f"{reader.path}: ground-truth topic {topic} is {info.msgtype}, "
                               f"expected {GT_TYPES[kind]}")
            present_gt[kind] = topic
        info_topic = options.camera_info_topic or camera_info_topic_for(camera.name)
        if reader.topics.get(info_topic) is None or reader.topics[info_topic].msgtype != CAMERA_INFO:
            info_topic = None
        total = camera.count if options.limit is None else min(camera.count, options.limit)
        if options.output_bag:
            output_bag = OutputBag(options.output_bag, options.output_storage or reader.storage or "sqlite3",
                                   options.output_namespace, tasks, color_order, options.output_resolution,
                                   options.score_threshold,
                                   max(1, next((t.top_k for t in tasks.values() if t.kind == "detection"), 100)))

        metrics = make_metrics(tasks)
        skips, gt_skips = _Skips(), _Skips()
        unmatched: Dict[str, int] = {}
        unknown_classes: Dict[str, int] = {}
        gt_frames = {kind: 0 for kind in present_gt}
        rows: List[Dict[str, Any]] = []
        model_ms: List[float] = []
        frame_ms: List[float] = []
        semantic_gt, depth_gt = [], []
        baseline_stride = max(1, math.ceil(total / BASELINE_FRAMES))
        sample_at = (sorted(set(np.linspace(0, max(total - 1, 0), options.samples).round().astype(int).tolist()))
                     if options.samples > 0 else [])
        samples: List[Dict[str, Any]] = []
        camera_sizes: Dict[str, int] = {}
        first_stamp: Optional[int] = None
        returned = 0
        window_ns = int(options.match_window_s * 1e9)
        frames = join_frames(reader, camera.name, list(present_gt.values()) + ([info_topic] if info_topic else []),
                             window_ns, unmatched)
        progress = None
        if options.progress:
            from tqdm import tqdm

            progress = tqdm(total=total, desc="eval-bag", leave=False)
        topic_kind = {topic: kind for kind, topic in present_gt.items()}
        for frame in frames:
            if frame.index >= total:
                break
            if progress is not None:
                progress.update(1)
            where = {"frame": frame.index, "stamp_ns": frame.stamp}
            start = time.perf_counter()
            try:
                msg = reader.deserialize(frame.image.raw, frame.image.msgtype)
                rgb = camera_image(msg, frame.image.msgtype, "rgb")
            except (ImageConversionError, MessageError) as exc:
                skips.add(_skip_reason(exc), str(exc), **where)
                rows.append({"frame": frame.index, "stamp_ns": frame.stamp, "status": _skip_reason(exc)})
                continue
            cam_h, cam_w = rgb.shape[:2]
            camera_sizes[f"{cam_w}x{cam_h}"] = camera_sizes.get(f"{cam_w}x{cam_h}", 0) + 1
            small = resize_image(rgb, model_size)
            if recorded is None:
                model_input = small if color_order == "rgb" else np.ascontiguousarray(small[..., ::-1])
                before = time.perf_counter()
                outputs = model.run(model_input)
                model_ms.append((time.perf_counter() - before) * 1e3)
                frame_ms.append((time.perf_counter() - start) * 1e3)
            else:
                msgs = recorded.take(frame.stamp)
                if not msgs:
                    rows.append({"frame": frame.index, "stamp_ns": frame.stamp, "status": "not_returned"})
                    continue
                try:
                    outputs = outputs_from_messages(msgs, tasks, model_size, (cam_w, cam_h), color_order)
                except (ImageConversionError, ValueError) as exc:
                    skips.add("unusable_output", str(exc), **where)
                    rows.append({"frame": frame.index, "stamp_ns": frame.stamp, "status": "unusable_output"})
                    continue
            returned += 1
            if first_stamp is None and frame.stamp is not None:
                first_stamp = frame.stamp
            gt_entries = {topic_kind[t]: e for t, e in frame.others.items() if t in topic_kind}

            def deser(entry: Entry) -> Any:
                return reader.deserialize(entry.raw, entry.msgtype)

            def problem(kind: str, detail: str) -> None:
                gt_skips.add(kind, detail, **where)

            target = _label_target(deser, gt_entries, tasks, (cam_w, cam_h), model_size, problem, unknown_classes)
            target["image"] = small
            if sr_task is not None:
                target["hr_image"] = resize_image(rgb, (model_size[0] * sr_task.scale, model_size[1] * sr_task.scale))
            for kind, key in (("segmentation", "semantic"), ("depth", "depth"), ("detections", "boxes")):
                if key in target:
                    gt_frames[kind] = gt_frames.get(kind, 0) + 1
            frame_metrics = score_frame(tasks, outputs, target, color_order)
            for name, m in frame_metrics.items():
                metrics[name].merge(m)
            if frame.index % baseline_stride == 0:
                if "semantic" in target:
                    semantic_gt.append(target["semantic"])
                if "depth" in target:
                    depth_gt.append(target["depth"])
            row = {"frame": frame.index, "stamp_ns": frame.stamp, "status": "ok",
                   "time_s": (frame.stamp - first_stamp) / 1e9 if frame.stamp is not None else None}
            if recorded is None:
                row["model_ms"] = model_ms[-1]
                row["frame_ms"] = frame_ms[-1]
            elif row_extra is not None:
                row.update(row_extra(frame.stamp))
            row.update(frame_scalars(frame_metrics, tasks, outputs, target))
            rows.append(row)
            if sample_at and frame.index >= sample_at[0]:
                while sample_at and frame.index >= sample_at[0]:
                    sample_at.pop(0)
                samples.append({"frame": frame.index, "stamp_ns": frame.stamp, "camera": rgb, "small": small,
                                "outputs": outputs, "target": target})
            if output_bag is not None:
                if info_topic and info_topic in frame.others:
                    try:
                        output_bag.camera_info = deser(frame.others[info_topic])
                    except MessageError:
                        pass
                output_bag.write(msg.header, frame.image.log_ns, outputs, rgb, small)
        if progress is not None:
            progress.close()
        scoring_notes = []
        if sr_task is not None:
            sr_w, sr_h = model_size[0] * sr_task.scale, model_size[1] * sr_task.scale
            small_cams = [size for size in camera_sizes if int(size.split("x")[0]) < sr_w
                          or int(size.split("x")[1]) < sr_h]
            if small_cams:
                scoring_notes.append(
                    f"camera images ({', '.join(small_cams)}) are smaller than the super-resolution output "
                    f"({sr_w}x{sr_h}): its target is the camera image enlarged (bicubic), so the "
                    "super-resolution numbers say little")
        if returned == 0:
            if skips.total:
                reasons = ", ".join(f"{k} x{v}" for k, v in skips.by_reason.items())
                example = skips.examples[0]["detail"] if skips.examples else ""
                raise BagError(f"{reader.path}: no usable frame on {camera.name} ({reasons}): {example}")
            if recorded is not None:
                raise BagError(f"{predictions}: none of the {total} camera frames of {reader.path} came back "
                               "in the recorded outputs")
            raise BagError(f"{reader.path}: no frames on {camera.name}")

        report: Dict[str, Any] = {
            "schema": SCHEMA,
            "mode": "offline" if recorded is None else "recorded",
            "bag": {"path": str(bag), "storage": reader.storage, "image_topic": camera.name,
                    "image_type": camera.msgtype, "camera_info_topic": info_topic,
                    "messages_on_image_topic": camera.count,
                    "camera_sizes": camera_sizes,
                    "ground_truth": {kind: {"topic": topic, "messages": reader.topics[topic].count,
                                            "frames_scored": gt_frames.get(kind, 0),
                                            "unmatched_messages": unmatched.get(topic, 0)}
                                     for kind, topic in present_gt.items()},
                    "ground_truth_missing": sorted(k for k in gt_topics if k not in present_gt)},
            "model": {"name": meta.name, "path": str(model.path) if model is not None else None,
                      "input_size": list(model_size), "color_order": color_order,
                      "tasks": {n: t.kind for n, t in tasks.items()},
                      "providers": list(model.providers) if model is not None else None},
            "scoring": {
                "resolution": f"model input {model_size[0]}x{model_size[1]}: label images resized nearest-neighbour, "
                              "boxes scaled to input pixels (as `mtl-perception evaluate`)",
                "model_input": "camera image resized to the model input as perception_node does (area when shrinking)",
                "detection": ("every top-K output, no score threshold" if recorded is None
                              else "the detections the node published (its score_threshold and max_detections)"),
                "matching": "ground truth matched to camera frames by header stamp "
                            f"(window {options.match_window_s:g} s)",
                "notes": scoring_notes,
            },
            "frames": {"in_bag": camera.count, "considered": len(rows), "evaluated": returned,
                       "skipped": skips.total, "skipped_by_reason": dict(sorted(skips.by_reason.items())),
                       "skipped_examples": skips.examples,
                       "ground_truth_skipped": gt_skips.total,
                       "ground_truth_skipped_by_reason": dict(sorted(gt_skips.by_reason.items())),
                       "ground_truth_skipped_examples": gt_skips.examples,
                       "ground_truth_boxes_of_unknown_classes": dict(sorted(unknown_classes.items()))},
            "tasks": {name: m.compute() for name, m in metrics.items()},
            "baselines": baselines(tasks, semantic_gt, depth_gt),
            "baseline_frames": {"segmentation": len(semantic_gt), "depth": len(depth_gt), "every": baseline_stride},
        }
        if recorded is None:
            report["latency_ms"] = {"model": _stats(model_ms), "frame": _stats(frame_ms)}
        else:
            report["frames"]["not_returned"] = sum(1 for r in rows if r.get("status") == "not_returned")
            report["recorded"] = {"path": str(predictions), "namespace": predictions_namespace,
                                  "messages": dict(sorted(recorded.counts.items())), "orphans": recorded.orphans}
        if extra:
            report.update(extra)
        if output_bag is not None:
            output_bag.close()
            report["output_bag"] = {"path": str(options.output_bag), "storage": output_bag.writer.storage,
                                    "namespace": output_bag.ns or "/"}
            output_bag = None
        report = json_safe(report)
        series = ({"model.run": model_ms, "frame (decode + resize + model.run)": frame_ms} if recorded is None
                  else dict(latency_series or {}))
        report_mod.write_report(out, report, rows, samples, tasks, color_order, series)
        return report
    finally:
        if output_bag is not None:
            output_bag.close()
        if recorded is not None:
            recorded.close()
        reader.close()


# ---------------------------------------------------------------------------------------- CLI
def default_out_dir(bag: os.PathLike | str, what: str) -> str:
    """<bag>_<what> beside the bag (the storage file's stem for a single .db3/.mcap)."""
    p = Path(bag)
    name = p.stem if p.is_file() else p.name
    return str(p.parent / f"{name}_{what}")


def add_arguments(p: Any) -> None:
    p.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap) or a single .db3/.mcap file")
    p.add_argument("--model", required=True, help="exported model (.onnx)")
    p.add_argument("--out", help="report folder (default: <bag>_eval beside the bag)")
    p.add_argument("--image-topic", help="camera topic (default: found automatically)")
    p.add_argument("--gt-segmentation", default=GROUND_TRUTH_TOPICS["segmentation"], help="segmentation label topic")
    p.add_argument("--gt-depth", default=GROUND_TRUTH_TOPICS["depth"], help="depth label topic")
    p.add_argument("--gt-detections", default=GROUND_TRUTH_TOPICS["detections"], help="detection label topic")
    p.add_argument("--predictions", help="score this bag of recorded node outputs instead of running the model")
    p.add_argument("--predictions-namespace", default="/perception", help="namespace of the recorded outputs")
    p.add_argument("--output-bag", help="also write the model outputs to this new bag")
    p.add_argument("--output-storage", choices=("sqlite3", "mcap"),
                   help="storage of --output-bag (default: the input's)")
    p.add_argument("--output-namespace", default="/perception", help="namespace of the topics in --output-bag")
    p.add_argument("--output-resolution", choices=("model", "input"), default="model",
                   help="segmentation/depth size in --output-bag")
    p.add_argument("--score-threshold", type=float, default=0.3, help="detections written to --output-bag")
    p.add_argument("--limit", type=int, help="evaluate only the first N camera frames")
    p.add_argument("--samples", type=int, default=6, help="sample overlays to write")
    p.add_argument("--match-window", type=float, default=1.0, help="seconds a frame waits for its ground truth")
    p.add_argument("--providers", help="comma-separated execution providers (default: best available)")
    p.add_argument("--no-progress", action="store_true")


def main(args: Any) -> int:
    from mtl_perception.inference.model import RuntimeOptions
    from mtl_perception.inference.loader import load_model

    options = EvalOptions(
        image_topic=args.image_topic,
        gt_topics={"segmentation": args.gt_segmentation, "depth": args.gt_depth, "detections": args.gt_detections},
        match_window_s=args.match_window, limit=args.limit, samples=args.samples, output_bag=args.output_bag,
        output_storage=args.output_storage, output_namespace=args.output_namespace,
        output_resolution=args.output_resolution, score_threshold=args.score_threshold,
        progress=not args.no_progress)
    out = args.out or default_out_dir(args.bag, "eval")
    with open_bag(args.bag) as reader:  # a bad bag is reported before the model loads
        find_camera_topic(reader.topics, options.image_topic, exclude=list(options.gt_topics.values()),
                          path=reader.path)
    model = load_model(args.model, RuntimeOptions(providers=args.providers.split(",") if args.providers else None))
    if args.predictions:
        report = evaluate_bag(args.bag, out, metadata=model.metadata, predictions=args.predictions,
                              predictions_namespace=args.predictions_namespace, options=options)
    else:
        report = evaluate_bag(args.bag, out, model, options)
    from mtl_perception.evaluation.report import summary_lines

    print("\n".join(summary_lines(report)))
    print(f"report: {out}/summary.md, {out}/metrics.json")
    return 0


__all__ = ["EvalOptions", "evaluate_bag", "join_frames", "raw_stamp", "outputs_from_messages", "RecordedOutputs",
           "OutputBag", "json_safe", "SCHEMA", "add_arguments", "main"]
