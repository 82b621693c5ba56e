"""Gradient surgery: methods that reshape the shared gradient where task gradients conflict.

- `pcgrad`       PCGrad (Yu et al. 2020): project away conflicting components, task by task;
- `cagrad`       CAGrad (Liu et al. 2021): the update within a ball around the mean gradient
                 that maximises the worst task's improvement;
- `aligned_mtl`  Aligned-MTL (Senushkin et al. 2023): align the gradient matrix's principal
                 components (condition number 1).

All three change only the shared parameters' update (computed on the Gram matrix, see
`solvers`); each head gets its own task's gradient unchanged, as in the authors' code. The
logged weights are the effective weights of the shared update Σ_t α_t g_t.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from training.balancers.base import BalancerOptions, register_balancer
from training.balancers.gradients import SharedGradientBalancer
from training.balancers.solvers import aligned_weights, cagrad_weights, pcgrad_weights


@dataclass
class PCGradOptions(BalancerOptions):
    reduction: Literal["sum", "mean"] = "sum"  # of the projected gradients
    seed: int = 0  # projection orders depend only on (seed, step): resumable, equal on every rank


@register_balancer
class PCGrad(SharedGradientBalancer):
    name = "pcgrad"
    subset_safe = True  # stateless: see balancers.base on absent tasks
    Options = PCGradOptions

    def orders(self, step: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(self.options.seed * 1_000_003 + step)
        return np.stack([torch.randperm(self.num_tasks, generator=gen).numpy() for _ in range(self.num_tasks)])

    def solve(self, M, losses, ctx):
        alpha = pcgrad_weights(M, self.orders(ctx.step))
        if self.options.reduction == "mean":
            alpha = alpha / self.num_tasks
        return alpha, np.ones(self.num_tasks)


@dataclass
class CAGradOptions(BalancerOptions):
    c: float = 0.4  # radius of the ball around the mean gradient, relative to its norm
    rescale: Literal[0, 1, 2] = 1  # divide the update by 1 (0), 1 + c² (1) or 1 + c (2)
    max_iter: int = 500  # projected-gradient iterations of the dual

    def check(self):
        if self.c < 0 or self.max_iter < 1:
            raise ValueError("c must be >= 0 and max_iter positive")


@register_balancer
class CAGrad(SharedGradientBalancer):
    """d = g_0 + (c ‖g_0‖ / ‖g_w‖) g_w with w the dual solution; the update is T d / rescale
    (T: on the scale of the summed losses, as the authors' code)."""

    name = "cagrad"
    subset_safe = True  # stateless: see balancers.base on absent tasks
    Options = CAGradOptions

    def solve(self, M, losses, ctx):
        T, c = self.num_tasks, self.options.c
        w = cagrad_weights(M, c, self.options.max_iter)
        gw_norm = np.sqrt(max(float(w @ M @ w), 0.0))
        lam = c * np.sqrt(max(float(M.mean()), 0.0)) / (gw_norm + 1e-12)
        alpha = np.full(T, 1.0 / T) + lam * w
        alpha /= {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[self.options.rescale]
        return T * alpha, np.ones(T)


@dataclass
class AlignedMTLOptions(BalancerOptions):
    scale: Literal["min", "median", "rmse"] = "min"  # the common singular value


@register_balancer
class AlignedMTL(SharedGradientBalancer):
    name = "aligned_mtl"
    subset_safe = True  # stateless: see balancers.base on absent tasks
    Options = AlignedMTLOptions

    def solve(self, M, losses, ctx):
        return aligned_weights(M, self.options.scale), np.ones(self.num_tasks)
