"""`mtl-train average`: finished checkpoints averaged (`training.engine.swa.average_checkpoints`)
with the data of the first checkpoint's recipe.

Separate from `swa.py` because it needs the trainer's data preparation and validation, and the
trainer needs `swa.py` (in-training SWA): the command sits on top of both.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch.utils.data import DataLoader

from training.engine.checkpoint import load_checkpoint
from training.engine.data import TaskDataset, open_sources
from training.engine.network import tasks_from_checkpoint
from training.engine.swa import AverageResult, average_checkpoints
from training.engine.trainer import evaluate as evaluate_model
from training.engine.trainer import prepare_data
from training.recipe.core import recipe_from_dict


def average_command(paths: Sequence[str], out: str, *, greedy: bool = False, device: str = "cpu",
                    bn_batches: int = 0, batch_size: Optional[int] = None, evaluate: bool = True,
                    log: Callable[[str], None] = print) -> AverageResult:
    """`mtl-train average`: data from the first checkpoint's recipe (BN refresh on its training
    set without flips, validation on its val set)."""
    first = load_checkpoint(paths[0])
    recipe = recipe_from_dict(first["recipe"], f"{paths[0]} recipe")
    tasks = tasks_from_checkpoint(first)
    del first
    prepare_data(recipe, progress=False)
    size, scale = recipe.data.input_size, recipe.data.sr_scale
    batch = batch_size or recipe.optim.batch_size
    classes = next(iter(tasks.values())).info  # a list of sources maps into the checkpoint's classes
    sources = {key: open_sources(getattr(recipe.data, key), classes.semantic_classes, classes.detection_classes,
                                 where=f"data.{key}") for key in ("train", "val")}
    train_set = TaskDataset(sources["train"], tasks, size, scale, augment=False, cache=False,
                            resize=recipe.data.resize)
    bn_loader = DataLoader(train_set, batch_size=batch, shuffle=False, num_workers=recipe.data.workers)
    evaluate_fn = None
    if greedy or evaluate:
        val_set = TaskDataset(sources["val"], tasks, size, scale, augment=False, cache=True,
                              resize=recipe.data.resize)
        val_loader = DataLoader(val_set, batch_size=batch, shuffle=False, num_workers=recipe.data.workers)
        evaluate_fn = lambda model: evaluate_model(model, tasks, val_loader)  # noqa: E731
    return average_checkpoints(paths, out, greedy=greedy, evaluate_fn=evaluate_fn, bn_loader=bn_loader,
                               bn_batches=bn_batches, device=device, log=log)
