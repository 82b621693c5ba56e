"""Tiny multi-task models and checkpoints without any dataset (for SAM/SWA/distillation tests)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from training.engine.checkpoint import parameter_fingerprint, save_checkpoint
from training.models.multitask import build_model
from training.recipe.core import recipe_from_dict
from training.tasks import TASKS, DataInfo

ALL_TASKS = ("segmentation", "depth", "detection", "super_resolution")
INFO = DataInfo(semantic_classes=("road", "car", "sky"), detection_classes=("car", "person"),
                sr_scale=2, input_size=(64, 32))


def recipe_doc(tasks: Sequence[str] = ALL_TASKS, seed: int = 7, weights: Optional[Dict[str, float]] = None,
               channels=(8, 8, 16, 16, 16)) -> dict:
    weights = weights or {}
    return {"name": "tiny", "seed": seed, "out_dir": "runs/tiny",
            "data": {"train": "data/none/train", "val": "data/none/val", "input_size": list(INFO.input_size)},
            "model": {"channels": list(channels), "blocks": [1, 0, 0, 0], "fpn_channels": 16},
            "tasks": {t: ({"weight": weights[t]} if t in weights else {}) for t in tasks}}


def data_info_dict() -> dict:
    return {"semantic_classes": list(INFO.semantic_classes), "detection_classes": list(INFO.detection_classes),
            "sr_scale": INFO.sr_scale, "input_size": list(INFO.input_size)}


def build_tiny(doc: dict):
    """(model, tasks) the way the trainer builds them: seeded, then build_model."""
    recipe = recipe_from_dict(doc)
    tasks = {name: TASKS[name](opts, INFO) for name, opts in recipe.task_options().items()}
    torch.manual_seed(recipe.seed)
    return build_model(recipe.model, tasks), tasks


def write_checkpoint(path, model, doc: dict, init_fingerprint: Optional[str] = None, epoch: int = 1) -> None:
    """A checkpoint in the trainer's layout (optimizer etc. empty: nothing here resumes)."""
    recipe = recipe_from_dict(doc)
    save_checkpoint(path, {
        "epoch": epoch, "step": 3 * epoch, "model": model.state_dict(), "optimizer": {}, "scheduler": {},
        "balancer": {}, "scaler": {}, "rng": torch.get_rng_state(), "recipe": recipe.to_dict(), "history": [],
        "init_fingerprint": init_fingerprint or parameter_fingerprint(model.state_dict()),
        "data_info": data_info_dict(),
    })


def random_batches(count: int = 3, batch: int = 2, seed: int = 0):
    """Multi-task-style batches: uint8 NCHW images and sample indices."""
    g = torch.Generator().manual_seed(seed)
    width, height = INFO.input_size
    return [{"image": torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8),
             "index": torch.arange(i * batch, (i + 1) * batch)} for i in range(count)]


def tiny_recipe(data_root, out_dir, **overrides):
    """A two-epoch recipe of the tiny network on `tiny_data` (tests/train/conftest.py); keyword
    arguments replace whole sections."""
    doc = {
        "name": "tiny", "seed": 7, "out_dir": str(out_dir),
        "data": {"train": str(data_root / "train"), "val": str(data_root / "val"), "input_size": [64, 32]},
        "model": {"channels": [8, 8, 16, 16, 16], "blocks": [1, 0, 0, 0], "fpn_channels": 16},
        "optim": {"epochs": 2, "batch_size": 8, "warmup_steps": 2, "lr": 0.003},
        "export": {"verify_frames": 2},
    }
    for key, value in overrides.items():
        doc[key] = value
    return recipe_from_dict(doc)
