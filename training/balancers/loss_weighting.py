"""Balancers that only re-weight the losses: one ordinary backward, cost of fixed weights.

- `uw`   uncertainty weighting (Kendall et al. 2018), learned log σ² per task;
- `dwa`  dynamic weight average (Liu et al. 2019), from the last two epochs' mean losses;
- `dtp`  dynamic task prioritisation (Guo et al. 2018), focal weights from per-task KPIs;
- `rlw`  random loss weighting (Lin et al. 2022), fresh random weights every step;
- `famo` fast adaptive multitask optimisation (Liu et al. 2023), O(1) per step.

Scale convention: weights that form a distribution are multiplied by T (the number of tasks),
so "weight 1" means the same as the fixed balancer's default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Literal, Optional, Sequence, Union

import torch
from torch import nn

from training.balancers.base import BalanceContext, Balancer, BalancerOptions, all_reduce_mean, register_balancer


def _check_task_keys(what: str, mapping, tasks: Sequence[str]) -> None:
    unknown = sorted(set(mapping) - set(tasks))
    if unknown:
        raise ValueError(f"{what}: {unknown[0]!r} is not a task of this recipe (tasks: {', '.join(tasks)})")


# -- uncertainty weighting ----------------------------------------------------------------------
#: Kendall et al.'s two likelihood forms; classification-like tasks use 1/σ², regression 1/(2σ²)
DEFAULT_UW_FORMS = {"segmentation": "classification", "detection": "classification",
                    "depth": "regression", "super_resolution": "regression"}


@dataclass
class UncertaintyOptions(BalancerOptions):
    #: per task "regression" (L/(2σ²) + log σ) or "classification" (L/σ² + log σ); tasks not
    #: listed take DEFAULT_UW_FORMS by name, else "regression"
    forms: Dict[str, Literal["regression", "classification"]] = field(default_factory=dict)
    init_log_var: float = 0.0  # initial log σ² of every task
    lr: Optional[float] = None  # learning rate of log σ² (default: optim.lr)

    def check_tasks(self, tasks):
        _check_task_keys("forms", self.forms, tasks)


@register_balancer
class UncertaintyWeighting(Balancer):
    """Minimises Σ_t c_t exp(−s_t) L_t + ½ s_t over the network and s = log σ² (c = ½ for the
    regression form, 1 for classification). At fixed losses the optimum is σ² = L (regression)
    or σ² = 2L (classification). The logged weight is c_t exp(−s_t)."""

    name = "uw"
    subset_safe = True  # per-task state indexed by name: see balancers.base on absent tasks
    Options = UncertaintyOptions

    def __init__(self, task_weights, options: UncertaintyOptions):
        super().__init__(task_weights, options)
        forms = [options.forms.get(t, DEFAULT_UW_FORMS.get(t, "regression")) for t in self.tasks]
        self.register_buffer("coef", torch.tensor([0.5 if f == "regression" else 1.0 for f in forms]))
        self.log_var = nn.Parameter(torch.full((self.num_tasks,), float(options.init_log_var)))
        self.index = {t: i for i, t in enumerate(self.tasks)}

    def param_lr(self):
        return self.options.lr

    def weights(self) -> torch.Tensor:
        return self.coef * torch.exp(-self.log_var)

    def backward(self, losses, ctx: BalanceContext):
        # indexed by name: run on the present tasks only (balancers.base), an absent task's log σ²
        # is left out of the objective and gets no gradient
        rows = [self.index[t] for t in self.tasks]
        w = self.weights()[rows]
        total = (sum(w[k] * losses[t] for k, t in enumerate(self.tasks))
                 + 0.5 * self.log_var[rows].sum() / ctx.accumulate)
        ctx.scale_loss(total).backward()
        return self.weight_logs(w.detach().cpu().tolist())


# -- dynamic weight average -------------------------------------------------------------------
@dataclass
class DWAOptions(BalancerOptions):
    temperature: float = 2.0

    def check(self):
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")


@register_balancer
class DynamicWeightAverage(Balancer):
    """w_t = T exp(r_t / τ) / Σ_k exp(r_k / τ), r_t = L_t(e−1) / L_t(e−2) from the epoch-mean
    training losses of the last two epochs; all weights are 1 in the first two epochs."""

    name = "dwa"
    Options = DWAOptions

    def __init__(self, task_weights, options: DWAOptions):
        super().__init__(task_weights, options)
        self.register_buffer("history", torch.ones(2, self.num_tasks, dtype=torch.float64))  # [e−2, e−1]
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self._weights = self.compute_weights()

    def compute_weights(self):
        if int(self.epochs_seen) < 2:
            return [1.0] * self.num_tasks
        ratio = self.history[1] / self.history[0]
        return (self.num_tasks * torch.softmax(ratio / self.options.temperature, 0)).tolist()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._weights = self.compute_weights()

    def backward(self, losses, ctx: BalanceContext):
        self.weighted_backward(losses, self._weights, ctx)
        return self.weight_logs(self._weights)

    def epoch_end(self, epoch, mean_losses, metrics):
        self.history[0] = self.history[1].clone()
        self.history[1] = torch.tensor([mean_losses[t] for t in self.tasks], dtype=torch.float64)
        self.epochs_seen += 1
        self._weights = self.compute_weights()


# -- dynamic task prioritisation --------------------------------------------------------------
#: KPIs in [0, 1], higher is better (psnr is divided by `psnr_max`)
KPI_METRICS = ("miou", "pixel_acc", "delta1", "delta2", "delta3", "map50", "map50_95", "psnr")
DEFAULT_KPI = {"segmentation": "miou", "detection": "map50", "depth": "delta1", "super_resolution": "psnr"}


@dataclass
class DTPOptions(BalancerOptions):
    #: focusing parameter γ: one for every task, or per task (missing tasks: 1)
    gamma: Union[float, Dict[str, float]] = 1.0
    #: KPI metric per task (validation metric in [0, 1], higher better); default DEFAULT_KPI
    kpi: Dict[str, Literal[KPI_METRICS]] = field(default_factory=dict)  # type: ignore[valid-type]
    smoothing: float = 0.5  # α of the KPI moving average κ̄ ← α κ + (1 − α) κ̄
    psnr_max: float = 50.0  # a psnr KPI is psnr / psnr_max
    normalize: bool = True  # rescale the focal weights to sum to T

    def check(self):
        gammas = self.gamma.values() if isinstance(self.gamma, dict) else [self.gamma]
        if any(g < 0 for g in gammas):
            raise ValueError("gamma must be >= 0")
        if not 0 < self.smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        if self.psnr_max <= 0:
            raise ValueError("psnr_max must be positive")

    def check_tasks(self, tasks):
        _check_task_keys("kpi", self.kpi, tasks)
        if isinstance(self.gamma, dict):
            _check_task_keys("gamma", self.gamma, tasks)
        missing = [t for t in tasks if t not in self.kpi and t not in DEFAULT_KPI]
        if missing:
            raise ValueError(f"kpi: task {missing[0]!r} has no default KPI; name one of {', '.join(KPI_METRICS)}")


@register_balancer
class DynamicTaskPrioritization(Balancer):
    """w_t = −(1 − κ̄_t)^γ_t log κ̄_t (the task-level focal loss), κ̄_t a moving average of the
    task's KPI. The KPIs are the trainer's per-epoch validation metrics (Guo et al. use running
    training-batch KPIs; the balancer interface sees per-epoch metrics); until the first epoch
    ends every weight is 1."""

    name = "dtp"
    Options = DTPOptions

    def __init__(self, task_weights, options: DTPOptions):
        super().__init__(task_weights, options)
        g = options.gamma
        self.gammas = [float(g.get(t, 1.0)) if isinstance(g, dict) else float(g) for t in self.tasks]
        self.kpi_names = [options.kpi.get(t, DEFAULT_KPI.get(t)) for t in self.tasks]
        self.register_buffer("kpi", torch.full((self.num_tasks,), math.nan, dtype=torch.float64))
        self._weights = self.compute_weights()

    def focal(self, kappa: float, gamma: float) -> float:
        kappa = min(max(kappa, 1e-4), 1 - 1e-4)
        return -((1 - kappa) ** gamma) * math.log(kappa)

    def compute_weights(self):
        if torch.isnan(self.kpi).any():
            return [1.0] * self.num_tasks
        w = [self.focal(float(k), g) for k, g in zip(self.kpi, self.gammas)]
        if self.options.normalize:
            total = sum(w)
            w = [self.num_tasks * x / total for x in w]
        return w

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._weights = self.compute_weights()

    def backward(self, losses, ctx: BalanceContext):
        self.weighted_backward(losses, self._weights, ctx)
        return self.weight_logs(self._weights)

    def epoch_end(self, epoch, mean_losses, metrics):
        a = self.options.smoothing
        for i, (t, key) in enumerate(zip(self.tasks, self.kpi_names)):
            value = float(metrics[t][key])
            if key == "psnr":
                value /= self.options.psnr_max
            if not math.isfinite(value):
                continue
            old = float(self.kpi[i])
            self.kpi[i] = value if math.isnan(old) else a * value + (1 - a) * old
        self._weights = self.compute_weights()


# -- random loss weighting --------------------------------------------------------------------
@dataclass
class RLWOptions(BalancerOptions):
    seed: int = 0  # the weights of step s depend only on (seed, s): resumable, the same on every rank


@register_balancer
class RandomLossWeighting(Balancer):
    """w = T softmax(z), z ~ N(0, I) drawn anew for every optimizer step."""

    name = "rlw"
    subset_safe = True  # stateless: see balancers.base on absent tasks
    Options = RLWOptions

    def step_weights(self, step: int):
        gen = torch.Generator().manual_seed(self.options.seed * 1_000_003 + step)
        z = torch.randn(self.num_tasks, generator=gen, dtype=torch.float64)
        return (self.num_tasks * torch.softmax(z, 0)).tolist()

    def backward(self, losses, ctx: BalanceContext):
        weights = self.step_weights(ctx.step)
        self.weighted_backward(losses, weights, ctx)
        return self.weight_logs(weights)


# -- FAMO ------------------------------------------------------------------------------------
@dataclass
class FAMOOptions(BalancerOptions):
    lr: float = 0.025  # β, Adam learning rate of the task logits
    gamma: float = 0.001  # γ, weight decay of the logits
    eps: float = 1e-8

    def check(self):
        if self.lr <= 0 or self.gamma < 0 or self.eps <= 0:
            raise ValueError("lr and eps must be positive, gamma >= 0")


@register_balancer
class FAMO(Balancer):
    """Fast Adaptive Multitask Optimisation (Liu et al. 2023).

    Logits ξ, z = softmax(ξ). The update follows Σ_t z_t ∇log L_t / Σ_t (z_t / L_t), i.e.
    weights w_t = z_t / (L_t Σ_k z_k / L_k) on ∇L_t (logged × T). After each optimizer step ξ
    moves along −Jᵀδ, δ_t = log L_t(prev) − log L_t(now), J the softmax Jacobian, by Adam with
    L2 decay γ. FAMO's authors re-evaluate the loss on the same batch after the step (one
    extra forward); here the next step's loss stands in for it, which keeps the cost at that
    of fixed weights. Losses are averaged over micro-batches and ranks before the update.
    """

    name = "famo"
    Options = FAMOOptions

    def __init__(self, task_weights, options: FAMOOptions):
        super().__init__(task_weights, options)
        T = self.num_tasks
        for name in ("logits", "adam_m", "adam_v", "prev_loss", "step_loss"):
            self.register_buffer(name, torch.zeros(T, dtype=torch.float64))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))

    def loss_weights(self, values: torch.Tensor) -> torch.Tensor:
        z = torch.softmax(self.logits, 0)
        d = values + self.options.eps
        return z / (d * (z / d).sum())

    def backward(self, losses, ctx: BalanceContext):
        values = torch.tensor([float(losses[t].detach()) for t in self.tasks], dtype=torch.float64,
                              device=self.logits.device)
        w = (self.num_tasks * self.loss_weights(values)).tolist()
        self.weighted_backward(losses, w, ctx)
        self.step_loss += values  # losses arrive divided by ctx.accumulate: the sum is the mean
        return self.weight_logs(w)

    def logit_gradient(self, prev: torch.Tensor, now: torch.Tensor) -> torch.Tensor:
        """Jᵀδ for z = softmax(ξ): z ⊙ (δ − z·δ)."""
        eps = self.options.eps
        delta = torch.log(prev + eps) - torch.log(now + eps)
        z = torch.softmax(self.logits, 0)
        return z * (delta - (z * delta).sum())

    def after_step(self):
        now = all_reduce_mean(self.step_loss.clone())
        self.step_loss.zero_()
        if bool(self.has_prev) and bool(torch.isfinite(now).all()):
            grad = self.logit_gradient(self.prev_loss, now) + self.options.gamma * self.logits
            b1, b2 = 0.9, 0.999  # torch.optim.Adam's defaults, as the authors use
            self.adam_t += 1
            t = int(self.adam_t)
            self.adam_m.mul_(b1).add_(grad, alpha=1 - b1)
            self.adam_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            m_hat = self.adam_m / (1 - b1 ** t)
            v_hat = self.adam_v / (1 - b2 ** t)
            self.logits -= self.options.lr * m_hat / (v_hat.sqrt() + 1e-8)
        self.prev_loss.copy_(now)
        self.has_prev.fill_(True)
