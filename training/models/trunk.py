"""Shared trunk: a compact plain-conv encoder and a feature-pyramid decoder (hard sharing),
registered as architecture `shared`."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.blocks import ConvBNAct, ResidualBlock
from training.models.registry import Trunk, register_trunk


@register_trunk
class SharedTrunk(Trunk):
    """Encoder to stride 32, top-down pyramid back to stride 4 (the compact home trunk).

    Returns the features every head reads: "s2" (the stem, for super-resolution detail) and "s4"
    (the finest pyramid level, for segmentation, depth and detection). The input size must be a
    multiple of 32. `config`: the recipe's `model` section (training.recipe.model.TrunkConfig);
    `tasks` is unused (one trunk for all).
    """

    name = "shared"

    def __init__(self, config, tasks: Sequence[str] = ()):
        super().__init__()
        c = config.channels
        d = config.fpn_channels
        self.stem = ConvBNAct(3, c[0], stride=2)
        self.stages = nn.ModuleList(
            nn.Sequential(ConvBNAct(c[i], c[i + 1], stride=2),
                          *[ResidualBlock(c[i + 1]) for _ in range(config.blocks[i])])
            for i in range(4)
        )
        self.lateral = nn.ModuleList(nn.Conv2d(c[i + 1], d, 1) for i in range(4))
        self.smooth = ConvBNAct(d, d)  # the last shared layer (GradNorm's W)
        self.feature_channels: Dict[str, int] = {"s2": c[0], "s4": d}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        stem = self.stem(x)
        feats = []
        y = stem
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        return {"s2": stem, "s4": self.decode(feats)}

    def decode(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The pyramid: encoder features at strides 4, 8, 16, 32 -> the stride-4 output."""
        top = self.lateral[3](feats[3])
        for i in (2, 1, 0):
            top = self.lateral[i](feats[i]) + F.interpolate(top, size=feats[i].shape[-2:], mode="nearest")
        return self.smooth(top)

    def last_shared_layer(self) -> nn.Module:
        return self.smooth
