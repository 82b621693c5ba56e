"""MGDA (Sener & Koltun 2018): the min-norm point of the convex hull of the task gradients.

- `mgda`     on the gradients of all shared parameters (T backward passes over one graph);
- `mgda_ub`  the upper-bound variant: on the gradients of the shared representation, which cost
  only the heads' backward passes; the trunk then gets one backward of Σ α_t dL_t/dZ.

The min-norm weights are found by Frank–Wolfe (`solvers.min_norm_weights`) and scaled to sum to
T; they weight every parameter's update, as training on Σ α_t L_t would (the authors' code).
With `normalization` the weights are found for the normalised gradients g_t / s_t and then
applied to the losses as they are, as in the authors' code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from training.balancers.base import BalanceContext, Balancer, BalancerOptions, register_balancer
from training.balancers.gradients import (
    SharedGradientBalancer,
    add_to_grads,
    all_finite,
    backward_through,
    combine,
    gram,
    head_params,
    representation,
    task_gradients,
)
from training.balancers.solvers import min_norm_weights


@dataclass
class MGDAOptions(BalancerOptions):
    #: gradient normalisation before the solve (Sener & Koltun's code): none, l2 (‖g‖), loss (L),
    #: loss+ (L ‖g‖); the update itself uses the unnormalised gradients
    normalization: Literal["none", "l2", "loss", "loss+"] = "none"
    max_iter: int = 250  # Frank–Wolfe iterations
    tol: float = 1e-6  # stop when the duality gap is below tol x the squared norm

    def check(self):
        if self.max_iter < 1 or self.tol <= 0:
            raise ValueError("max_iter and tol must be positive")


def mgda_weights(M: np.ndarray, losses: Sequence[float], options: MGDAOptions) -> np.ndarray:
    norms = np.sqrt(np.maximum(np.diag(M), 1e-30))
    scale = {"none": np.ones_like(norms), "l2": norms, "loss": np.asarray(losses),
             "loss+": np.asarray(losses) * norms}[options.normalization]
    scale = np.maximum(scale, 1e-30)
    # as in the authors' code, the weights found for the normalised gradients multiply the
    # unnormalised losses: normalisation changes the weighting, not just the solve
    return len(scale) * min_norm_weights(M / np.outer(scale, scale), options.max_iter, options.tol)


@register_balancer
class MGDA(SharedGradientBalancer):
    name = "mgda"
    subset_safe = True  # stateless: see balancers.base on absent tasks
    Options = MGDAOptions

    def solve(self, M, losses, ctx):
        alpha = mgda_weights(M, losses, self.options)
        return alpha, alpha


@register_balancer
class MGDAUB(Balancer):
    name = "mgda_ub"
    subset_safe = True  # stateless: see balancers.base on absent tasks
    Options = MGDAOptions
    needs_representation = True
    manual_gradients = True

    def backward(self, losses, ctx: BalanceContext):
        z, trunk = representation(ctx)
        own = head_params(ctx, self.tasks)
        rows, heads = task_gradients([losses[t] for t in self.tasks], z, ctx, own)
        values = [float(losses[t].detach()) for t in self.tasks]
        alpha = mgda_weights(gram(rows), values, self.options) if all_finite(rows) else np.ones(self.num_tasks)
        backward_through(trunk, combine(rows, alpha))
        for params, grads, w in zip(own, heads, alpha):
            add_to_grads(params, grads, float(w))
        return self.weight_logs(alpha)
