"""The balancer interface: how per-task losses become one parameter update.

Modelled on Nash-MTL's `WeightMethod`: a balancer never sees the model. Each step it receives
the per-task losses and a `BalanceContext` (shared parameters, the last shared layer's
parameters, optionally the shared representation, and the AMP loss scale), performs the backward
pass itself (so gradient-manipulating methods can write `.grad` directly), and returns values to
log: at least the effective weight of every task. Learnable balancer parameters are ordinary
`nn.Parameter`s of the balancer; the trainer puts them in their own optimizer group. Stateful
balancers update themselves in `after_step` (after the optimizer step) and `epoch_end`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Type

import torch
from torch import nn

BALANCERS: Dict[str, Type["Balancer"]] = {}


def register_balancer(cls: Type["Balancer"]) -> Type["Balancer"]:
    BALANCERS[cls.name] = cls
    return cls


@dataclass
class BalanceContext:
    shared_params: Sequence[nn.Parameter]
    last_shared_params: Sequence[nn.Parameter] = ()
    representation: Optional[Sequence[torch.Tensor]] = None  # shared features, for MGDA-UB
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss  # GradScaler.scale under AMP
    step: int = 0
    epoch: int = 0
    extras: Dict[str, object] = field(default_factory=dict)


@dataclass
class BalancerOptions:
    """Hyper-parameters; each balancer subclasses this and validates in `check`."""


class Balancer(nn.Module, abc.ABC):
    name: ClassVar[str]
    Options: ClassVar[type] = BalancerOptions
    #: whether the trainer must pass the shared representation in the context
    needs_representation: ClassVar[bool] = False

    def __init__(self, task_weights: Mapping[str, float], options: BalancerOptions):
        """task_weights: each task's `weight` from the recipe (fixed weights, or initial ones)."""
        super().__init__()
        self.tasks: List[str] = list(task_weights)
        self.task_weights: Dict[str, float] = dict(task_weights)
        self.options = options

    @abc.abstractmethod
    def backward(self, losses: Mapping[str, torch.Tensor], ctx: BalanceContext) -> Dict[str, float]:
        """Backpropagates the combined objective; returns {"weight/<task>": w, ...} to log."""

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float], metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Called once per epoch with the epoch's mean training losses and validation metrics."""
