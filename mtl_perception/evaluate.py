"""Score an exported model on a dataset folder (torch-free), beside trivial baselines.

The same metrics as training validation, at the model's resolution (labels resampled
nearest-neighbour to the input size, as in training). Baselines show what "trivial" means on
this data: the majority class everywhere, the median depth everywhere, bicubic upsampling for
super-resolution, and no detections (mAP 0).
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

from .dataset import MultiTaskDataset
from .metrics import make_metric
from .model import PerceptionModel
from .preprocess import resize_sample


def _metric_for(task) -> object:
    if task.kind == "segmentation":
        return make_metric("segmentation", num_classes=len(task.class_names), ignore_index=task.ignore_index,
                           class_names=task.class_names)
    if task.kind == "depth":
        return make_metric("depth", min_depth=task.min_depth, max_depth=task.max_depth)
    if task.kind == "detection":
        return make_metric("detection", class_names=task.class_names)
    return make_metric("super_resolution")


def _scalars(result: Dict) -> Dict[str, float]:
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}


def evaluate_dataset(model: PerceptionModel, dataset: MultiTaskDataset, limit: Optional[int] = None,
                     progress: bool = True) -> Dict:
    tasks = model.metadata.tasks
    width, height = model.input_size
    sr_scale = next((t.scale for t in tasks.values() if t.kind == "super_resolution"), 1)
    metrics = {name: _metric_for(task) for name, task in tasks.items()}
    semantic_gt, depth_gt = [], []
    latencies = []
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="evaluate", leave=False)
    for index in indices:
        sample = resize_sample(dataset.load(index), (width, height), sr_scale)
        image = sample["image"] if model.metadata.input.color_order == "rgb" else sample["image"][..., ::-1].copy()
        start = time.perf_counter()
        out = model.run(image)
        latencies.append((time.perf_counter() - start) * 1e3)
        for name, task in tasks.items():
            o, m = out[name], metrics[name]
            if task.kind == "segmentation":
                m.update(o["class_map"], sample["semantic"])
                semantic_gt.append(sample["semantic"])
            elif task.kind == "depth":
                m.update(o["depth"], sample["depth"])
                depth_gt.append(sample["depth"])
            elif task.kind == "detection":
                m.update(o["boxes"], o["scores"], o["classes"], sample["boxes"], sample["labels"])
            else:
                sr = o["image"] if model.metadata.input.color_order == "rgb" else o["image"][..., ::-1]
                m.update(sr, sample["hr_image"], lowres=sample["image"])
    report = {
        "model": str(model.path), "frames": len(latencies), "providers": model.providers,
        "tasks": {name: _scalars(m.compute()) for name, m in metrics.items()},
        "baselines": _baselines(tasks, semantic_gt, depth_gt),
        "latency_ms": {"mean": float(np.mean(latencies)), "p50": float(np.percentile(latencies, 50)),
                       "p95": float(np.percentile(latencies, 95))},
    }
    return report


def _baselines(tasks, semantic_gt, depth_gt) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for name, task in tasks.items():
        if task.kind == "segmentation" and semantic_gt:
            labels = np.stack(semantic_gt)
            counts = np.bincount(labels[labels != task.ignore_index].ravel(), minlength=len(task.class_names))
            metric = _metric_for(task)
            for gt in semantic_gt:
                metric.update(np.full_like(gt, int(np.argmax(counts))), gt)
            out[name] = {"name": f"majority class ({task.class_names[int(np.argmax(counts))]})",
                         **_scalars(metric.compute())}
        elif task.kind == "depth" and depth_gt:
            values = np.stack(depth_gt)
            valid = np.isfinite(values) & (values > task.min_depth) & (values <= task.max_depth)
            median = float(np.median(values[valid])) if valid.any() else task.max_depth
            metric = _metric_for(task)
            for gt in depth_gt:
                metric.update(np.full(gt.shape, median, np.float32), gt)
            out[name] = {"name": f"constant median depth ({median:.1f} m)", **_scalars(metric.compute())}
        elif task.kind == "detection":
            out[name] = {"name": "no detections", "map50": 0.0, "map50_95": 0.0}
        elif task.kind == "super_resolution":
            out[name] = {"name": "bicubic upsampling (psnr_bicubic above)"}
    return out
