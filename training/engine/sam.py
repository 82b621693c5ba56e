"""Sharpness-aware minimisation (SAM, Foret et al. 2021) as a wrapper around any torch optimizer.

SAM minimises the worst loss in a ρ-ball around the weights: with the gradient g at w it moves
to the (first-order) worst point w + e(w), e(w) = ρ·g/‖g‖, takes the gradient there, restores w
and lets the base optimizer apply that gradient. The adaptive variant (ASAM, Kwon et al. 2021)
measures the ball in the weights' own scale, T_w = |w| + η elementwise:
e(w) = ρ·T_w²g/‖T_w g‖, which makes the sharpness insensitive to rescaling of the weights.

One update, as the trainer must run it (`optim.accumulate = k` micro-batches per step)::

    # first pass: the usual k forward/balancer.backward calls; .grad holds the balanced gradient
    sam.first_step()                       # w -> w + e(w); e(w) remembered
    sam.zero_grad()
    with frozen_bn_stats(model), frozen_buffers(balancer):  # the second pass moves no BN statistics
                                                            # and no balancer statistics
        ...the same k micro-batches: forward, balancer.backward (gradients at w + e)...
    # optional: scaler.unscale_(sam.base); clip_grad_norm_(...)
    sam.second_step()                      # restore w, base.step()   (or: sam.restore(); scaler.step(sam.base))
    sam.zero_grad()

Why this shape:

- The perturbation follows whatever is in `.grad`, so with a balancer SAM perturbs along the
  *balanced* gradient, and with accumulation along the accumulated one; the second pass must see
  the same micro-batches (and the same balancer weights) for the update to be the SAM update of
  that step. Balancers that record statistics inside `backward` see two calls per step: run
  the second pass under `frozen_buffers(balancer)` too (FAMO counts the step's losses there).
- One global norm over all perturbed parameter groups (not per group or per tensor), as in the
  paper: the ball is in the space of all weights.
- **AMP / GradScaler (fp16 on CUDA).** e(w) is invariant to a common scale factor of the
  gradients (‖c·g‖ = c‖g‖), so `first_step` works on the *scaled* gradients as they are. Do NOT
  call `scaler.unscale_` before `first_step`: GradScaler allows one unscale per optimizer step,
  and that one belongs to the second pass (before clipping and `scaler.step`). If the first
  pass's gradients are not finite, `first_step` does not perturb and returns False; the second
  pass then is a plain step (and GradScaler skips it if its gradients overflow too).
- Groups with `"sam": False` in their param-group dict (e.g. the balancer's learnable task
  weights) are neither perturbed nor part of the norm; the base optimizer still updates them.
- LR schedulers and GradScaler take the *base* optimizer (`sam.base`): SAM is not an
  `torch.optim.Optimizer` subclass, it only orchestrates two passes around one.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List

import torch
from torch import nn


class SAM:
    """SAM / ASAM around `base` (any torch optimizer).

    rho: radius of the neighbourhood (typical: 0.05 for SAM; ASAM needs larger, e.g. 0.5–2).
    adaptive: ASAM's elementwise scaling T_w = |w| + eta.
    eps: added to the global norm (a zero gradient perturbs nothing instead of dividing by 0).
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.01, eps: float = 1e-12):
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        if eta < 0:
            raise ValueError(f"ASAM eta must be >= 0, got {eta}")
        self.base = base
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.eta = float(eta)
        self.eps = float(eps)
        #: e(w) per perturbed parameter while a perturbation is pending (between the two steps)
        self._e: Dict[nn.Parameter, torch.Tensor] = {}

    # -- delegation --------------------------------------------------------------------------
    @property
    def param_groups(self) -> List[dict]:
        return self.base.param_groups

    @property
    def state(self):
        return self.base.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The base optimizer's state: SAM itself has none between updates, so a SAM run's
        checkpoint can resume a plain run and vice versa."""
        if self._e:
            raise RuntimeError("SAM.state_dict() between first_step and second_step: the weights are perturbed")
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._e.clear()
        self.base.load_state_dict(state)

    @property
    def perturbed(self) -> bool:
        return bool(self._e)

    # -- the two steps -----------------------------------------------------------------------
    def _perturbed_params(self) -> Iterator[nn.Parameter]:
        for group in self.base.param_groups:
            if not group.get("sam", True):
                continue
            for p in group["params"]:
                if p.grad is not None:
                    yield p

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """‖T_w g‖ over all perturbed parameters of all groups (T_w = 1 for plain SAM)."""
        norms = []
        for p in self._perturbed_params():
            g = p.grad.float()
            if self.adaptive:
                g = (p.float().abs() + self.eta) * g
            norms.append(torch.linalg.vector_norm(g))
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))

    @torch.no_grad()
    def first_step(self) -> bool:
        """w -> w + e(w) from the gradients now in `.grad`; returns False (and does not perturb)
        when the gradient norm is not finite (e.g. an fp16 overflow)."""
        if self._e:
            raise RuntimeError("SAM.first_step() twice without second_step()/restore()")
        norm = self.grad_norm()
        if not bool(torch.isfinite(norm)):
            return False
        scale = self.rho / (float(norm) + self.eps)
        for p in self._perturbed_params():
            e = p.grad.to(p.dtype) * scale
            if self.adaptive:
                e = e * (p.abs() + self.eta) ** 2
            p.add_(e)
            self._e[p] = e
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """w + e(w) -> w (the gradients in `.grad` are left alone)."""
        for p, e in self._e.items():
            p.sub_(e)
        self._e.clear()

    def second_step(self) -> None:
        """Restores w and applies the base optimizer's update with the gradients taken at
        w + e(w) (the second pass)."""
        self.restore()
        self.base.step()

    def step(self, closure: Callable[[], object]) -> object:
        """Convenience for standalone use: `.grad` already holds the first pass; `closure` runs
        the second pass (forward + backward, no zero_grad inside). Returns the closure's value."""
        self.first_step()
        self.zero_grad()
        with torch.enable_grad():
            value = closure()
        self.second_step()
        return value


def batchnorm_modules(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Every BatchNorm's running_mean, running_var and num_batches_tracked are saved on entry and
    restored exactly on exit, so SAM's second forward pass (in training mode, normalising with
    the batch statistics as it must) leaves the statistics as one plain forward would."""
    saved = []
    for m in batchnorm_modules(model):
        buffers = {name: getattr(m, name) for name in ("running_mean", "running_var", "num_batches_tracked")}
        saved.append((m, {k: v.detach().clone() for k, v in buffers.items() if v is not None}))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)


@contextlib.contextmanager
def frozen_buffers(module: nn.Module):
    """Every buffer of `module` saved on entry and restored exactly on exit. For SAM's second
    pass through a balancer whose `backward` records statistics (FAMO adds the step's losses to
    `step_loss`; they must be the losses at w, counted once): `with frozen_buffers(balancer):`."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def sam_from_config(base: torch.optim.Optimizer, config) -> SAM:
    """SAM from a `recipe_extras.SAMConfig` (rho, adaptive, eta)."""
    return SAM(base, rho=config.rho, adaptive=config.adaptive, eta=config.eta)


__all__ = ["SAM", "frozen_bn_stats", "frozen_buffers", "batchnorm_modules", "sam_from_config"]
