"""Recipe section `overparam`: which convolutions train over-parameterised, and the fine-tune
after the collapse.

The section is read in one form everywhere: `Recipe.overparam`, this dataclass (a checkpoint's
recipe goes through `recipe_from_dict` like a YAML file). The layers themselves and their
collapse are `training.models.overparam` / `training.models.collapse`; the network builder
(`training.engine.network`) applies the section to a built model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from training.models.collapse import KINDS, NO_KERNEL_PRESERVE


@dataclass
class OverparamConfig:
    """Recipe section `overparam`: train selected convolutions over-parameterised, export them
    collapsed (and optionally fine-tune the collapsed network for a few epochs first)."""

    kind: str = "none"  # none | linear | kernel | elementwise | shared_factors
    rate: int = 2  # expansion rate r (linear, shared_factors) or number of branches (elementwise)
    layers: List[str] = field(default_factory=lambda: ["trunk", "heads"])  # module-name prefixes
    finetune_epochs: int = 0  # epochs on the collapsed network after optim.epochs
    finetune_lr_scale: float = 0.1  # fine-tune learning rate = optim.lr x this, cosine to zero
    init: str = "preserve"  # preserve: expanded layers start equal to the compact ones; random: fresh factors

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        if self.rate < 1 or self.finetune_epochs < 0 or self.finetune_lr_scale <= 0:
            raise ValueError("rate must be >= 1, finetune_epochs >= 0 and finetune_lr_scale > 0")
        if self.init not in ("preserve", "random"):
            raise ValueError(f"init must be preserve or random, got {self.init!r}")
        if self.kind == "kernel" and self.init == "preserve":
            raise ValueError(NO_KERNEL_PRESERVE)
        if not self.layers:
            raise ValueError("layers: name at least one module prefix (e.g. trunk, heads, trunk.stages.3)")
