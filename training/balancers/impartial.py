"""Methods that choose weights so that no task dominates the shared update.

- `imtl`      IMTL (Liu et al. 2021): IMTL-G's closed-form weights, which give the update equal
              projections on every task's unit gradient, plus (variant "hybrid", the paper's
              full method) IMTL-L's learned loss scales e^{s_t} with regulariser −s_t;
- `nash_mtl`  Nash-MTL (Navon et al. 2022): the Nash bargaining solution G Gᵀ α = 1/α.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from training.balancers.base import BalanceContext, BalancerOptions, register_balancer
from training.balancers.gradients import SharedGradientBalancer
from training.balancers.solvers import imtl_weights, nash_weights


@dataclass
class IMTLOptions(BalancerOptions):
    variant: Literal["hybrid", "gradient"] = "hybrid"  # IMTL (G + L) or IMTL-G alone


@register_balancer
class IMTL(SharedGradientBalancer):
    """Shared update Σ α_t ∇(e^{s_t} L_t) with α from IMTL-G (Σ α = 1, logged × T as the
    effective weights α_t e^{s_t}); heads get ∇(e^{s_t} L_t); s is learned by minimising
    Σ_t e^{s_t} L_t − s_t (IMTL-L). With variant "gradient", s stays 0."""

    name = "imtl"
    Options = IMTLOptions

    def __init__(self, task_weights, options: IMTLOptions):
        super().__init__(task_weights, options)
        self.log_scale = nn.Parameter(torch.zeros(self.num_tasks), requires_grad=options.variant == "hybrid")

    def differentiated_losses(self, losses):
        scale = torch.exp(self.log_scale.detach())
        return [scale[i] * losses[t] for i, t in enumerate(self.tasks)]

    def solve(self, M, losses, ctx):
        return self.num_tasks * imtl_weights(M), np.ones(self.num_tasks)

    def backward(self, losses, ctx: BalanceContext):
        logs = super().backward(losses, ctx)
        scale = torch.exp(self.log_scale.detach()).cpu()
        logs = {k: v * float(scale[i]) for i, (k, v) in enumerate(logs.items())}
        if self.options.variant == "hybrid":
            detached = torch.stack([losses[t].detach().float() for t in self.tasks]).to(self.log_scale.device)
            objective = (torch.exp(self.log_scale) * detached - self.log_scale / ctx.accumulate).sum()
            ctx.scale_loss(objective).backward()
        return logs


@dataclass
class NashMTLOptions(BalancerOptions):
    update_every: int = 1  # solve every k-th step, reuse the weights in between (cheaper)
    max_iter: int = 100  # Newton iterations (converges in a handful)

    def check(self):
        if self.update_every < 1 or self.max_iter < 1:
            raise ValueError("update_every and max_iter must be positive")


@register_balancer
class NashMTL(SharedGradientBalancer):
    """α solves G Gᵀ α = 1/α on the raw Gram matrix of the task gradients, as in the paper and
    the reference implementations (the authors' and LibMTL's): the update Σ α_t g_t then has
    norm √T (before clipping) whatever the losses' scale, and α_t ∝ 1/‖g_t‖ for orthogonal
    gradients. Every parameter gets Σ α_t g_t, as training on Σ α_t L_t. The reference solves
    the equations by a sequence of convex programs (cvxpy); here they are solved exactly by
    Newton's method on their convex potential (`solvers.nash_weights`). Under fp16 AMP the
    gradients arrive multiplied by the loss scale s: α is solved for M / s² (the true
    gradients), so the unscaled update is the same as without AMP."""

    name = "nash_mtl"
    Options = NashMTLOptions

    def __init__(self, task_weights, options: NashMTLOptions):
        super().__init__(task_weights, options)
        self.register_buffer("alpha", torch.ones(self.num_tasks, dtype=torch.float64))

    def solve(self, M, losses, ctx):
        scale = float(ctx.scale_loss(torch.ones((), device=self.alpha.device)))  # AMP loss scale (1 without)
        alpha = nash_weights(M / scale ** 2, self.alpha.cpu().numpy(), self.options.max_iter)
        self.alpha.copy_(torch.from_numpy(alpha))
        return alpha, alpha

    def backward(self, losses, ctx: BalanceContext):
        if ctx.step % self.options.update_every == 0:
            return super().backward(losses, ctx)
        alpha = self.alpha.tolist()
        self.weighted_backward(losses, alpha, ctx)
        return self.weight_logs(alpha)
