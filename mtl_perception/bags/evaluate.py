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
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

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
from mtl_perception.evaluation import report as report_mod
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import RuntimeOptions
from mtl_perception.inference.preprocess import (
    FrameMapping,
    ModelInput,
    model_input,
)
from mtl_perception.kinds import registry
from mtl_perception.kinds.base import (
    DetectionsOut,
    ImageOut,
    Payload,
    RenderSettings,
    ScaledCameraInfo,
)
from mtl_perception.messages.image import ImageConversionError, image_to_array
from mtl_perception.messages.outputs import class_ids, mapped_camera_info
from mtl_perception.messages.stamps import raw_stamp

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
    output_resolution: str = RenderSettings.output_resolution  # 'model' or 'input': segmentation/depth size
    score_threshold: float = RenderSettings.score_threshold  # detections written to the output bag (metrics use all)
    progress: bool = False


# ---------------------------------------------------------------------------- frame matching
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
                  mapping: FrameMapping, problems: Callable[[str, str], None],
                  unknown_classes: Dict[str, int]) -> Dict[str, Any]:
    """Ground truth of one frame at the model's resolution: "semantic", "depth", "boxes" +
    "labels"; a label that is absent or unusable is left out (and reported to `problems`);
    labelled boxes of classes the model lacks are left out and counted in `unknown_classes`."""
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
            target["semantic"] = mapping.dense_to_model(labels, task.ignore_index)
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
            target["depth"] = mapping.dense_to_model(depth, np.nan)
        except (ImageConversionError, MessageError) as exc:
            problems("depth", str(exc))
    det = entries.get("detections")
    if det is not None and "detection" in kinds:
        try:
            msg = store_deser(det)
            boxes, _, labels, unknown = detections_from_msg(msg, kinds["detection"].class_names)
            for name in unknown:
                unknown_classes[name] = unknown_classes.get(name, 0) + 1
            target["boxes"], target["labels"] = mapping.labelled_boxes_to_model(boxes, labels)
        except (MessageError, AttributeError, TypeError) as exc:
            problems("detections", f"malformed Detection2DArray: {exc}")
    return target


# ------------------------------------------------------------------------------ predictions
class RecordedOutputs:
    """Reads a bag of node outputs (under `namespace`) in step with the camera frames: `take(stamp)`
    returns the messages of that stamp by relative topic. Outputs are expected in about stamp
    order (as a node publishes them); a look-ahead absorbs small reorderings between topics."""

    LOOKAHEAD = 64

    def __init__(self, path: os.PathLike | str, namespace: str):
        self.reader = open_bag(path)
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.topics = {f"{ns}/{rel}": rel for rel in OUTPUT_TOPICS}
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
    messages: both build them from `kinds.registry.render`), with each input frame's header and
    log time."""

    def __init__(self, path: str, storage: str, namespace: str, tasks: Mapping, settings: RenderSettings):
        self.writer = BagWriter(path, storage)
        self.ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.tasks, self.settings = tasks, settings
        self.msgtypes = {t.name: t.msgtype for t in registry.topics_for(tasks)}
        self.camera_info: Optional[Any] = None

    def topic(self, rel: str) -> str:
        return f"{self.ns}/{rel}"

    def write(self, header: Any, log_ns: int, outputs: Mapping, frame: ModelInput) -> None:
        for rel, payload in registry.render(self.tasks, outputs, frame, self.settings).items():
            msg = self._message(payload, header)
            if msg is not None:
                self.writer.write(self.topic(rel), log_ns, msg, self.msgtypes[rel])

    def _message(self, payload: Payload, header: Any) -> Any:
        """The rosbags message a kind's builder input stands for (None: cannot be built)."""
        store = self.writer.store
        if isinstance(payload, ImageOut):
            return image_msg(payload.array, payload.encoding, header, store)
        if isinstance(payload, DetectionsOut):
            dets = payload.detections
            return detections_msg(header, dets.boxes, dets.scores.tolist(), class_ids(dets, payload.class_names),
                                  store)
        if isinstance(payload, ScaledCameraInfo):
            if self.camera_info is None:
                return None
            return mapped_camera_info(self.camera_info, header, payload.mapping)
        raise TypeError(f"unknown output payload {type(payload).__name__}")

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


# ------------------------------------------------------------------------------------- the run
@dataclass
class _Inputs:
    """What the bag offers the evaluation: its camera topic, the ground truth present, camera_info."""

    camera: Any  # TopicInfo
    gt_topics: Dict[str, str]  # requested, by GT kind
    present_gt: Dict[str, str]  # those in the bag
    info_topic: Optional[str]
    total: int  # camera frames considered


def _find_inputs(reader: BagReader, options: EvalOptions) -> _Inputs:
    """The topics to read, checked against the bag (BagError naming a ground-truth topic of the wrong type)."""
    gt_topics = {k: v for k, v in options.gt_topics.items() if v}
    camera = find_camera_topic(reader.topics, options.image_topic, exclude=list(gt_topics.values()),
                               path=reader.path)
    present_gt: Dict[str, str] = {}
    for kind, topic in gt_topics.items():
        info = reader.topics.get(topic)
        if info is None:
            continue
        if info.msgtype != GT_TYPES[kind]:
            raise BagError(f"{reader.path}: ground-truth topic {topic} is {info.msgtype}, expected {GT_TYPES[kind]}")
        present_gt[kind] = topic
    info_topic = options.camera_info_topic or camera_info_topic_for(camera.name)
    if reader.topics.get(info_topic) is None or reader.topics[info_topic].msgtype != CAMERA_INFO:
        info_topic = None
    total = camera.count if options.limit is None else min(camera.count, options.limit)
    return _Inputs(camera, gt_topics, present_gt, info_topic, total)


class _BagRun:
    """One pass over the bag's camera frames: outputs (from the model or the recorded bag),
    ground truth, scores, per-frame rows, sample frames and the optional output bag."""

    def __init__(self, reader: BagReader, inputs: _Inputs, meta: Any, options: EvalOptions, model: Any,
                 recorded: Optional[RecordedOutputs], row_extra: Optional[Callable[[Optional[int]], Dict[str, Any]]]):
        self.reader, self.inputs, self.meta, self.options = reader, inputs, meta, options
        self.model, self.recorded, self.row_extra = model, recorded, row_extra
        self.tasks = meta.tasks
        self.color_order = meta.input.color_order
        self.model_size = (meta.input.width, meta.input.height)
        self.resize = meta.input.resize
        self.sr_task = next((t for t in self.tasks.values() if t.kind == "super_resolution"), None)
        self.scoring = registry.Scoring(self.tasks, self.color_order)
        self.skips, self.gt_skips = _Skips(), _Skips()
        self.unmatched: Dict[str, int] = {}
        self.unknown_classes: Dict[str, int] = {}
        self.gt_frames = {kind: 0 for kind in inputs.present_gt}
        self.topic_kind = {topic: kind for kind, topic in inputs.present_gt.items()}
        self.rows: List[Dict[str, Any]] = []
        self.model_ms: List[float] = []
        self.frame_ms: List[float] = []
        self.baseline_stride = max(1, math.ceil(inputs.total / BASELINE_FRAMES))
        self.sample_at = (sorted(set(np.linspace(0, max(inputs.total - 1, 0), options.samples).round()
                                     .astype(int).tolist())) if options.samples > 0 else [])
        self.samples: List[Dict[str, Any]] = []
        self.camera_sizes: Dict[str, int] = {}
        self.first_stamp: Optional[int] = None
        self.returned = 0
        self.output_bag: Optional[OutputBag] = None

    def open_output_bag(self) -> None:
        o = self.options
        settings = RenderSettings(output_resolution=o.output_resolution, score_threshold=o.score_threshold,
                                  max_detections=registry.all_detections(self.tasks), color_order=self.color_order)
        self.output_bag = OutputBag(o.output_bag, o.output_storage or self.reader.storage or "sqlite3",
                                    o.output_namespace, self.tasks, settings)

    def run(self) -> None:
        inputs = self.inputs
        others = list(inputs.present_gt.values()) + ([inputs.info_topic] if inputs.info_topic else [])
        frames = join_frames(self.reader, inputs.camera.name, others, int(self.options.match_window_s * 1e9),
                             self.unmatched)
        progress = None
        if self.options.progress:
            from tqdm import tqdm

            progress = tqdm(total=inputs.total, desc="eval-bag", leave=False)
        for frame in frames:
            if frame.index >= inputs.total:
                break
            if progress is not None:
                progress.update(1)
            self.frame(frame)
        if progress is not None:
            progress.close()

    def _deser(self, entry: Entry) -> Any:
        return self.reader.deserialize(entry.raw, entry.msgtype)

    def _skip(self, frame: BagFrameData, status: str, detail: Optional[str] = None) -> None:
        if detail is not None:
            self.skips.add(status, detail, frame=frame.index, stamp_ns=frame.stamp)
        self.rows.append({"frame": frame.index, "stamp_ns": frame.stamp, "status": status})

    def frame(self, frame: BagFrameData) -> None:
        """Evaluates one camera frame (or counts why it cannot be)."""
        start = time.perf_counter()
        try:
            msg = self._deser(frame.image)
            rgb = camera_image(msg, frame.image.msgtype, "rgb")
        except (ImageConversionError, MessageError) as exc:
            self._skip(frame, _skip_reason(exc), str(exc))
            return
        cam_h, cam_w = rgb.shape[:2]
        self.camera_sizes[f"{cam_w}x{cam_h}"] = self.camera_sizes.get(f"{cam_w}x{cam_h}", 0) + 1
        prepared = model_input(rgb, "rgb8", self.model_size, self.color_order, self.resize)
        outputs = self._outputs(frame, prepared, start)
        if outputs is None:
            return
        self.returned += 1
        if self.first_stamp is None and frame.stamp is not None:
            self.first_stamp = frame.stamp
        target = self._target(frame, prepared)
        frame_metrics = self.scoring.add(outputs, target, keep_labels=frame.index % self.baseline_stride == 0)
        self._add_row(frame, frame_metrics, outputs, target)
        if self.sample_at and frame.index >= self.sample_at[0]:
            while self.sample_at and frame.index >= self.sample_at[0]:
                self.sample_at.pop(0)
            self.samples.append({"frame": frame.index, "stamp_ns": frame.stamp, "camera": rgb,
                                 "small": prepared.resized, "outputs": outputs, "target": target})
        if self.output_bag is not None:
            info_topic = self.inputs.info_topic
            if info_topic and info_topic in frame.others:
                try:
                    self.output_bag.camera_info = self._deser(frame.others[info_topic])
                except MessageError:
                    pass
            self.output_bag.write(msg.header, frame.image.log_ns, outputs, prepared)

    def _outputs(self, frame: BagFrameData, prepared: ModelInput, start: float) -> Optional[Dict[str, Any]]:
        """The frame's outputs: the model run on it (timed), or the recorded ones decoded."""
        if self.recorded is None:
            before = time.perf_counter()
            outputs = self.model.run(prepared.image)
            self.model_ms.append((time.perf_counter() - before) * 1e3)
            self.frame_ms.append((time.perf_counter() - start) * 1e3)
            return outputs
        msgs = self.recorded.take(frame.stamp)
        if not msgs:
            self._skip(frame, "not_returned")
            return None
        try:
            return registry.decode(self.tasks, msgs, prepared.mapping, self.color_order)
        except (ImageConversionError, ValueError) as exc:
            self._skip(frame, "unusable_output", str(exc))
            return None

    def _target(self, frame: BagFrameData, prepared: ModelInput) -> Dict[str, Any]:
        """The frame's ground truth at the model's resolution, with the model input and SR target."""
        gt_entries = {self.topic_kind[t]: e for t, e in frame.others.items() if t in self.topic_kind}

        def problem(kind: str, detail: str) -> None:
            self.gt_skips.add(kind, detail, frame=frame.index, stamp_ns=frame.stamp)

        target = _label_target(self._deser, gt_entries, self.tasks, prepared.mapping, problem,
                               self.unknown_classes)
        target["image"] = prepared.resized
        if self.sr_task is not None:
            target["hr_image"] = prepared.mapping.scaled(self.sr_task.scale).image_to_model(prepared.camera)
        for kind, key in (("segmentation", "semantic"), ("depth", "depth"), ("detections", "boxes")):
            if key in target:
                self.gt_frames[kind] = self.gt_frames.get(kind, 0) + 1
        return target

    def _add_row(self, frame: BagFrameData, frame_metrics: Mapping[str, Any], outputs: Mapping,
                 target: Mapping) -> None:
        row = {"frame": frame.index, "stamp_ns": frame.stamp, "status": "ok",
               "time_s": (frame.stamp - self.first_stamp) / 1e9 if frame.stamp is not None else None}
        if self.recorded is None:
            row["model_ms"] = self.model_ms[-1]
            row["frame_ms"] = self.frame_ms[-1]
        elif self.row_extra is not None:
            row.update(self.row_extra(frame.stamp))
        row.update(registry.frame_scalars(self.tasks, frame_metrics, outputs, target))
        self.rows.append(row)

    def scoring_notes(self) -> List[str]:
        """Caveats of this run's numbers (a camera smaller than the SR output)."""
        if self.sr_task is None:
            return []
        sr_w, sr_h = self.model_size[0] * self.sr_task.scale, self.model_size[1] * self.sr_task.scale
        small_cams = [size for size in self.camera_sizes
                      if int(size.split("x")[0]) < sr_w or int(size.split("x")[1]) < sr_h]
        if not small_cams:
            return []
        return [f"camera images ({', '.join(small_cams)}) are smaller than the super-resolution output "
                f"({sr_w}x{sr_h}): its target is the camera image enlarged (bicubic), so the "
                "super-resolution numbers say little"]

    def check_returned(self, predictions: Any) -> None:
        """BagError when not one frame could be evaluated, saying why."""
        if self.returned:
            return
        camera, path = self.inputs.camera, self.reader.path
        if self.skips.total:
            reasons = ", ".join(f"{k} x{v}" for k, v in self.skips.by_reason.items())
            example = self.skips.examples[0]["detail"] if self.skips.examples else ""
            raise BagError(f"{path}: no usable frame on {camera.name} ({reasons}): {example}")
        if self.recorded is not None:
            raise BagError(f"{predictions}: none of the {self.inputs.total} camera frames of {path} came back "
                           "in the recorded outputs")
        raise BagError(f"{path}: no frames on {camera.name}")


def _bag_section(bag: Any, reader: BagReader, run: _BagRun) -> Dict[str, Any]:
    inputs = run.inputs
    camera = inputs.camera
    return {"path": str(bag), "storage": reader.storage, "image_topic": camera.name,
            "image_type": camera.msgtype, "camera_info_topic": inputs.info_topic,
            "messages_on_image_topic": camera.count,
            "camera_sizes": run.camera_sizes,
            "ground_truth": {kind: {"topic": topic, "messages": reader.topics[topic].count,
                                    "frames_scored": run.gt_frames.get(kind, 0),
                                    "unmatched_messages": run.unmatched.get(topic, 0)}
                             for kind, topic in inputs.present_gt.items()},
            "ground_truth_missing": sorted(k for k in inputs.gt_topics if k not in inputs.present_gt)}


def _frames_section(run: _BagRun) -> Dict[str, Any]:
    skips, gt_skips = run.skips, run.gt_skips
    return {"in_bag": run.inputs.camera.count, "considered": len(run.rows), "evaluated": run.returned,
            "skipped": skips.total, "skipped_by_reason": dict(sorted(skips.by_reason.items())),
            "skipped_examples": skips.examples,
            "ground_truth_skipped": gt_skips.total,
            "ground_truth_skipped_by_reason": dict(sorted(gt_skips.by_reason.items())),
            "ground_truth_skipped_examples": gt_skips.examples,
            "ground_truth_boxes_of_unknown_classes": dict(sorted(run.unknown_classes.items()))}


def _report(bag: Any, reader: BagReader, run: _BagRun, options: EvalOptions) -> Dict[str, Any]:
    """The report of a finished run (before the optional sections of the caller)."""
    meta, model, recorded = run.meta, run.model, run.recorded
    model_size = run.model_size
    report: Dict[str, Any] = {
        "schema": SCHEMA,
        "mode": "offline" if recorded is None else "recorded",
        "bag": _bag_section(bag, reader, run),
        "model": {"name": meta.name, "path": str(model.path) if model is not None else None,
                  "input_size": list(model_size), "color_order": run.color_order, "resize": run.resize,
                  "tasks": {n: t.kind for n, t in run.tasks.items()},
                  "providers": list(model.providers) if model is not None else None},
        "scoring": {
            "resolution": f"model input {model_size[0]}x{model_size[1]}: label images resized nearest-neighbour, "
                          "boxes mapped to input pixels by the model's resize mode (as `mtl-perception evaluate`)",
            "model_input": f"camera image resized to the model input as perception_node does ({run.resize}; area "
                           "when shrinking)",
            "detection": ("every top-K output, no score threshold" if recorded is None
                          else "the detections the node published (its score_threshold and max_detections)"),
            "matching": "ground truth matched to camera frames by header stamp "
                        f"(window {options.match_window_s:g} s)",
            "notes": run.scoring_notes(),
            "headline": {name: list(registry.kind(t.kind).headline) for name, t in run.tasks.items()},
        },
        "frames": _frames_section(run),
        "tasks": run.scoring.results(),
        "baselines": run.scoring.baselines(),
        "baseline_frames": {**run.scoring.label_counts(), "every": run.baseline_stride},
    }
    if recorded is None:
        report["latency_ms"] = {"model": _stats(run.model_ms), "frame": _stats(run.frame_ms)}
    else:
        report["frames"]["not_returned"] = sum(1 for r in run.rows if r.get("status") == "not_returned")
    return report


def evaluate_bag(bag: os.PathLike | str, out_dir: os.PathLike | str, model: Any = None,
                 options: Optional[EvalOptions] = None, *, metadata: Any = None,
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
    options = options or EvalOptions()
    if (model is None) == (predictions is None):
        raise ValueError("give either a model or recorded predictions")
    meta = model.metadata if model is not None else metadata
    if meta is None:
        raise ValueError("scoring recorded predictions needs the model's metadata")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reader = open_bag(bag)
    recorded = RecordedOutputs(predictions, predictions_namespace) if predictions is not None else None
    run: Optional[_BagRun] = None
    try:
        run = _BagRun(reader, _find_inputs(reader, options), meta, options, model, recorded, row_extra)
        if options.output_bag:
            run.open_output_bag()
        run.run()
        run.check_returned(predictions)
        report = _report(bag, reader, run, options)
        if recorded is not None:
            report["recorded"] = {"path": str(predictions), "namespace": predictions_namespace,
                                  "messages": dict(sorted(recorded.counts.items())), "orphans": recorded.orphans}
        if extra:
            report.update(extra)
        if run.output_bag is not None:
            run.output_bag.close()
            report["output_bag"] = {"path": str(options.output_bag), "storage": run.output_bag.writer.storage,
                                    "namespace": run.output_bag.ns or "/"}
            run.output_bag = None
        report = json_safe(report)
        series = ({"model.run": run.model_ms, "frame (decode + resize + model.run)": run.frame_ms}
                  if recorded is None else dict(latency_series or {}))
        report_mod.write_report(out, report, run.rows, run.samples, meta.tasks, run.color_order, series)
        return report
    finally:
        if run is not None and run.output_bag is not None:
            run.output_bag.close()
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
    p.add_argument("--output-resolution", choices=("model", "input"), default=RenderSettings.output_resolution,
                   help="segmentation/depth size in --output-bag")
    p.add_argument("--score-threshold", type=float, default=RenderSettings.score_threshold,
                   help="detections written to --output-bag")
    p.add_argument("--limit", type=int, help="evaluate only the first N camera frames")
    p.add_argument("--samples", type=int, default=6, help="sample overlays to write")
    p.add_argument("--match-window", type=float, default=1.0, help="seconds a frame waits for its ground truth")
    p.add_argument("--providers", help="comma-separated execution providers (default: best available)")
    p.add_argument("--no-progress", action="store_true")


def main(args: Any) -> int:
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
    print("\n".join(report_mod.summary_lines(report)))
    print(f"report: {out}/summary.md, {out}/metrics.json")
    return 0


__all__ = ["EvalOptions", "evaluate_bag", "join_frames", "RecordedOutputs", "OutputBag", "json_safe",
           "SCHEMA", "add_arguments", "main"]
