"""The task registry: everything the trainer and exporter need to know about one task.

Partial labels: the batch carries `<task>_labelled`, a per-sample bool (the data pipeline sets
it from each sample's `labelled_tasks`). A loss is computed over the labelled samples only (an
unlabelled sample contributes nothing, not "background" or "no objects"), and over a batch with
none it is a zero that stays connected to the graph; metrics skip the unlabelled samples.

A task is declared, not hard-wired: it builds its head, prepares its targets from a sample,
computes its loss, decodes raw head outputs into the contract's outputs (inside the exported
graph), describes those outputs for the metadata, and scores them with the shared metrics.
Register a new task with `@register_task` and name it in a recipe; the trainer never changes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Sequence, Type

import numpy as np
import torch
from torch import nn

from mtl_perception.contract import TaskSpec

TASKS: Dict[str, Type["Task"]] = {}


def labelled_mask(batch: Mapping[str, torch.Tensor], name: str, like: torch.Tensor) -> torch.Tensor:
    """`<name>_labelled` of the batch as a bool [B] on `like`'s device (all True without the key)."""
    mask = batch.get(f"{name}_labelled")
    if mask is None:
        return torch.ones(like.shape[0], dtype=torch.bool, device=like.device)
    return mask.to(device=like.device, dtype=torch.bool)


def labelled_rows(batch: Mapping[str, np.ndarray], size: int, name: str) -> np.ndarray:
    """Indices of the batch's samples labelled for task `name` (numpy side, for the metrics)."""
    mask = batch.get(f"{name}_labelled")
    return np.arange(size) if mask is None else np.flatnonzero(np.asarray(mask, bool))


def zero_loss(pred: Any) -> torch.Tensor:
    """A zero loss connected to every tensor of `pred` (so DDP and balancers see the head)."""
    if torch.is_tensor(pred):
        return pred.sum() * 0.0
    return sum(zero_loss(v) for v in (pred.values() if isinstance(pred, Mapping) else pred))


def register_task(cls: Type["Task"]) -> Type["Task"]:
    TASKS[cls.name] = cls
    return cls


@dataclass
class TaskOptions:
    """Options every task has; tasks extend this with their own."""

    weight: float = 1.0  # fixed loss weight (used by the `fixed` balancer)


@dataclass(frozen=True)
class DataInfo:
    """What a task may need to know about the data: class lists and the SR scale."""

    semantic_classes: Sequence[str]
    detection_classes: Sequence[str]
    sr_scale: int
    input_size: tuple  # (width, height)


class Task(abc.ABC):
    name: ClassVar[str]
    kind: ClassVar[str]  # a contract task kind
    Options: ClassVar[type] = TaskOptions

    def __init__(self, options: TaskOptions, info: DataInfo):
        self.options = options
        self.info = info

    @abc.abstractmethod
    def build_head(self, feature_channels: Mapping[str, int]) -> nn.Module:
        """The head: forward(features: dict, image01: Tensor[B,3,H,W]) -> raw prediction."""

    @abc.abstractmethod
    def prepare(self, sample: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Fixed-shape target arrays (keys prefixed with the task name) from one sample."""

    @abc.abstractmethod
    def loss(self, pred: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss of one batch."""

    @abc.abstractmethod
    def decode(self, pred: Any, image01: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Contract outputs by role, batch first; traced into the exported graph."""

    def export_head(self, head: nn.Module) -> "nn.Module | None":
        """For the exported graph only: a module (head inputs, image01) -> the decoded outputs
        by role, computing `decode(head(...))` in fewer operations, or None (the default) to
        export the head followed by `decode`. Given the BN-folded head; export verifies the
        graph against head + decode."""
        return None

    @abc.abstractmethod
    def spec(self, output_names: Mapping[str, str]) -> TaskSpec:
        """The metadata entry describing the decoded outputs."""

    @abc.abstractmethod
    def new_metric(self):
        """A fresh metric accumulator from mtl_perception.evaluation.metrics."""

    @abc.abstractmethod
    def update_metric(self, metric, decoded: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
        """Scores decoded outputs of a batch (numpy, batch first) against its targets."""

    def distill_loss(self, student: Any, teacher: Any, config) -> torch.Tensor:
        """Distillation from a frozen teacher's raw prediction: zero exactly when the student
        reproduces the teacher. `config` is the recipe's `distill` section
        (training.recipe.extras.DistillConfig: temperature, depth_beta, detection weights).
        A task without one cannot be distilled (training.engine.distill says so)."""
        raise NotImplementedError(f"task {self.name!r} declares no distillation loss")

    #: metric key used to summarise the task in logs and for model selection
    main_metric: ClassVar[str] = ""
