"""Recipe sections for SAM, SWA and distillation (issue #6), to plug into `Recipe`.

Each is a dataclass validated by `training.recipe.config.build` like every other section: unknown
keys and wrong types are one-line errors with the dotted key, `check()` validates values. In a
recipe they are optional sections (`sam:`, `swa:`, `distill:`); absent means off:

    sam: {rho: 0.05, adaptive: false}
    swa: {start_epoch: 8, every: epoch, lr: 0.0005}
    distill:
      teachers: {segmentation: runs/seg_only/last.pt, depth: runs/depth_only/last.pt}
      weights: {segmentation: 1.0, depth: 0.5}
      temperature: 2.0

Cross-section checks (they need the rest of the recipe) are separate functions the recipe
calls: `SWAConfig.check_epochs(optim.epochs)`, `DistillConfig.check_tasks(task names)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Sequence

from training.models.registry import HEAD_FEATURES

DISTILL_LEVELS = tuple(HEAD_FEATURES)  # the feature levels every trunk returns (training.models.registry)


@dataclass
class SAMConfig:
    """Sharpness-aware minimisation around the recipe's optimizer (training.engine.sam.SAM)."""

    rho: float = 0.05  # neighbourhood radius; ASAM needs a larger one (e.g. 0.5-2)
    adaptive: bool = False  # ASAM: radius in the weights' own scale, |w| + eta
    eta: float = 0.01  # ASAM's offset (keeps zero weights perturbable)
    perturb_balancer: bool = False  # perturb the balancer's learnable task weights too

    def check(self):
        if not self.rho > 0:
            raise ValueError("rho must be positive")
        if self.eta < 0:
            raise ValueError("eta must be >= 0")


@dataclass
class SWAConfig:
    """Stochastic weight averaging (training.engine.swa.SWACollector), on torch.optim.swa_utils.

    Averaging starts after `start_epoch` completed epochs (collect only once training has
    converged: earlier snapshots need not share the loss valley); `every: epoch` adds the
    weights at the end of each later epoch, `every: step` after every optimizer step. With `lr`
    set, SWALR anneals the learning rate to it over `anneal_epochs` epochs from `start_epoch`
    on (and the recipe's own schedule stops there); without, the recipe's schedule continues.
    """

    start_epoch: int = 0
    every: Literal["epoch", "step"] = "epoch"
    lr: Optional[float] = None
    anneal_epochs: int = 1
    anneal_strategy: Literal["cos", "linear"] = "cos"
    bn_batches: int = 0  # BN refresh batches over the training set at the end (0 = the whole set)

    def check(self):
        if self.start_epoch < 0:
            raise ValueError("start_epoch must be >= 0")
        if self.lr is not None and not self.lr > 0:
            raise ValueError("lr must be positive (or absent: keep the recipe's schedule)")
        if self.anneal_epochs < 0 or self.bn_batches < 0:
            raise ValueError("anneal_epochs and bn_batches must be >= 0")

    def check_epochs(self, epochs: int) -> None:
        if self.start_epoch >= epochs:
            raise ValueError(f"start_epoch {self.start_epoch} leaves nothing to average in {epochs} epochs")


@dataclass
class DistillConfig:
    """Distillation from frozen single-task teachers (training.engine.distill).

    `teachers` maps a task of the recipe to a teacher checkpoint that has that task (trained
    by this trainer, same input size, classes and SR scale). The loss per task is
    `weights[task]` (default 1) times its kind's distillation loss, plus `feature_weight` times
    the feature imitation loss when `feature_imitation` is on; the trainer adds it to the task's
    ground-truth loss.
    """

    teachers: Dict[str, str] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)
    temperature: float = 2.0  # segmentation: KL of softmax(logits / T), times T^2
    depth_beta: float = 0.1  # depth: smooth-L1 transition on log-depth (0.1 = about 10 %)
    detection_size_weight: float = 0.1  # detection regressions, as the task's own loss terms
    detection_offset_weight: float = 1.0
    feature_imitation: bool = False
    feature_levels: List[str] = field(default_factory=lambda: ["s4"])
    feature_weight: float = 1.0
    cache: bool = False  # keep teacher outputs on disk (keyed by teacher fingerprint, sample, flip)
    cache_dir: str = "runs/teacher_cache"
    cache_dtype: Literal["float32", "float16"] = "float32"

    def check(self):
        if not self.teachers:
            raise ValueError("teachers: at least one {task: checkpoint} is needed")
        unknown = sorted(set(self.weights) - set(self.teachers))
        if unknown:
            raise ValueError(f"weights.{unknown[0]}: no teacher for this task")
        if any(w < 0 for w in self.weights.values()) or self.feature_weight < 0:
            raise ValueError("weights must be >= 0")
        if not self.temperature > 0 or not self.depth_beta > 0:
            raise ValueError("temperature and depth_beta must be positive")
        if self.detection_size_weight < 0 or self.detection_offset_weight < 0:
            raise ValueError("detection weights must be >= 0")
        bad = [lvl for lvl in self.feature_levels if lvl not in DISTILL_LEVELS]
        if bad:
            raise ValueError(f"feature_levels: unknown level {bad[0]!r} (known: {', '.join(DISTILL_LEVELS)})")

    def check_tasks(self, tasks: Sequence[str]) -> None:
        missing = sorted(set(self.teachers) - set(tasks))
        if missing:
            raise ValueError(f"teachers.{missing[0]}: not a task of this recipe")

    def weight(self, task: str) -> float:
        return float(self.weights.get(task, 1.0))
