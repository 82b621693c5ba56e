"""GradNorm (Chen et al. 2018), exactly Algorithm 1.

Learnable weights w (initially 1). Each step, with W the last shared layer's parameters:

    G_t = ‖∇_W w_t L_t‖₂,   Ḡ = mean_t G_t,   r_t = L̃_t / mean_k L̃_k,   L̃_t = L_t / L_t(0)
    L_grad = Σ_t | G_t − Ḡ · r_t^α |          (the targets Ḡ · r_t^α held constant)

w gets ∇_w L_grad (the network never does), the network gets ∇ Σ_t w_t L_t, and after the
optimizer step w is renormalised to Σ_t w_t = T. Because G_t = w_t ‖∇_W L_t‖ is linear in w_t,
∇_{w_t} L_grad = sign(G_t − target_t) ‖∇_W L_t‖ exactly, with no second-order backward.

Cost: each task's gradient is taken only down to the shared representation (the heads'
backward passes) and from there to W (one layer); the trunk gets a single backward of
Σ_t w_t dL_t/dZ. L(0) is the first step's losses, averaged over DDP ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from training.balancers.base import BalanceContext, Balancer, BalancerOptions, all_reduce_mean, register_balancer
from training.balancers.gradients import (
    add_to_grads,
    all_finite,
    backward_through,
    combine,
    head_params,
    representation,
    split_like,
    task_gradients,
)


@dataclass
class GradNormOptions(BalancerOptions):
    alpha: float = 1.5  # asymmetry: how strongly slow tasks are pulled back
    lr: Optional[float] = None  # learning rate of the weights (default: optim.lr)
    min_weight: float = 1e-3  # floor applied before renormalising, keeps every weight positive

    def check(self):
        if self.alpha < 0 or self.min_weight < 0:
            raise ValueError("alpha and min_weight must be >= 0")


@register_balancer
class GradNorm(Balancer):
    name = "gradnorm"
    Options = GradNormOptions
    needs_representation = True
    manual_gradients = True

    def __init__(self, task_weights, options: GradNormOptions):
        super().__init__(task_weights, options)
        self.weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))

    def param_lr(self):
        return self.options.lr

    def weight_gradient(self, grad_norms: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """∇_w L_grad for ‖∇_W L_t‖ = grad_norms and the current losses (targets constant)."""
        w = self.weights.detach().double()
        G = w * grad_norms
        ratio = losses / self.initial_losses
        r = ratio / ratio.mean()
        target = G.mean() * r ** self.options.alpha
        return torch.sign(G - target) * grad_norms

    def backward(self, losses, ctx: BalanceContext):
        z, trunk = representation(ctx)
        own = head_params(ctx, self.tasks)
        rows, heads = task_gradients([losses[t] for t in self.tasks], z, ctx, own)
        values = all_reduce_mean(torch.tensor([float(losses[t].detach()) for t in self.tasks], dtype=torch.float64,
                                              device=self.initial_losses.device))
        if not bool(self.has_initial):
            self.initial_losses.copy_(values)
            self.has_initial.fill_(True)
        w = self.weights.detach().cpu().numpy().astype(np.float64)
        if all_finite(rows):
            last = list(ctx.last_shared_params)
            norms = []
            for i in range(self.num_tasks):
                grads = torch.autograd.grad(trunk, last, grad_outputs=split_like(rows[i], trunk), retain_graph=True,
                                            allow_unused=True)
                norms.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
            grad_w = self.weight_gradient(torch.tensor(norms, dtype=torch.float64, device=values.device), values)
            grad_w = grad_w.to(self.weights.dtype)
            self.weights.grad = grad_w if self.weights.grad is None else self.weights.grad + grad_w
        backward_through(trunk, combine(rows, w))
        for params, grads, wt in zip(own, heads, w):
            add_to_grads(params, grads, float(wt))
        return self.weight_logs(w)

    def after_step(self):
        with torch.no_grad():
            self.weights.clamp_(min=self.options.min_weight)
            self.weights.mul_(self.num_tasks / self.weights.sum())

