"""Semantic segmentation: per-pixel classes, cross-entropy, uint8 class map out."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_perception.contract import TaskSpec
from mtl_perception.evaluation.metrics import SegmentationMetric
from training.models.blocks import ConvBNAct
from training.tasks.base import Task, labelled_mask, labelled_rows, register_task, zero_loss

IGNORE = 255


class SegmentationHead(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = ConvBNAct(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features, image01):
        logits = self.classifier(self.body(features["s4"]))
        return F.interpolate(logits, size=image01.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) · T², summed over classes, mean over pixels; logits [B,C,H,W]
    (Hinton et al. 2015; T² keeps the gradient scale independent of T)."""
    log_s = F.log_softmax(student.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(1).mean() * temperature**2


@register_task
class SegmentationTask(Task):
    name = "segmentation"
    kind = "segmentation"
    main_metric = "miou"

    @property
    def classes(self):
        return tuple(self.info.semantic_classes)

    def build_head(self, feature_channels):
        return SegmentationHead(feature_channels["s4"], len(self.classes))

    def prepare(self, sample):
        return {"segmentation_target": sample["semantic"].astype(np.int64)}

    def loss(self, pred, batch):
        """Cross-entropy over the labelled pixels of the labelled samples (zero without any)."""
        target = batch["segmentation_target"]
        keep = labelled_mask(batch, self.name, target).view(-1, 1, 1)
        target = torch.where(keep, target, torch.full_like(target, IGNORE))
        if not bool((target != IGNORE).any()):
            return zero_loss(pred)
        return F.cross_entropy(pred, target, ignore_index=IGNORE)

    def decode(self, pred, image01):
        return {"class_map": pred.argmax(dim=1).to(torch.uint8)}

    def spec(self, output_names: Mapping[str, str]) -> TaskSpec:
        return TaskSpec(kind=self.kind, outputs=dict(output_names), class_names=self.classes, ignore_index=IGNORE)

    def new_metric(self):
        return SegmentationMetric(len(self.classes), ignore_index=IGNORE, class_names=self.classes)

    def update_metric(self, metric, decoded, batch):
        rows = labelled_rows(batch, len(decoded["class_map"]), self.name)
        if len(rows):
            metric.update(decoded["class_map"][rows], batch["segmentation_target"][rows])

    def distill_loss(self, student, teacher, config):
        return segmentation_kd(student, teacher, config.temperature)
