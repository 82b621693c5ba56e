"""Fixed per-task weights (`tasks.<name>.weight` in the recipe): the baseline for every balancer.

`mtl-train sweep` grid-searches these weights (the usual static baseline)."""
from __future__ import annotations

from training.balancers.base import BalanceContext, Balancer, register_balancer


@register_balancer
class FixedWeights(Balancer):
    name = "fixed"
    subset_safe = True  # stateless: see balancers.base on absent tasks

    def backward(self, losses, ctx: BalanceContext):
        weights = [self.task_weights[t] for t in self.tasks]
        self.weighted_backward(losses, weights, ctx)
        return self.weight_logs(weights)
