"""2-D detection, CenterNet-style: class heatmaps + box size + centre offset at stride 4.

Anchor-free and decoded without an external NMS (a 3x3 max-pool keeps local peaks, then a
fixed top-K), so the whole decode exports into the ONNX graph as plain tensor ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_perception.contract import TaskSpec
from mtl_perception.evaluation.metrics import DetectionMetric
from training.models.blocks import ConvBNAct
from training.tasks.base import Task, TaskOptions, labelled_mask, labelled_rows, register_task

STRIDE = 4
PEAK_TIE = 1e-4  # heatmap values this close to their neighbourhood's maximum count as peaks
#: distillation: a teacher heatmap peak counts as an object above this probability
PEAK = 0.3


@dataclass
class DetectionOptions(TaskOptions):
    top_k: int = 50  # boxes the exported model always returns (sorted by score)
    max_objects: int = 64  # targets kept per image during training
    size_weight: float = 0.1
    offset_weight: float = 1.0
    gaussian_alpha: float = 0.54  # heatmap sigma = alpha * box side / 6 (TTFNet)

    def check(self):
        if self.top_k < 1 or self.max_objects < 1:
            raise ValueError("top_k and max_objects must be positive")


class DetectionHead(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = ConvBNAct(channels, channels)
        self.heatmap = nn.Conv2d(channels, num_classes, 1)
        self.size = nn.Conv2d(channels, 2, 1)
        self.offset = nn.Conv2d(channels, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # prior probability 0.1 (CenterNet)

    def forward(self, features, image01):
        x = self.body(features["s4"])
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}


def draw_gaussian(heatmap: np.ndarray, cx: float, cy: float, sigma_x: float, sigma_y: float) -> None:
    """Max-accumulates an elliptical Gaussian with peak exactly 1 at the integer centre cell."""
    h, w = heatmap.shape
    ix, iy = int(cx), int(cy)
    rx, ry = max(1, int(3 * sigma_x)), max(1, int(3 * sigma_y))
    x0, x1 = max(0, ix - rx), min(w, ix + rx + 1)
    y0, y1 = max(0, iy - ry), min(h, iy + ry + 1)
    xs = np.arange(x0, x1, dtype=np.float32) - ix
    ys = np.arange(y0, y1, dtype=np.float32) - iy
    g = np.exp(-(xs[None, :] ** 2) / (2 * sigma_x**2) - (ys[:, None] ** 2) / (2 * sigma_y**2))
    np.maximum(heatmap[y0:y1, x0:x1], g, out=heatmap[y0:y1, x0:x1])


def focal_loss(logits: torch.Tensor, target: torch.Tensor, labelled: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the object count.
    `labelled` (bool [B]): only those images count; an image without box labels gives neither
    positives nor negatives (it is not an image without objects)."""
    pred = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    keep = 1.0 if labelled is None else labelled.to(pred.dtype).view(-1, 1, 1, 1)
    pos = target.eq(1).float() * keep
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * (1 - target.eq(1).float()) * keep
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def gather_at(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """maps [B, C, h, w], index [B, K] flat positions -> [B, K, C]."""
    b, c = maps.shape[:2]
    flat = maps.reshape(b, c, -1)
    return flat.gather(2, index.unsqueeze(1).expand(b, c, index.shape[1])).permute(0, 2, 1)


def _weighted_l1(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ w·|s − t| / (C·Σ w) over [B,C,h,w] maps, w [B,h,w]."""
    diff = (student.float() - teacher.float()).abs().sum(1)
    return (diff * weight).sum() / (weight.sum() * student.shape[1]).clamp(min=1e-12)


def detection_kd(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                 size_weight: float = 0.1, offset_weight: float = 1.0) -> torch.Tensor:
    """Heatmap imitation by the Bernoulli KL of the sigmoid heatmaps (soft targets; the gradient
    on a logit is σ(s) − σ(t)), summed and divided by the number of objects the teacher sees (3×3
    peaks above `PEAK`, at least 1) as the focal loss is by its ground-truth objects; plus
    size/offset imitation, L1 weighted by the teacher's confidence (its max heatmap
    probability), so regressions are copied where the teacher sees an object."""
    s, t = student["heatmap"].float(), teacher["heatmap"].float()
    pt = torch.sigmoid(t)
    kl = pt * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - pt) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    peaks = (pt == F.max_pool2d(pt, 3, stride=1, padding=1)) & (pt > PEAK)
    heat = kl.sum() / peaks.sum().clamp(min=1)
    confidence = pt.max(dim=1).values
    return (heat + size_weight * _weighted_l1(student["size"], teacher["size"], confidence)
            + offset_weight * _weighted_l1(student["offset"], teacher["offset"], confidence))


@register_task
class DetectionTask(Task):
    name = "detection"
    kind = "detection"
    Options = DetectionOptions
    main_metric = "map50"

    @property
    def classes(self):
        return tuple(self.info.detection_classes)

    def build_head(self, feature_channels):
        return DetectionHead(feature_channels["s4"], len(self.classes))

    def prepare(self, sample):
        width, height = self.info.input_size
        h, w = height // STRIDE, width // STRIDE
        m = self.options.max_objects
        heatmap = np.zeros((len(self.classes), h, w), np.float32)
        size = np.zeros((m, 2), np.float32)
        offset = np.zeros((m, 2), np.float32)
        index = np.zeros(m, np.int64)
        mask = np.zeros(m, np.float32)
        gt_boxes = np.zeros((m, 4), np.float32)
        gt_labels = np.full(m, -1, np.int64)
        boxes, labels = sample["boxes"], sample["labels"]
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:m]  # biggest first
        for k, i in enumerate(order):
            x1, y1, x2, y2 = boxes[i] / STRIDE
            bw, bh = x2 - x1, y2 - y1
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = min((x1 + x2) / 2, w - 1e-3), min((y1 + y2) / 2, h - 1e-3)
            a = self.options.gaussian_alpha
            draw_gaussian(heatmap[labels[i]], cx, cy, max(a * bw / 6, 0.5), max(a * bh / 6, 0.5))
            size[k] = (bw, bh)
            offset[k] = (cx - int(cx), cy - int(cy))
            index[k] = int(cy) * w + int(cx)
            mask[k] = 1
            gt_boxes[k] = boxes[i]
            gt_labels[k] = labels[i]
        return {
            "detection_heatmap": heatmap, "detection_size": size, "detection_offset": offset,
            "detection_index": index, "detection_mask": mask,
            "detection_gt_boxes": gt_boxes, "detection_gt_labels": gt_labels,
        }

    def loss(self, pred, batch):
        labelled = labelled_mask(batch, self.name, pred["heatmap"])
        heat = focal_loss(pred["heatmap"], batch["detection_heatmap"], labelled)
        mask = (batch["detection_mask"] * labelled.unsqueeze(-1).to(batch["detection_mask"].dtype)).unsqueeze(-1)
        norm = mask.sum().clamp(min=1) * 2
        size = (gather_at(pred["size"], batch["detection_index"]) - batch["detection_size"]).abs()
        offset = (gather_at(pred["offset"], batch["detection_index"]) - batch["detection_offset"]).abs()
        return (heat + self.options.size_weight * (size * mask).sum() / norm
                + self.options.offset_weight * (offset * mask).sum() / norm)

    def decode(self, pred, image01):
        heat = torch.sigmoid(pred["heatmap"])
        b, c, h, w = heat.shape
        # a peak is within PEAK_TIE of its 3x3 maximum, not exactly equal to it: on flat heatmaps
        # (an untrained head) exact equality flips with float rounding, so torch and onnxruntime
        # would disagree about which plateau pixels are peaks
        peaks = heat * (heat >= F.max_pool2d(heat, 3, stride=1, padding=1) - PEAK_TIE).to(heat.dtype)
        k = min(self.options.top_k, c * h * w)
        scores, flat = torch.topk(peaks.reshape(b, -1), k)
        classes = torch.div(flat, h * w, rounding_mode="floor")
        pos = flat - classes * (h * w)
        ys = torch.div(pos, w, rounding_mode="floor")
        xs = pos - ys * w
        size = gather_at(pred["size"], pos).clamp(min=0)
        offset = gather_at(pred["offset"], pos)
        cx = (xs.to(heat.dtype) + offset[..., 0]) * STRIDE
        cy = (ys.to(heat.dtype) + offset[..., 1]) * STRIDE
        half_w, half_h = size[..., 0] * STRIDE / 2, size[..., 1] * STRIDE / 2
        height, width = image01.shape[-2:]
        boxes = torch.stack([
            (cx - half_w).clamp(0, width), (cy - half_h).clamp(0, height),
            (cx + half_w).clamp(0, width), (cy + half_h).clamp(0, height),
        ], dim=-1)
        return {"boxes": boxes, "scores": scores, "classes": classes.to(torch.int32)}

    def spec(self, output_names: Mapping[str, str]) -> TaskSpec:
        return TaskSpec(kind=self.kind, outputs=dict(output_names), class_names=self.classes, top_k=self.options.top_k)

    def new_metric(self):
        return DetectionMetric(self.classes)

    def update_metric(self, metric, decoded, batch):
        for i in labelled_rows(batch, decoded["boxes"].shape[0], self.name):
            keep = batch["detection_gt_labels"][i] >= 0
            metric.update(decoded["boxes"][i], decoded["scores"][i], decoded["classes"][i],
                          batch["detection_gt_boxes"][i][keep], batch["detection_gt_labels"][i][keep])

    def distill_loss(self, student, teacher, config):
        return detection_kd(student, teacher, config.detection_size_weight, config.detection_offset_weight)
