"""Score an exported model on a dataset folder (torch-free), beside trivial baselines.

The same metrics as training validation, at the model's resolution (labels resampled
nearest-neighbour to the input size, as in training). What is scored and how is the caller's
`FrameScoring` (built by `mtl_perception.kinds.registry.Scoring` from the model's tasks), so
this module knows no task kind; its baselines show what "trivial" means on this data.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional, Protocol

import numpy as np

from mtl_perception.data.dataset import TASK_KINDS, MultiTaskDataset
from mtl_perception.inference.model import PerceptionModel
from mtl_perception.inference.preprocess import model_input, resize_sample


class FrameScoring(Protocol):
    """Running metrics over frames (`kinds.registry.Scoring`)."""

    metrics: Mapping[str, Any]

    def add(self, outputs: Mapping[str, Any], target: Mapping[str, Any], keep_labels: bool = True) -> Dict: ...

    def baselines(self) -> Dict[str, Dict[str, Any]]: ...


def scalars(result: Dict) -> Dict[str, float]:
    """The float entries of a metric's `compute()` (per-class breakdowns left out)."""
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}


def evaluate_dataset(model: PerceptionModel, dataset: MultiTaskDataset, scoring: FrameScoring,
                     limit: Optional[int] = None, progress: bool = True) -> Dict:
    """Runs the model on each sample (resized as in training, by the model's resize mode) and scores it into `scoring`;
    returns the report: per-task scalars, baselines and model latency."""
    tasks = model.metadata.tasks
    color_order = model.metadata.input.color_order
    sr_scale = next((t.scale for t in tasks.values() if t.kind == "super_resolution"), 1)
    latencies = []
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="evaluate", leave=False)
    for index in indices:
        raw = dataset.load(index)
        sample = resize_sample(raw, model.input_size, sr_scale, model.metadata.input.resize)
        sample["labelled_tasks"] = getattr(raw, "labelled_tasks", TASK_KINDS)  # scoring skips the rest
        image = model_input(sample["image"], "rgb8", model.input_size, color_order).image  # colour order only
        start = time.perf_counter()
        out = model.run(image)
        latencies.append((time.perf_counter() - start) * 1e3)
        scoring.add(out, sample)
    return {
        "model": str(model.path), "frames": len(latencies), "providers": model.providers,
        "tasks": {name: scalars(m.compute()) for name, m in scoring.metrics.items()},
        "baselines": scoring.baselines(),
        "latency_ms": {"mean": float(np.mean(latencies)), "p50": float(np.percentile(latencies, 50)),
                       "p95": float(np.percentile(latencies, 95))},
    }
