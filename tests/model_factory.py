"""Builds small real models for tests: a randomly initialised network exported through the
same exporter users run (no training needed when only the contract matters)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch

from training.export import DeployModule, attach_metadata, export_onnx, output_names
from training.models.multitask import build_model
from training.models.trunk import TrunkConfig
from training.tasks import TASKS, DataInfo
from mtl_perception.contract import InputSpec, ModelMetadata

ALL_TASKS = ("segmentation", "depth", "detection", "super_resolution")
SEMANTIC = ("road", "sidewalk", "lane_marking", "building", "sky", "pole", "traffic_sign", "vehicle", "pedestrian")
DETECTION = ("vehicle", "pedestrian", "traffic_sign")


def tiny_tasks(names: Sequence[str] = ALL_TASKS, input_size: Tuple[int, int] = (64, 32)):
    info = DataInfo(semantic_classes=SEMANTIC, detection_classes=DETECTION, sr_scale=2, input_size=input_size)
    return {n: TASKS[n](TASKS[n].Options(), info) for n in names}


def tiny_network(tasks, seed: int = 0):
    torch.manual_seed(seed)
    config = TrunkConfig(channels=[8, 8, 16, 16, 16], blocks=[0, 0, 0, 0], fpn_channels=16)
    return build_model(config, tasks).eval()


def export_random_model(path: Path, names: Sequence[str] = ALL_TASKS, input_size=(64, 32), seed: int = 0):
    """Exports an untrained tiny network with full metadata; returns (DeployModule, metadata)."""
    tasks = tiny_tasks(names, input_size)
    module = DeployModule(tiny_network(tasks, seed), tasks).eval()
    tensor_names = output_names(tasks)
    meta = ModelMetadata(
        name="tiny", input=InputSpec(name="image", height=input_size[1], width=input_size[0]),
        tasks={t: task.spec(tensor_names[t]) for t, task in tasks.items()}, provenance={"test": True},
    )
    example = torch.from_numpy(np.zeros((1, input_size[1], input_size[0], 3), np.uint8))
    export_onnx(module, example, Path(path), 18, meta.output_names())
    attach_metadata(Path(path), meta)
    return module, meta


def export_untrained_model(path: Path, names: Sequence[str] = ALL_TASKS, input_size=(192, 128), seed: int = 0):
    """Exports an untrained network of the default (quick recipe) size with full metadata.

    Inference time does not depend on the weights, so this stands in for a trained quick model
    in benchmarks and latency-sensitive checks. Returns (DeployModule, metadata).
    """
    tasks = tiny_tasks(names, input_size)
    torch.manual_seed(seed)
    module = DeployModule(build_model(TrunkConfig(), tasks).eval(), tasks).eval()
    tensor_names = output_names(tasks)
    meta = ModelMetadata(
        name="untrained-default", input=InputSpec(name="image", height=input_size[1], width=input_size[0]),
        tasks={t: task.spec(tensor_names[t]) for t, task in tasks.items()}, provenance={"test": True},
    )
    example = torch.from_numpy(np.zeros((1, input_size[1], input_size[0], 3), np.uint8))
    export_onnx(module, example, Path(path), 18, meta.output_names())
    attach_metadata(Path(path), meta)
    return module, meta
