"""The task kinds the runtime serves, by name, and what the node, bags, tools and evaluation ask
of them for a model's tasks (topics, messages to build, metrics, baselines, decoding).

To add a kind: one module beside this one defining a `Kind` subclass and `KIND`, listed in
`_MODULES`, and its output roles in `contract.TASK_KINDS`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from mtl_perception.inference.preprocess import FrameMapping, ModelInput
from mtl_perception.kinds import depth, detection, segmentation, super_resolution
from mtl_perception.kinds.base import Kind, Payload, RenderSettings, Topic

__all__ = ["KINDS", "kind", "topics", "topics_for", "all_detections", "metric_for", "make_metrics", "score_frame",
           "baselines", "frame_scalars", "render", "latched", "decode", "Scoring"]

_MODULES = (segmentation, depth, detection, super_resolution)
KINDS: Dict[str, Kind] = {module.KIND.name: module.KIND for module in _MODULES}


def kind(name: str) -> Kind:
    """The kind called `name` (as in the model metadata); ValueError naming the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown task kind {name!r}; expected one of {sorted(KINDS)}") from None


def topics(kinds: Optional[Iterable[str]] = None, *, per_frame: Optional[bool] = None,
           recorded: bool = False, live: bool = False) -> List[Topic]:
    """Output topics of `kinds` (default: every kind), in registry order; `per_frame` filters on
    the flag, `recorded` keeps what a recorder takes (per-frame topics that are not on demand),
    `live` adds the topics only the live node publishes (`Topic.live_only`)."""
    wanted = set(KINDS) if kinds is None else {kind(k).name for k in kinds}
    out = []
    for k in KINDS.values():
        if k.name not in wanted:
            continue
        for t in k.topics:
            if per_frame is not None and t.per_frame != per_frame:
                continue
            if recorded and (not t.per_frame or t.on_demand):
                continue
            if t.live_only and not live:
                continue
            out.append(t)
    return out


def topics_for(tasks: Mapping[str, Any], **filters: Any) -> List[Topic]:
    """`topics` of the kinds of a model's tasks (`ModelMetadata.tasks`)."""
    return topics({t.kind for t in tasks.values()}, **filters)


def all_detections(tasks: Mapping[str, Any]) -> int:
    """A `max_detections` that keeps every output of the model's detection task (its top_k; the
    default without one): how bag tools publish detections unthresholded."""
    return max(1, next((t.top_k for t in tasks.values() if t.kind == "detection"), RenderSettings.max_detections))


def metric_for(task: Any) -> Any:
    """A fresh metric for one task (`contract.TaskSpec`)."""
    return kind(task.kind).metric(task)


def make_metrics(tasks: Mapping[str, Any]) -> Dict[str, Any]:
    """One fresh metric per task name."""
    return {name: metric_for(task) for name, task in tasks.items()}


def score_frame(tasks: Mapping[str, Any], outputs: Mapping[str, Mapping[str, np.ndarray]],
                target: Mapping[str, Any], color_order: str = "rgb") -> Dict[str, Any]:
    """Scores one frame's model outputs against its labels, all at the model's input resolution.

    `outputs` is `PerceptionModel.run`'s result (or outputs decoded from recorded messages into
    the same form). `target` holds what the frame has: "semantic" (HxW class ids), "depth" (HxW
    metres, NaN invalid), "boxes" + "labels" (xyxy input pixels, 0-based), "hr_image" (the
    super-resolution target, RGB) and "image" (the model input, RGB: the bicubic baseline's
    low-resolution image). A missing or None key means "no label of that kind for this frame"
    and leaves that task out; an empty box list means "labelled, no objects".

    A "labelled_tasks" key (the sample's label kinds) leaves out the kinds it does not list.

    Returns fresh metrics holding this frame only; merge them into running totals with `merge`.
    """
    target = without_unlabelled(target)
    frame: Dict[str, Any] = {}
    for name, task in tasks.items():
        if name not in outputs:
            continue
        m = metric_for(task)
        if kind(task.kind).score(m, outputs[name], target, color_order):
            frame[name] = m
    return frame


def without_unlabelled(target: Mapping[str, Any]) -> Mapping[str, Any]:
    """`target` with the labels of the kinds outside its "labelled_tasks" (when it has that key:
    a sample's label kinds) set to None, so scoring and the baselines leave them out: an image
    without box labels is not an image without objects."""
    if target.get("labelled_tasks") is None:
        return target
    keep = set(target["labelled_tasks"])
    out = dict(target)
    for k in KINDS.values():
        if k.name not in keep and k.label:
            out[k.label] = None
    return out


def baselines(tasks: Mapping[str, Any], labels: Mapping[str, Sequence[np.ndarray]]) -> Dict[str, Dict[str, Any]]:
    """Each task's trivial predictor scored like the model, on the labels collected by target
    key (`Kind.label`): e.g. the majority class, the median depth, no detections, bicubic."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, task in tasks.items():
        k = kind(task.kind)
        result = k.baseline(task, labels.get(k.label, []) if k.label else [])
        if result is not None:
            out[name] = result
    return out


def frame_scalars(tasks: Mapping[str, Any], frame_metrics: Mapping[str, Any], outputs: Mapping[str, Any],
                  target: Mapping[str, Any]) -> Dict[str, float]:
    """Per-frame values ("task/metric") for the metrics-over-time plot and frames.csv."""
    row: Dict[str, float] = {}
    for name, m in frame_metrics.items():
        k = kind(tasks[name].kind)
        values = m.compute()
        for key in k.frame_keys:
            row[f"{name}/{key}"] = float(values[key])
        for key, value in k.frame_extras(outputs[name], target).items():
            row[f"{name}/{key}"] = value
    return row


def render(tasks: Mapping[str, Any], outputs: Mapping[str, Mapping[str, np.ndarray]], frame: ModelInput,
           settings: RenderSettings, wanted: Optional[Callable[[str], bool]] = None) -> Dict[str, Payload]:
    """Message builders' inputs, by relative topic, of one frame's outputs (tasks without outputs
    skipped); `wanted` defaults to every topic but the live-only ones."""
    if wanted is None:
        wanted = _not_live_only
    out: Dict[str, Payload] = {}
    for name, task in tasks.items():
        if name in outputs:
            out.update(kind(task.kind).render(task, outputs[name], frame, settings, wanted))
    return out


def _not_live_only(topic: str) -> bool:
    return topic not in _LIVE_ONLY


_LIVE_ONLY = frozenset(t.name for k in KINDS.values() for t in k.topics if t.live_only)


def latched(tasks: Mapping[str, Any], settings: RenderSettings) -> Dict[str, Payload]:
    """Builders' inputs of the topics published once (e.g. label_info)."""
    out: Dict[str, Payload] = {}
    for task in tasks.values():
        out.update(kind(task.kind).latched(task, settings))
    return out


def decode(tasks: Mapping[str, Any], msgs: Mapping[str, Any], mapping: FrameMapping,
           color_order: str = "rgb") -> Dict[str, Dict[str, np.ndarray]]:
    """Node output messages (by relative topic) -> `PerceptionModel.run`-shaped outputs at the
    model's resolution, for the tasks whose topic is present."""
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for name, task in tasks.items():
        decoded = kind(task.kind).decode(task, msgs, mapping, color_order)
        if decoded is not None:
            out[name] = decoded
    return out


class Scoring:
    """Running metrics of a model's tasks over many frames, with the labels its baselines need:
    what dataset and bag evaluation hand to the generic evaluation code."""

    def __init__(self, tasks: Mapping[str, Any], color_order: str = "rgb"):
        self.tasks, self.color_order = tasks, color_order
        self.metrics = make_metrics(tasks)
        self.labels: Dict[str, List[np.ndarray]] = {k.label: [] for k in KINDS.values() if k.baseline_label}

    @classmethod
    def of(cls, metadata: Any) -> "Scoring":
        """Scoring of every task of a model (`ModelMetadata`)."""
        return cls(metadata.tasks, metadata.input.color_order)

    def add(self, outputs: Mapping[str, Mapping[str, np.ndarray]], target: Mapping[str, Any],
            keep_labels: bool = True) -> Dict[str, Any]:
        """Scores one frame into the totals; returns the frame's own metrics. `keep_labels`: keep
        its labels for the baselines."""
        target = without_unlabelled(target)
        frame = score_frame(self.tasks, outputs, target, self.color_order)
        for name, m in frame.items():
            self.metrics[name].merge(m)
        if keep_labels:
            for key, kept in self.labels.items():
                if target.get(key) is not None:
                    kept.append(target[key])
        return frame

    def results(self) -> Dict[str, Dict[str, Any]]:
        return {name: m.compute() for name, m in self.metrics.items()}

    def baselines(self) -> Dict[str, Dict[str, Any]]:
        return baselines(self.tasks, self.labels)

    def label_counts(self) -> Dict[str, int]:
        """Frames whose labels the baselines use, by kind."""
        return {k.name: len(self.labels[k.label]) for k in KINDS.values() if k.baseline_label}
