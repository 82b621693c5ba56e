"""Super-resolution (x scale): pixel-shuffle residual over bicubic upsampling of the input."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_perception.contract import TaskSpec
from mtl_perception.evaluation.metrics import SuperResolutionMetric
from training.models.blocks import ConvBNAct
from training.tasks.base import Task, labelled_mask, labelled_rows, register_task


def cubic_weight(distance: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (a = -0.75, PyTorch's and OpenCV's bicubic)."""
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def bicubic_phases(scale: int, stride: int = 2) -> "tuple[torch.Tensor, int, int]":
    """Bicubic upsampling by `scale` as a stride-`stride` convolution whose (stride * scale)^2
    output channels per colour are the output pixels of one input block, in PixelShuffle order:
    ([(stride*scale)^2, 1, K, K] weights, left pad, right pad), to be applied to the image
    padded by edge replication.

    Output pixel o of a row reads input coordinate (o + 0.5) / scale - 0.5 (half-pixel centres,
    `align_corners=False`) through the four taps around it, indices clamped to the image:
    exactly `F.interpolate(mode="bicubic", scale_factor=scale)`, in one convolution and one
    depth-to-space instead of a Resize node (onnxruntime's cubic Resize is slow on the CPU:
    about 11 ms of the head's 20 at 1024x512)."""
    phases = stride * scale
    taps = []  # per phase: (first tap relative to the block's first input pixel, 4 weights)
    for r in range(phases):
        x = (r + 0.5) / scale - 0.5
        first = int(np.floor(x)) - 1
        taps.append((first, [cubic_weight(x - (first + k)) for k in range(4)]))
    lo = min(first for first, _ in taps)
    hi = max(first for first, _ in taps) + 3
    size = hi - lo + 1
    row = torch.zeros(phases, size, dtype=torch.float64)
    for r, (first, weights) in enumerate(taps):
        row[r, first - lo:first - lo + 4] = torch.tensor(weights, dtype=torch.float64)
    kernel = torch.einsum("yi,xj->yxij", row, row).reshape(phases * phases, 1, size, size)
    return kernel.float(), -lo, hi - (stride - 1)


class SuperResolutionHead(nn.Module):
    """Works at stride 2 on the stem features, the upsampled pyramid and the input pixels
    themselves (space-to-depth, 2x2 -> 12 channels), then pixel-shuffles by 2*scale to the output
    size; predicts only the residual over bicubic upsampling, in units of `RESIDUAL_UNIT`.

    The input pixels: a compact trunk's stem (8-16 channels after BN + ReLU) cannot carry all 12
    values of each 2x2 block of the image, and the detail super-resolution restores is exactly
    what it drops. The residual unit: with Adam every weight moves by about lr per step whatever
    its gradient, and bicubic's error is a few hundredths of full range (L1 about 0.02), so an
    output layer in full-range units overshoots the residual it learns by an order of magnitude
    at the usual learning rates (measured: no gain over bicubic until the cosine schedule had
    nearly reached zero)."""

    RESIDUAL_UNIT = 0.03  # of full range; about bicubic's typical error on photos and synthetic frames
    PIXEL_CHANNELS = 12  # the input image, 2x2 space-to-depth

    def __init__(self, stem_channels: int, pyramid_channels: int, scale: int, width: int = 32):
        super().__init__()
        self.scale = scale
        self.reduce = nn.Conv2d(pyramid_channels, width - stem_channels, 1) if width > stem_channels else None
        cin = (width if self.reduce is not None else stem_channels) + self.PIXEL_CHANNELS
        self.body = ConvBNAct(cin, width)
        self.out = nn.Conv2d(width, 3 * (2 * scale) ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2 * scale)
        nn.init.zeros_(self.out.weight)  # start as plain bicubic
        nn.init.zeros_(self.out.bias)
        kernel, self._pad_left, self._pad_right = bicubic_phases(scale)
        self.register_buffer("bicubic", kernel.repeat(3, 1, 1, 1), persistent=False)  # fixed, not in checkpoints

    def forward(self, features, image01):
        x = features["s2"]
        if self.reduce is not None:
            # 1x1 reduction before the bilinear upsampling: both are linear (and the bilinear
            # weights sum to one, so the bias commutes too), so this equals upsample-then-reduce
            # while interpolating width - stem channels instead of all pyramid channels
            up = F.interpolate(self.reduce(features["s4"]), size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, up], dim=1)
        pixels = F.pixel_unshuffle(image01 - 0.5, 2) * 4.0  # centred, about unit spread like the features
        residual = self.out(self.body(torch.cat([x, pixels], dim=1))) * self.RESIDUAL_UNIT
        return self.shuffle(residual + self.bicubic_base(image01))  # [0, 1] scale, unclamped for the loss

    def bicubic_base(self, image01: torch.Tensor) -> torch.Tensor:
        """Bicubic upsampling of the input, per input block in PixelShuffle order (`bicubic_phases`)."""
        left, right = self._pad_left, self._pad_right
        padded = F.pad(image01, (left, right, left, right), mode="replicate")
        return F.conv2d(padded, self.bicubic.to(image01.dtype), stride=2, groups=3)


def super_resolution_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 to the teacher's output image ([0, 1] scale, unclamped as the heads return it)."""
    return (student.float() - teacher.float()).abs().mean()


@register_task
class SuperResolutionTask(Task):
    name = "super_resolution"
    kind = "super_resolution"
    main_metric = "psnr"

    def build_head(self, feature_channels):
        return SuperResolutionHead(feature_channels["s2"], feature_channels["s4"], self.info.sr_scale)

    def prepare(self, sample):
        return {"super_resolution_target": np.ascontiguousarray(sample["hr_image"].transpose(2, 0, 1))}

    def loss(self, pred, batch):
        """Mean L1 over the labelled samples (zero, graph-connected, without any)."""
        error = (pred - batch["super_resolution_target"].float() / 255.0).abs()
        keep = labelled_mask(batch, self.name, error)
        if bool(keep.all()):  # the plain mean (bit for bit what it was before partial labels)
            return error.mean()
        per_sample = error.mean(dim=(1, 2, 3))
        keep = keep.to(per_sample.dtype)
        return (per_sample * keep).sum() / keep.sum().clamp(min=1)

    def decode(self, pred, image01):
        image = (pred.clamp(0, 1) * 255.0).round().to(torch.uint8)
        return {"image": image.permute(0, 2, 3, 1)}  # NHWC, the input's colour order

    def spec(self, output_names: Mapping[str, str]) -> TaskSpec:
        return TaskSpec(kind=self.kind, outputs=dict(output_names), scale=self.info.sr_scale)

    def new_metric(self):
        return SuperResolutionMetric()

    def update_metric(self, metric, decoded, batch):
        for i in labelled_rows(batch, decoded["image"].shape[0], self.name):
            target = batch["super_resolution_target"][i].transpose(1, 2, 0)
            metric.update(decoded["image"][i], target, lowres=batch["image"][i].transpose(1, 2, 0))

    def distill_loss(self, student, teacher, config):
        return super_resolution_kd(student, teacher)
