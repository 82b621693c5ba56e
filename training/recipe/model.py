"""Recipe section `model`: which registered trunk (`architecture`) and its widths.

The trunks themselves are in `training.models` (registry `TRUNKS`); this section names one and
carries the sizes they read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Union

from training.models.registry import COMPACT, TRUNKS


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
    #: compact: the home trunk above; any other name: that timm encoder with the same pyramid on
    #: top (training/models/timm_trunk.py); `channels`/`blocks` then only size a stride-2 stem
    #: for encoders without one (channels[0])
    backbone: str = COMPACT
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
        if self.architecture not in TRUNKS or self.architecture == "timm":
            known = ", ".join(sorted(n for n in TRUNKS if n != "timm"))
            raise ValueError(f"architecture: unknown {self.architecture!r} (known: {known}); a timm encoder is "
                             f"chosen with model.backbone")
        if not self.mixing_lr_scale > 0:
            raise ValueError("mixing_lr_scale must be positive")
        self._check_backbone()

    def _check_backbone(self) -> None:
        if not self.encoder_lr_scale > 0 or self.freeze_stages < 0:
            raise ValueError("encoder_lr_scale must be positive and freeze_stages >= 0")
        if self.backbone == COMPACT:
            if self.pretrained is not False or self.freeze_stages or self.encoder_lr_scale != 1:
                raise ValueError("pretrained, freeze_stages and encoder_lr_scale need a timm backbone (model.backbone)")
            return
        if self.architecture != "shared":
            raise ValueError(f"architecture: {self.architecture} is built from the compact trunk's stages (per-task "
                             f"columns or per-task attention at each stage); a timm backbone is one encoder "
                             f"(use architecture 'shared' with backbone {self.backbone})")
        if isinstance(self.pretrained, str) and not self.pretrained:
            raise ValueError("pretrained: false, true or a weights file path")
        if self.freeze_stages > 5:
            raise ValueError("freeze_stages: at most 5 (stride 32, the whole encoder)")
