"""Shared trunk: a compact plain-conv encoder and a feature-pyramid decoder (hard sharing)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from training.models.blocks import ConvBNAct, ResidualBlock


ARCHITECTURES = ("shared", "cross_stitch", "nddr", "mtan")


@dataclass
class TrunkConfig:
    channels: List[int] = field(default_factory=lambda: [16, 32, 64, 96, 128])  # strides 2..32
    blocks: List[int] = field(default_factory=lambda: [1, 1, 1, 1])  # residual blocks, strides 4..32
    fpn_channels: int = 64
    #: shared: one trunk for all tasks (hard sharing); cross_stitch, nddr: one column per task
    #: mixed at every encoder level; mtan: the shared trunk plus per-task attention
    #: (training/models/soft_sharing.py)
    architecture: Literal["shared", "cross_stitch", "nddr", "mtan"] = "shared"
    #: learning-rate multiplier for the cross-stitch units and the NDDR fusion convolutions. The
    #: papers trained with SGD and raised these layers' rate by orders of magnitude (their
    #: gradients are tiny next to the scale of the weights); with AdamW, a step is about lr
    #: whatever the gradient's size, so 10x (a mixing weight moves ~0.03 per step at the quick
    #: recipe's lr) leaves the 0.9/0.1 start within tens of steps without making it jump
    mixing_lr_scale: float = 10.0
    #: compact: the trunk above; any other name: that timm encoder with this pyramid on top
    #: (training/models/timm_trunk.py); `channels`/`blocks` then only size a stride-2 stem for
    #: encoders without one (channels[0])
    backbone: str = "compact"
    #: timm encoders: false (random init) | true (timm's hub cache) | a .safetensors/.pth/.pt file
    pretrained: Union[bool, str] = False
    encoder_lr_scale: float = 1.0  # the timm encoder's learning rate = optim.lr x this
    freeze_stages: int = 0  # timm encoders: no training up to stride 2**N (BatchNorm in eval mode)
    #: standard: 3x3 ConvBNAct heads; depthwise: each 3x3 split into depthwise 3x3 + 1x1
    #: (training/models/light_heads.py), what heads cost at real resolutions
    head: Literal["standard", "depthwise"] = "standard"

    def check(self) -> None:
        if len(self.channels) != 5 or len(self.blocks) != 4:
            raise ValueError("channels needs 5 entries (strides 2..32) and blocks 4 (strides 4..32)")
        if min(self.channels) < 1 or self.fpn_channels < 1 or min(self.blocks) < 0:
            raise ValueError("channels, blocks and fpn_channels must be positive")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: unknown {self.architecture!r} (known: {', '.join(ARCHITECTURES)})")
        if not self.mixing_lr_scale > 0:
            raise ValueError("mixing_lr_scale must be positive")
        if not self.encoder_lr_scale > 0 or self.freeze_stages < 0:
            raise ValueError("encoder_lr_scale must be positive and freeze_stages >= 0")
        if self.backbone == "compact":
            if self.pretrained is not False or self.freeze_stages or self.encoder_lr_scale != 1:
                raise ValueError("pretrained, freeze_stages and encoder_lr_scale need a timm backbone (model.backbone)")
        elif self.architecture != "shared":
            raise ValueError(f"architecture: {self.architecture} is built from the compact trunk's stages (per-task "
                             f"columns or per-task attention at each stage); a timm backbone is one encoder "
                             f"(use architecture 'shared' with backbone {self.backbone})")
        elif isinstance(self.pretrained, str) and not self.pretrained:
            raise ValueError("pretrained: false, true or a weights file path")
        elif self.freeze_stages > 5:
            raise ValueError("freeze_stages: at most 5 (stride 32, the whole encoder)")


class SharedTrunk(nn.Module):
    """Encoder to stride 32, top-down pyramid back to stride 4.

    Returns the features every head reads: "s2" (the stem, for super-resolution detail) and "s4"
    (the finest pyramid level, for segmentation, depth and detection). The input size must be a
    multiple of 32.
    """

    def __init__(self, config: TrunkConfig = TrunkConfig()):
        super().__init__()
        c = config.channels
        d = config.fpn_channels
        self.stem = ConvBNAct(3, c[0], stride=2)
        self.stages = nn.ModuleList(
            nn.Sequential(ConvBNAct(c[i], c[i + 1], stride=2), *[ResidualBlock(c[i + 1]) for _ in range(config.blocks[i])])
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
