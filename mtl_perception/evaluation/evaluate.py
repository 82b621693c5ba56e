"""Score an exported model on a dataset folder (torch-free), beside trivial baselines.

The same metrics as training validation, at the model's resolution (labels resampled
nearest-neighbour to the input size, as in training). Baselines show what "trivial" means on
this data: the majority class everywhere, the median depth everywhere, bicubic upsampling for
super-resolution, and no detections (mAP 0).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional

import numpy as np

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.evaluation.metrics import make_metric
from mtl_perception.inference.model import PerceptionModel
from mtl_perception.inference.preprocess import resize_sample


def metric_for(task) -> object:
    """A fresh metric for one task of a model's metadata (`TaskSpec`)."""
    if task.kind == "segmentation":
        return make_metric("segmentation", num_classes=len(task.class_names), ignore_index=task.ignore_index,
                           class_names=task.class_names)
    if task.kind == "depth":
        return make_metric("depth", min_depth=task.min_depth, max_depth=task.max_depth)
    if task.kind == "detection":
        return make_metric("detection", class_names=task.class_names)
    return make_metric("super_resolution")


def make_metrics(tasks: Mapping) -> Dict[str, object]:
    """One fresh metric per task name."""
    return {name: metric_for(task) for name, task in tasks.items()}


def scalars(result: Dict) -> Dict[str, float]:
    """The float entries of a metric's `compute()` (per-class breakdowns left out)."""
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}



def score_frame(tasks: Mapping, outputs: Mapping[str, Mapping[str, np.ndarray]], target: Mapping[str, Any],
                color_order: str = "rgb") -> Dict[str, object]:
    """Scores one frame's model outputs against its labels, all at the model's input resolution.

    `outputs` is `PerceptionModel.run`'s result (or outputs decoded from recorded messages into
    the same form). `target` holds what the frame has: "semantic" (HxW class ids), "depth" (HxW
    metres, NaN invalid), "boxes" + "labels" (xyxy input pixels, 0-based), "hr_image" (the
    super-resolution target, RGB) and "image" (the model input, RGB: the bicubic baseline's
    low-resolution image). A key that is missing or None means "no label of that kind for this
    frame" and leaves that task out; an empty box list means "labelled, no objects".

    Returns fresh metrics holding this frame only (`compute()` gives the frame's values); merge
    them into running totals with `merge`.
    """
    frame: Dict[str, object] = {}
    for name, task in tasks.items():
        if name not in outputs:
            continue
        o = outputs[name]
        if task.kind == "segmentation":
            if target.get("semantic") is None:
                continue
            m = metric_for(task)
            m.update(o["class_map"], target["semantic"])
        elif task.kind == "depth":
            if target.get("depth") is None:
                continue
            m = metric_for(task)
            m.update(o["depth"], target["depth"])
        elif task.kind == "detection":
            if target.get("boxes") is None or target.get("labels") is None:
                continue
            m = metric_for(task)
            m.update(o["boxes"], o["scores"], o["classes"], target["boxes"], target["labels"])
        else:
            if target.get("hr_image") is None:
                continue
            m = metric_for(task)
            sr = o["image"] if color_order == "rgb" else o["image"][..., ::-1]
            m.update(sr, target["hr_image"], lowres=target.get("image"))
        frame[name] = m
    return frame


def without_unlabelled(target: Dict[str, Any], labelled_tasks) -> Dict[str, Any]:
    """``target`` with the labels of task kinds outside ``labelled_tasks`` set to None, so that
    `score_frame` leaves them out (a dataset reader's sample without box labels is not a frame
    without objects). ``labelled_tasks`` None (the project's own format) keeps everything."""
    if labelled_tasks is None:
        return target
    keys = {"segmentation": ("semantic",), "depth": ("depth",), "detection": ("boxes", "labels")}
    return {**target, **{k: None for kind, ks in keys.items() if kind not in labelled_tasks for k in ks}}


def evaluate_dataset(model: PerceptionModel, dataset: MultiTaskDataset, limit: Optional[int] = None,
                     progress: bool = True) -> Dict:
    tasks = model.metadata.tasks
    width, height = model.input_size
    color_order = model.metadata.input.color_order
    sr_scale = next((t.scale for t in tasks.values() if t.kind == "super_resolution"), 1)
    metrics = make_metrics(tasks)
    semantic_gt, depth_gt = [], []
    latencies = []
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="evaluate", leave=False)
    for index in indices:
        raw = dataset.load(index)
        sample = without_unlabelled(resize_sample(raw, (width, height), sr_scale), getattr(raw, "labelled_tasks", None))
        image = sample["image"] if color_order == "rgb" else sample["image"][..., ::-1].copy()
        start = time.perf_counter()
        out = model.run(image)
        latencies.append((time.perf_counter() - start) * 1e3)
        for name, frame_metric in score_frame(tasks, out, sample, color_order).items():
            metrics[name].merge(frame_metric)
        if sample["semantic"] is not None:
            semantic_gt.append(sample["semantic"])
        if sample["depth"] is not None:
            depth_gt.append(sample["depth"])
    report = {
        "model": str(model.path), "frames": len(latencies), "providers": model.providers,
        "tasks": {name: scalars(m.compute()) for name, m in metrics.items()},
        "baselines": baselines(tasks, semantic_gt, depth_gt),
        "latency_ms": {"mean": float(np.mean(latencies)), "p50": float(np.percentile(latencies, 50)),
                       "p95": float(np.percentile(latencies, 95))},
    }
    return report


def baselines(tasks, semantic_gt, depth_gt) -> Dict[str, Dict[str, float]]:
    """Trivial predictors scored like the model: the majority class everywhere, the median valid depth
    everywhere (both over the given labels), no detections, bicubic upsampling."""
    out: Dict[str, Dict[str, float]] = {}
    for name, task in tasks.items():
        if task.kind == "segmentation" and semantic_gt:
            labels = np.stack(semantic_gt)
            counts = np.bincount(labels[labels != task.ignore_index].ravel(), minlength=len(task.class_names))
            metric = metric_for(task)
            for gt in semantic_gt:
                metric.update(np.full_like(gt, int(np.argmax(counts))), gt)
            out[name] = {"name": f"majority class ({task.class_names[int(np.argmax(counts))]})",
                         **scalars(metric.compute())}
        elif task.kind == "depth" and depth_gt:
            values = np.stack(depth_gt)
            valid = np.isfinite(values) & (values > task.min_depth) & (values <= task.max_depth)
            median = float(np.median(values[valid])) if valid.any() else task.max_depth
            metric = metric_for(task)
            for gt in depth_gt:
                metric.update(np.full(gt.shape, median, np.float32), gt)
            out[name] = {"name": f"constant median depth ({median:.1f} m)", **scalars(metric.compute())}
        elif task.kind == "detection":
            out[name] = {"name": "no detections", "map50": 0.0, "map50_95": 0.0}
        elif task.kind == "super_resolution":
            out[name] = {"name": "bicubic upsampling (psnr_bicubic above)"}
    return out
