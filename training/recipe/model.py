"""Recipe section `model`: which registered trunk (`architecture`) and its widths.

The trunks themselves are in `training.models` (registry `TRUNKS`); this section names one and
carries the sizes they read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from training.models.registry import TRUNKS


@dataclass
class TrunkConfig:
    channels: List[int] = field(default_factory=lambda: [16, 32, 64, 96, 128])  # strides 2..32
    blocks: List[int] = field(default_factory=lambda: [1, 1, 1, 1])  # residual blocks, strides 4..32
    fpn_channels: int = 64
    #: a registered trunk (training.models.registry.TRUNKS): shared: one trunk for all tasks
    #: (hard sharing); cross_stitch, nddr: one column per task mixed at every encoder level;
    #: mtan: the shared trunk plus per-task attention (training/models/soft_sharing.py)
    architecture: str = "shared"
    #: learning-rate multiplier for the cross-stitch units and the NDDR fusion convolutions. The
    #: papers trained with SGD and raised these layers' rate by orders of magnitude (their
    #: gradients are tiny next to the scale of the weights); with AdamW, a step is about lr
    #: whatever the gradient's size, so 10x (a mixing weight moves ~0.03 per step at the quick
    #: recipe's lr) leaves the 0.9/0.1 start within tens of steps without making it jump
    mixing_lr_scale: float = 10.0

    def check(self) -> None:
        if len(self.channels) != 5 or len(self.blocks) != 4:
            raise ValueError("channels needs 5 entries (strides 2..32) and blocks 4 (strides 4..32)")
        if min(self.channels) < 1 or self.fpn_channels < 1 or min(self.blocks) < 0:
            raise ValueError("channels, blocks and fpn_channels must be positive")
        if self.architecture not in TRUNKS:
            raise ValueError(f"architecture: unknown {self.architecture!r} (known: {', '.join(sorted(TRUNKS))})")
        if not self.mixing_lr_scale > 0:
            raise ValueError("mixing_lr_scale must be positive")
