"""Small real models exported through the same exporter users run (randomly initialised: no
training needed when only the contract matters). Needs torch: runtime tests reach it through the
`exported_models` fixture (tests/runtime/conftest.py), which skips where torch is absent."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch
from torch import nn

from mtl_perception.contract import InputSpec, ModelMetadata
from tests.runtime.model_factory import ALL_TASKS, DETECTION, SEMANTIC
from training.engine.export import DeployModule, attach_metadata, export_onnx, output_names
from training.models.multitask import build_model
from training.recipe.model import TrunkConfig
from training.tasks import TASKS, DataInfo


def tiny_tasks(names: Sequence[str] = ALL_TASKS, input_size: Tuple[int, int] = (64, 32)):
    info = DataInfo(semantic_classes=SEMANTIC, detection_classes=DETECTION, sr_scale=2, input_size=input_size)
    return {n: TASKS[n](TASKS[n].Options(), info) for n in names}


def tiny_network(tasks, seed: int = 0):
    torch.manual_seed(seed)
    config = TrunkConfig(channels=[8, 8, 16, 16, 16], blocks=[0, 0, 0, 0], fpn_channels=16)
    return build_model(config, tasks).eval()


def export_random_model(path: Path, names: Sequence[str] = ALL_TASKS, input_size=(64, 32), seed: int = 0):
    """Exports an untrained tiny network with full metadata; returns (DeployModule, metadata)."""
    return _export_tiny(path, tiny_tasks(names, input_size), input_size, seed, "tiny")


def _export_tiny(path: Path, tasks, input_size, seed: int, name: str):
    module = DeployModule(tiny_network(tasks, seed), tasks).eval()
    tensor_names = output_names(tasks)
    meta = ModelMetadata(
        name=name, input=InputSpec(name="image", height=input_size[1], width=input_size[0]),
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


def export_synthetic_world_model(path: Path, names: Sequence[str] = ALL_TASKS, input_size=(64, 32), seed: int = 0):
    """Like `export_random_model`, with the synthetic world's classes (`SEMANTIC_CLASSES`,
    `DETECTION_CLASSES`), so that its labels (and bags made from it) can be scored.
    Returns (DeployModule, metadata)."""
    from mtl_perception.data.synthetic import DETECTION_CLASSES, SEMANTIC_CLASSES

    info = DataInfo(semantic_classes=SEMANTIC_CLASSES, detection_classes=DETECTION_CLASSES, sr_scale=2,
                    input_size=input_size)
    tasks = {n: TASKS[n](TASKS[n].Options(), info) for n in names}
    return _export_tiny(path, tasks, input_size, seed, "tiny-synthetic")


def randomise_batchnorm(model, seed: int = 0) -> None:
    """Random BN statistics and affine terms, so folding and collapse are tested off the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def flat_outputs(preds) -> list:
    """A model's {task: tensor or {role: tensor}} predictions as one list in a fixed order."""
    out = []
    for name in sorted(preds):
        value = preds[name]
        out += [value[k] for k in sorted(value)] if isinstance(value, dict) else [value]
    return out
