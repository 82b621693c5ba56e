"""Metric depth: log-space L1 on valid pixels; float32 metres out, bounded to [min, max]."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_perception.contract import TaskSpec
from mtl_perception.evaluation.metrics import DepthMetric
from training.models.blocks import ConvBNAct
from training.tasks.base import Task, TaskOptions, labelled_mask, labelled_rows, register_task


@dataclass
class DepthOptions(TaskOptions):
    min_depth: float = 0.5  # metres
    max_depth: float = 80.0

    def check(self):
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError("depth needs 0 < min_depth < max_depth")


class DepthHead(nn.Module):
    """Predicts log-depth as a sigmoid between log(min) and log(max): always positive, bounded."""

    def __init__(self, channels: int, min_depth: float, max_depth: float):
        super().__init__()
        self.body = ConvBNAct(channels, channels)
        self.out = nn.Conv2d(channels, 1, 1)
        self.log_min, self.log_max = math.log(min_depth), math.log(max_depth)

    def forward(self, features, image01):
        # the one channel taken out before the upsampling: onnxruntime then upsamples a plain
        # 1-channel map instead of one padded to its 8- or 16-channel blocked layout (measured:
        # 2.1 of 2.6 ms less at 512x256, docs/backbone_sharing_cost.md)
        z = self.out(self.body(features["s4"]))[:, 0]
        z = F.interpolate(z[:, None], size=image01.shape[-2:], mode="bilinear", align_corners=False)
        return self.log_min + (self.log_max - self.log_min) * torch.sigmoid(z[:, 0])  # log metres


def log_l1_loss(log_pred: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float,
                labelled: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean |log pred - log target| over pixels with a finite target inside the depth range (of
    the `labelled` samples, a bool [B], when given)."""
    valid = torch.isfinite(target) & (target >= min_depth) & (target <= max_depth)
    if labelled is not None:
        valid = valid & labelled.view(-1, *([1] * (target.dim() - 1)))
    if not bool(valid.any()):
        return log_pred.sum() * 0.0  # keeps the graph (and DDP) intact on batches without depth
    return (log_pred[valid] - torch.log(target[valid])).abs().mean()


def depth_kd(student: torch.Tensor, teacher: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Smooth L1 (Huber, transition `beta`) between predicted log-depths (what DepthHead
    returns), mean over pixels: robust to the teacher's outliers, relative in metres, and dense
    (it also teaches pixels without ground truth)."""
    return F.smooth_l1_loss(student.float(), teacher.float(), beta=beta)


@register_task
class DepthTask(Task):
    name = "depth"
    kind = "depth"
    Options = DepthOptions
    main_metric = "abs_rel"

    def build_head(self, feature_channels):
        return DepthHead(feature_channels["s4"], self.options.min_depth, self.options.max_depth)

    def prepare(self, sample):
        return {"depth_target": sample["depth"].astype(np.float32)}

    def loss(self, pred, batch):
        target = batch["depth_target"]
        return log_l1_loss(pred, target, self.options.min_depth, self.options.max_depth,
                           labelled_mask(batch, self.name, target))

    def decode(self, pred, image01):
        return {"depth": torch.exp(pred)}

    def spec(self, output_names: Mapping[str, str]) -> TaskSpec:
        return TaskSpec(kind=self.kind, outputs=dict(output_names),
                        min_depth=self.options.min_depth, max_depth=self.options.max_depth)

    def new_metric(self):
        return DepthMetric(min_depth=self.options.min_depth, max_depth=self.options.max_depth)

    def update_metric(self, metric, decoded, batch):
        rows = labelled_rows(batch, len(decoded["depth"]), self.name)
        if len(rows):
            metric.update(decoded["depth"][rows], batch["depth_target"][rows])

    def distill_loss(self, student, teacher, config):
        return depth_kd(student, teacher, config.depth_beta)
