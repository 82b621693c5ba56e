"""Mean per-task loss of a model on a data set: what Standley et al.'s search minimises.

The trainer's validation reports metrics (mIoU, abs_rel, ...) that live on different scales and
point in different directions; the grouping objective is the sum of the tasks' own training
losses, so each task's loss function is evaluated here on held-out data, in eval mode (BatchNorm
running statistics, as deployed), averaged over samples.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch.utils.data import DataLoader


def evaluate_losses(model: torch.nn.Module, tasks: Mapping[str, object], loader: DataLoader) -> Dict[str, float]:
    """{task: mean loss per sample} over `loader` (each batch's mean loss weighted by its size)."""
    sums = {t: 0.0 for t in tasks}
    count = 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                n = int(batch["image"].shape[0])
                preds = model(batch["image"].float() / 255.0)
                for name, task in tasks.items():
                    sums[name] += float(task.loss(preds[name], batch)) * n
                count += n
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("evaluate_losses: the loader is empty")
    return {t: s / count for t, s in sums.items()}


class LossHook:
    """Job-engine hook (`training.experiments.jobs`): each task's mean validation and test loss
    after every epoch, as `val_loss` / `test_loss` of the epoch's record (Standley's objective)."""

    def start(self, trainer, out_dir, done_epochs: int) -> None:
        pass

    def epoch_end(self, trainer, epoch: int, record: dict, test_loader) -> None:
        record["val_loss"] = evaluate_losses(trainer.model, trainer.tasks, trainer.val_loader)
        record["test_loss"] = (evaluate_losses(trainer.model, trainer.tasks, test_loader)
                               if test_loader is not None else None)
