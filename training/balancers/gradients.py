"""Per-task gradients without one retained graph per task, and writing them back into `.grad`.

Gradient methods need each task's gradient on the shared parameters (a T x P matrix). They get
it from ONE graph: `torch.autograd.grad` once per task, keeping the graph only until the last
task, each row copied into a flat float32 buffer as soon as it is computed, so the extra memory
is T x P floats, not T graphs. The same call returns the task's own (head) parameter gradients,
so no further backward pass is needed for the heads. Results are *added* to `.grad`
(gradient accumulation), and everything goes through `ctx.scale_loss` (AMP); the solvers'
weights are invariant to one common scale factor (Nash-MTL divides the loss scale out), so
loss-scaled gradients are used as they are.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from training.balancers.base import BalanceContext, Balancer

Grads = Tuple[Optional[torch.Tensor], ...]


def flatten_into(out: torch.Tensor, grads: Sequence[Optional[torch.Tensor]], like: Sequence[torch.Tensor]) -> None:
    """Writes `grads` (None = zero; shapes of `like`) one after the other into the flat `out`."""
    offset = 0
    for g, p in zip(grads, like):
        n = p.numel()
        if g is None:
            out[offset:offset + n].zero_()
        else:
            out[offset:offset + n].copy_(g.reshape(-1))
        offset += n


def add_flat_to_grads(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """`.grad += flat` for the parameters that `flat` lists one after the other."""
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset:offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.add_(piece)
        offset += n


def add_to_grads(params: Sequence[torch.Tensor], grads: Grads, weight: float = 1.0) -> None:
    """`.grad += weight * grad` for each parameter (None grads are skipped)."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        g = g.detach().to(p.dtype)
        if p.grad is None:
            p.grad = g * weight
        else:
            p.grad.add_(g, alpha=weight)


def task_gradients(losses: Sequence[torch.Tensor], wrt: Sequence[torch.Tensor], ctx: BalanceContext,
                   own: Optional[Sequence[Sequence[torch.Tensor]]] = None) -> Tuple[torch.Tensor, List[Grads]]:
    """Row i of the returned [T, P] float32 matrix is d scale(L_i) / d wrt, flattened; the list
    holds each task's gradients on its `own[i]` parameters (heads). One graph, kept until the
    last task."""
    wrt = list(wrt)
    count = sum(p.numel() for p in wrt)
    device = wrt[0].device
    rows = torch.empty(len(losses), count, dtype=torch.float32, device=device)
    heads: List[Grads] = []
    for i, loss in enumerate(losses):
        mine = list(own[i]) if own is not None else []
        grads = torch.autograd.grad(ctx.scale_loss(loss), wrt + mine, retain_graph=i < len(losses) - 1,
                                    allow_unused=True)
        flatten_into(rows[i], grads[:len(wrt)], wrt)
        heads.append(tuple(grads[len(wrt):]))
    return rows, heads


def head_params(ctx: BalanceContext, tasks: Sequence[str]) -> List[Sequence[torch.Tensor]]:
    """Each task's own parameters; gradient methods cannot work without them (heads would not
    learn), so a context without them is an error rather than a silent no-op."""
    missing = [t for t in tasks if t not in ctx.task_params]
    if missing:
        raise ValueError(f"this balancer needs ctx.task_params for every task (missing: {', '.join(missing)})")
    return [list(ctx.task_params[t]) for t in tasks]


def gram(rows: torch.Tensor) -> np.ndarray:
    """G G^T in float64 (a T x T numpy array), the only thing most solvers look at."""
    rows64 = rows.double()
    return (rows64 @ rows64.T).cpu().numpy()


def combine(rows: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Σ_i w_i row_i."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=rows.device)
    return w @ rows


def all_finite(rows: torch.Tensor) -> bool:
    """False when a gradient overflowed (fp16 AMP): the solvers are skipped for that step and the
    plain sum is written, so GradScaler sees the overflow and skips the optimizer step."""
    return bool(torch.isfinite(rows).all())


class SharedGradientBalancer(Balancer):
    """Base of the methods that need every task's gradient on the shared parameters.

    One `task_gradients` pass gives the T x P matrix G and the heads' gradients; `solve(M,
    losses)` (M = G Gᵀ) returns the weights of the shared update Σ α_i g_i and each head's
    weight; both are *added* to `.grad`. With an overflowed (non-finite) gradient the plain sum
    is written instead, so GradScaler skips the step, and no state is updated.
    """

    manual_gradients = True

    def solve(self, M: np.ndarray, losses: Sequence[float], ctx: BalanceContext) -> Tuple[np.ndarray, np.ndarray]:
        """(shared weights α, head weights) for the Gram matrix M of the task gradients."""
        raise NotImplementedError

    def differentiated_losses(self, losses: Mapping[str, torch.Tensor]) -> List[torch.Tensor]:
        """The losses whose gradients are taken (IMTL scales them)."""
        return [losses[t] for t in self.tasks]

    def backward(self, losses, ctx: BalanceContext):
        own = head_params(ctx, self.tasks)
        rows, heads = task_gradients(self.differentiated_losses(losses), ctx.shared_params, ctx, own)
        values = [float(losses[t].detach()) for t in self.tasks]
        if all_finite(rows):
            shared_w, head_w = self.solve(gram(rows), values, ctx)
        else:
            shared_w = head_w = np.ones(self.num_tasks)
        add_flat_to_grads(ctx.shared_params, combine(rows, shared_w))
        for params, grads, w in zip(own, heads, head_w):
            add_to_grads(params, grads, float(w))
        return self.weight_logs(shared_w)


def backward_through(representation: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Backpropagates a flat gradient of the representation tensors into the shared trunk
    (accumulating into `.grad`): one trunk backward for any number of tasks."""
    torch.autograd.backward(list(representation), split_like(flat, representation))


def split_like(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The flat vector cut into views shaped (and typed) like `tensors`."""
    out, offset = [], 0
    for z in tensors:
        out.append(flat[offset:offset + z.numel()].view_as(z).to(z.dtype))
        offset += z.numel()
    return out


def representation(ctx: BalanceContext) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(the features the heads read, cut from the trunk; the trunk outputs to backpropagate into)."""
    if not ctx.representation or not ctx.trunk_features:
        raise ValueError("this balancer needs ctx.representation and ctx.trunk_features (needs_representation)")
    return list(ctx.representation), list(ctx.trunk_features)
