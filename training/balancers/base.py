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

Absent tasks (partial labels: no sample of the step, on any rank, is labelled for a task). The
trainer calls `balance(losses, present, ctx)`, which applies one rule for every method:

- all tasks present: `backward` as usual;
- a `subset_safe` balancer (its weights are a function of the present tasks' losses or
  gradients alone: fixed, rlw, mgda, mgda_ub, pcgrad, cagrad, aligned_mtl; or its per-task
  state is indexed by name and only the present tasks' entries take part: uw) runs `backward`
  on the present tasks only, as if the recipe had just those tasks (MGDA's min-norm point,
  PCGrad's projections, CAGrad's ball and RLW's softmax are over the present gradients/tasks;
  uncertainty's absent log σ² is outside the objective, so it gets no gradient);
- a stateful balancer (dwa, dtp, famo, gradnorm, imtl, nash_mtl) holds its weights: the
  present tasks get the weights it used in its last full step (the recipe's weights before
  one), nothing of its state changes (no gradient reaches its parameters, e.g. GradNorm's
  weights, and `after_step` is skipped for that optimizer step; DWA's loss history moves only at
  the end of an epoch in which every task had labels).

Either way each absent task's (zero, graph-connected) loss rides along as a `0 *` term, so every
parameter is in the backward graph and DDP's reducer runs the same collectives on every rank.
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
    #: whether `backward` may be run on the present tasks only (stateless weights; see above)
    subset_safe: ClassVar[bool] = False

    def __init__(self, task_weights: Mapping[str, float], options: BalancerOptions):
        """task_weights: each task's `weight` from the recipe (fixed weights, or initial ones)."""
        super().__init__()
        self.tasks: List[str] = list(task_weights)
        self.task_weights: Dict[str, float] = dict(task_weights)
        self.options = options
        self._held: Dict[str, float] = dict(task_weights)  # weights of the last full step
        self._partial_step = False  # a micro-batch of this optimizer step lacked a task

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @abc.abstractmethod
    def backward(self, losses: Mapping[str, torch.Tensor], ctx: BalanceContext) -> Dict[str, float]:
        """Backpropagates the combined objective; returns {"weight/<task>": w, ...} to log."""

    def after_step(self) -> None:
        """Called after every optimizer step (except steps with an absent task, see above)."""

    def balance(self, losses: Mapping[str, torch.Tensor], present: Sequence[str],
                ctx: BalanceContext) -> Dict[str, float]:
        """`backward` with the absent-task rule of the module docstring; `present` are the tasks
        labelled in this micro-batch on some rank (the same list on every rank)."""
        present = [t for t in self.tasks if t in set(present)]
        if len(present) == len(self.tasks):
            logged = self.backward(losses, ctx)
            self._held.update({t: float(logged[f"weight/{t}"]) for t in self.tasks if f"weight/{t}" in logged})
            return logged
        self._partial_step = True
        ride = sum(0.0 * losses[t] for t in self.tasks if t not in present)
        if not present:
            self._plain_backward(ride, ctx)
            return {}
        if self.subset_safe:
            return self._subset_backward(losses, present, ride, ctx)
        self._plain_backward(sum(self._held[t] * losses[t] for t in present) + ride, ctx)
        return {f"weight/{t}": self._held[t] for t in present}

    def _plain_backward(self, total: torch.Tensor, ctx: BalanceContext) -> None:
        """Backward of `total`; with `needs_representation` (heads read features cut from the
        trunk) the features' gradients are carried on into the trunk."""
        ctx.scale_loss(total).backward()
        if self.needs_representation:
            cut, trunk = list(ctx.representation or ()), list(ctx.trunk_features or ())
            grads = [(c.grad if c.grad is not None else torch.zeros_like(c)).to(t.dtype) for c, t in zip(cut, trunk)]
            torch.autograd.backward(trunk, grads)

    def _subset_backward(self, losses, present, ride, ctx) -> Dict[str, float]:
        """`backward` as if the recipe had the present tasks only."""
        tasks = self.tasks
        sub = {t: losses[t] for t in present}
        sub[present[0]] = sub[present[0]] + ride
        self.tasks = present
        try:
            return self.backward(sub, ctx)
        finally:
            self.tasks = tasks

    def step_end(self) -> None:
        """After an optimizer step: `after_step`, unless a micro-batch of it lacked a task."""
        if not self._partial_step:
            self.after_step()
        self._partial_step = False

    def epoch_end(self, epoch: int, mean_losses: Mapping[str, float],
                  metrics: Mapping[str, Mapping[str, float]]) -> None:
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
