"""The balancer interface: how per-task losses become one parameter update.

Modelled on Nash-MTL's `WeightMethod`: a balancer never sees the model. Each step it receives
the per-task losses and a `BalanceContext` (shared parameters, the last shared layer's
parameters, each task's own parameters, optionally the shared representation, and the AMP
loss-scaling function), performs the backward pass itself (so gradient-manipulating methods
can write `.grad` directly), and returns values to log: at least the effective weight of every
task. Learnable balancer parameters are ordinary `nn.Parameter`s of the balancer; the trainer
puts them in their own optimizer group. Stateful balancers update themselves in `after_step`
(after the optimizer step) and `epoch_end`; their non-parameter state lives in buffers, so it
is checkpointed with `state_dict()` and a resumed run continues exactly.

Rules every balancer keeps, so that it works with gradient accumulation, AMP and DDP:

- gradients are *added* to `.grad` (never overwritten): with `optim.accumulate = k` the trainer
  calls `backward` k times (losses already divided by k) before one optimizer step;
- every backward goes through `ctx.scale_loss` (GradScaler under fp16 AMP); the gradient
  methods' weights are invariant to one common scale factor, so scaled gradients need no
  unscaling, except Nash-MTL's (its update has norm √T), which divides the loss scale out;
- a balancer that writes gradients without a backward through the model sets
  `manual_gradients = True`; under DDP the trainer then runs the step in `no_sync()` and
  averages the gradients across ranks itself. Statistics that must agree across ranks are
  averaged with `all_reduce_mean`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Type

import torch
import torch.distributed as dist
from torch import nn

BALANCERS: Dict[str, Type["Balancer"]] = {}


def register_balancer(cls: Type["Balancer"]) -> Type["Balancer"]:
    BALANCERS[cls.name] = cls
    return cls


@dataclass
class BalanceContext:
    shared_params: Sequence[nn.Parameter]
    last_shared_params: Sequence[nn.Parameter] = ()
    #: with `needs_representation`: the shared features as the heads read them, cut from the
    #: trunk's graph (leaf tensors), and `trunk_features`, the trunk outputs they were copied from;
    #: such a balancer must backpropagate into `trunk_features` itself (MGDA-UB, GradNorm)
    representation: Optional[Sequence[torch.Tensor]] = None
    trunk_features: Optional[Sequence[torch.Tensor]] = None
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss  # GradScaler.scale under AMP
    step: int = 0  # optimizer steps taken so far
    epoch: int = 0
    #: each task's own (head) parameters, for methods that weight head gradients themselves
    task_params: Mapping[str, Sequence[nn.Parameter]] = field(default_factory=dict)
    #: micro-batches per optimizer step; the losses passed to `backward` are already divided by it
    accumulate: int = 1
    extras: Dict[str, object] = field(default_factory=dict)


@dataclass
class BalancerOptions:
    """Hyper-parameters; each balancer subclasses this and validates in `check` (and, when
    options name tasks, in `check_tasks(tasks)`, called with the recipe's task names)."""


class Balancer(nn.Module, abc.ABC):
    name: ClassVar[str]
    Options: ClassVar[type] = BalancerOptions
    #: whether the trainer must pass the shared representation in the context
    needs_representation: ClassVar[bool] = False
    #: whether `backward` writes gradients without a backward pass through the model (see above)
    manual_gradients: ClassVar[bool] = False

    def __init__(self, task_weights: Mapping[str, float], options: BalancerOptions):
        """task_weights: each task's `weight` from the recipe (fixed weights, or initial ones)."""
        super().__init__()
        self.tasks: List[str] = list(task_weights)
        self.task_weights: Dict[str, float] = dict(task_weights)
        self.options = options

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @abc.abstractmethod
    def backward(self, losses: Mapping[str, torch.Tensor], ctx: BalanceContext) -> Dict[str, float]:
        """Backpropagates the combined objective; returns {"weight/<task>": w, ...} to log."""

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float], metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Called once per epoch with the epoch's mean training losses (averaged over all ranks)
        and the validation metrics (the same on every rank)."""

    def param_lr(self) -> Optional[float]:
        """Learning rate of this balancer's parameter group (None: the recipe's `optim.lr`)."""
        return None

    # -- helpers -------------------------------------------------------------------------------
    def weight_logs(self, weights: Sequence[float]) -> Dict[str, float]:
        return {f"weight/{t}": float(w) for t, w in zip(self.tasks, weights)}

    def weighted_backward(self, losses: Mapping[str, torch.Tensor], weights: Sequence[float],
                          ctx: BalanceContext, extra: Optional[torch.Tensor] = None) -> None:
        """Backward of Σ w_t L_t (+ extra), through the AMP loss scaler."""
        total = sum(float(w) * losses[t] for t, w in zip(self.tasks, weights))
        if extra is not None:
            total = total + extra
        ctx.scale_loss(total).backward()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over all DDP ranks (in place; the tensor itself when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl" and not tensor.is_cuda:  # NCCL reduces CUDA tensors only
            staged = tensor.cuda()
            dist.all_reduce(staged)
            tensor.copy_(staged.cpu())
        else:
            dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """Averages the `.grad` of `params` over all DDP ranks in one flat all-reduce (no-op alone)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
