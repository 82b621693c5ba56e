"""Fixed per-task weights (`tasks.<name>.weight` in the recipe): the baseline for every balancer."""
from __future__ import annotations

from .base import BalanceContext, Balancer, register_balancer


@register_balancer
class FixedWeights(Balancer):
    name = "fixed"

    def backward(self, losses, ctx: BalanceContext):
        total = sum(self.task_weights[t] * losses[t] for t in self.tasks)
        ctx.scale_loss(total).backward()
        return {f"weight/{t}": w for t, w in self.task_weights.items()}
