"""Loss balancers against independent references: closed forms, brute force, hand-derived steps,
invariances; gradient accumulation, AMP and DDP behaviour; every method trains."""
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.balancers import BALANCERS, BalanceContext, solvers
from training.engine.logs import CsvLog
from training.engine.trainer import LAST, Trainer
from training.recipe.config import ConfigError, build
from training.recipe.core import recipe_from_dict

pytestmark = pytest.mark.tiny_data(train=16, val=4)

TASKS = ("a", "b", "c")


def make(name, tasks=TASKS, **options):
    cls = BALANCERS[name]
    return cls({t: 1.0 for t in tasks}, build(cls.Options, options, "balancer.options"))


class Toy(nn.Module):
    """A shared linear trunk (its output is the representation) and one linear head per task."""

    def __init__(self, tasks=TASKS, dim=5, hidden=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Linear(dim, hidden)
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in tasks})

    def losses(self, x, y, cut=False):
        z = self.trunk(x)
        h = z.detach().requires_grad_() if cut else z
        losses = {t: F.mse_loss(head(h).squeeze(-1), y[:, i]) for i, (t, head) in enumerate(self.heads.items())}
        return losses, z, h

    def ctx(self, z, h, step=0, accumulate=1, scale_loss=None):
        extra = {"scale_loss": scale_loss} if scale_loss else {}
        return BalanceContext(shared_params=list(self.trunk.parameters()),
                              last_shared_params=list(self.trunk.parameters()),
                              representation=[h], trunk_features=[z], step=step, accumulate=accumulate,
                              task_params={t: list(m.parameters()) for t, m in self.heads.items()}, **extra)

    def grads(self):
        return torch.cat([p.grad.reshape(-1) for p in self.parameters() if p.grad is not None])

    def shared_grad(self):
        return torch.cat([p.grad.reshape(-1) for p in self.trunk.parameters()])


def toy_data(n=16, dim=5, tasks=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randn(n, tasks, generator=gen)


def one_backward(balancer, model, x, y, step=0, accumulate=1, scale_loss=None):
    losses, z, h = model.losses(x, y, cut=balancer.needs_representation)
    if accumulate > 1:
        losses = {t: v / accumulate for t, v in losses.items()}
    return balancer.backward(losses, model.ctx(z, h, step, accumulate, scale_loss))


def task_matrix(model, x, y):
    """G: every task's gradient on the shared parameters, by separate plain backward passes."""
    rows = []
    for t in model.heads:
        model.zero_grad(set_to_none=True)
        losses, _, _ = model.losses(x, y)
        losses[t].backward()
        rows.append(model.shared_grad().clone())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows).double().numpy()


# -- closed forms and brute force -------------------------------------------------------------
def test_two_task_min_norm_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(20):
        g1, g2 = rng.normal(size=(2, 6))
        gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)  # weight of g1
        G = np.stack([g1, g2])
        alpha = solvers.min_norm_weights(G @ G.T)
        assert alpha == pytest.approx([gamma, 1 - gamma], abs=1e-9)
    # g1·g2 >= |g1|²: the segment's closest point to the origin is g1 itself
    assert solvers.min_norm_weights(np.array([[1.0, 1.5], [1.5, 4.0]])) == pytest.approx([1.0, 0.0])


def test_min_norm_kkt_conditions_for_many_tasks():
    """u = Σ α g is the min-norm point of the hull iff g_i·u >= |u|² with equality where α_i > 0."""
    rng = np.random.default_rng(1)
    for T in (3, 4, 6):
        G = rng.normal(size=(T, 8)) + 0.3
        alpha = solvers.min_norm_weights(G @ G.T, tol=1e-10)
        u = alpha @ G
        assert alpha.sum() == pytest.approx(1) and (alpha >= 0).all()
        assert (G @ u >= u @ u - 1e-4 * (u @ u)).all()
        active = alpha > 1e-3
        assert G[active] @ u == pytest.approx(np.full(active.sum(), u @ u), rel=2e-3)


def test_mgda_balancer_weights_the_update_with_the_two_task_solution():
    model, (x, y) = Toy(("a", "b")), toy_data(tasks=2)
    G = task_matrix(model, x, y)
    g1, g2 = G
    gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
    logs = one_backward(make("mgda", ("a", "b")), model, x, y)
    assert [logs["weight/a"], logs["weight/b"]] == pytest.approx([2 * gamma, 2 * (1 - gamma)], abs=1e-6)
    expected = 2 * (gamma * g1 + (1 - gamma) * g2)
    assert model.shared_grad().double().numpy() == pytest.approx(expected, abs=1e-5)


def reference_pcgrad(G, orders):
    """PCGrad on explicit vectors (Yu et al. 2020, Algorithm 1)."""
    out = []
    for i, g in enumerate(G):
        g = g.copy()
        for j in orders[i]:
            if j != i and g @ G[j] < 0:
                g -= (g @ G[j]) / (G[j] @ G[j]) * G[j]
        out.append(g)
    return np.sum(out, axis=0)


def test_pcgrad_projection_on_conflicting_and_aligned_gradients():
    conflicting = np.array([[1.0, 0.0], [-1.0, 1.0]])
    alpha = solvers.pcgrad_weights(conflicting @ conflicting.T, np.array([[0, 1], [1, 0]]))
    # g1' = g1 - (g1·g2/|g2|²) g2 = (0.5, 0.5); g2' = g2 - (g2·g1/|g1|²) g1 = (0, 1)
    assert alpha @ conflicting == pytest.approx([0.5, 1.5])
    aligned = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert solvers.pcgrad_weights(aligned @ aligned.T, np.array([[0, 1], [1, 0]])) == pytest.approx([1, 1])
    rng = np.random.default_rng(2)
    for _ in range(20):
        G = rng.normal(size=(4, 5))
        orders = np.stack([rng.permutation(4) for _ in range(4)])
        assert solvers.pcgrad_weights(G @ G.T, orders) @ G == pytest.approx(reference_pcgrad(G, orders), abs=1e-9)


def test_pcgrad_balancer_writes_the_projected_sum():
    model, (x, y) = Toy(), toy_data()
    G = task_matrix(model, x, y)
    balancer = make("pcgrad", seed=3)
    one_backward(balancer, model, x, y, step=5)
    assert model.shared_grad().double().numpy() == pytest.approx(reference_pcgrad(G, balancer.orders(5)), abs=1e-5)


def test_cagrad_matches_a_brute_force_solve_of_its_dual():
    rng = np.random.default_rng(3)
    grid = [np.array([i, j, 400 - i - j]) / 400 for i in range(401) for j in range(401 - i)]
    grid = np.array(grid)
    for c in (0.2, 0.5, 0.9):
        G = rng.normal(size=(3, 6)) + np.array([0.5, 0, 0, 0, 0, 0])
        M = G @ G.T
        g0_norm = np.sqrt(M.mean())
        values = grid @ M.mean(axis=1) + c * g0_norm * np.sqrt(np.einsum("ni,ij,nj->n", grid, M, grid))
        w = solvers.cagrad_weights(M, c)
        ours = w @ M.mean(axis=1) + c * g0_norm * np.sqrt(w @ M @ w)
        assert ours <= values.min() + 1e-9
        assert ours == pytest.approx(values.min(), abs=1e-4 * abs(values.min()) + 1e-6)


def test_cagrad_update_is_the_mean_gradient_plus_the_dual_direction():
    model, (x, y) = Toy(), toy_data()
    G = task_matrix(model, x, y)
    c = 0.5
    logs = one_backward(make("cagrad", c=c, rescale=1), model, x, y)
    M = G @ G.T
    w = solvers.cagrad_weights(M, c)
    gw = w @ G
    d = G.mean(0) + c * np.linalg.norm(G.mean(0)) / np.linalg.norm(gw) * gw
    assert model.shared_grad().double().numpy() == pytest.approx(3 * d / (1 + c ** 2), abs=1e-5)
    ratio = np.linalg.norm(G.mean(0)) / np.linalg.norm(gw)
    assert sum(logs.values()) == pytest.approx(3 * (1 + c * ratio) / (1 + c ** 2))


def test_nash_solution_satisfies_the_bargaining_equations():
    rng = np.random.default_rng(4)
    for T in (2, 3, 4, 8):
        G = rng.normal(size=(T, 20)) + 0.2
        M = G @ G.T
        M /= np.linalg.norm(M)
        alpha = solvers.nash_weights(M)
        assert (alpha > 0).all()
        assert M @ alpha == pytest.approx(1 / alpha, rel=1e-7)
    # orthogonal gradients: α_i = 1/|g_i|, for the raw Gram matrix at any scale
    assert solvers.nash_weights(np.diag([4.0, 0.25])) == pytest.approx([0.5, 2.0], rel=1e-8)
    M = np.array([[4.0, 0.3], [0.3, 0.25]])
    assert solvers.nash_weights(1e6 * M) == pytest.approx(solvers.nash_weights(M) / 1e3, rel=1e-8)


def _nash_update(loss_scales, scale_loss=None):
    """Nash-MTL's shared update on the toy model with each task's loss multiplied by a factor."""
    model, (x, y) = Toy(), toy_data()
    losses, z, h = model.losses(x, y)
    make("nash_mtl").backward({t: s * losses[t] for s, t in zip(loss_scales, TASKS)},
                              model.ctx(z, h, scale_loss=scale_loss))
    return model.shared_grad().double()


def test_nash_update_norm_is_sqrt_T_whatever_the_losses_scale():
    """‖Σ α g‖² = αᵀ M α = Σ α_i (1/α_i) = T for the raw Gram matrix (the paper's equations):
    one loss x100 (or all x1e-3) changes the direction's weights, never the update's norm."""
    for scales in ((1.0, 1.0, 1.0), (100.0, 1.0, 1.0), (1e-3, 1e-3, 1e-3), (10.0, 0.1, 3.0)):
        assert float(_nash_update(scales).norm()) == pytest.approx(math.sqrt(3), rel=1e-5)


def test_nash_orthogonal_gradients_closed_form_and_amp_scale():
    """g_1 = (3, 0), g_2 = (0, 0.5): α = (1/3, 2), update (1, 1) of norm √2, whatever the
    losses' scale; under a loss scale s (AMP) the written gradient is s (1, 1), which
    GradScaler's unscale turns back into (1, 1). (The solver's ridge, 1e-9 of the normalised
    Gram matrix's mean diagonal, biases α_b by ~1e-4 when the norms are 600x apart.)"""
    for k, s in ((1.0, 1.0), (100.0, 1.0), (1.0, 1024.0), (0.01, 65536.0)):
        w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        losses = {"a": k * 3.0 * w[0], "b": 0.5 * w[1]}
        # backward() below calls scale_loss in this same iteration, with this s
        ctx = BalanceContext(shared_params=[w], task_params={"a": [], "b": []},
                             scale_loss=lambda loss: s * loss)  # noqa: B023
        logs = make("nash_mtl", tasks=("a", "b")).backward(losses, ctx)
        assert w.grad.numpy() == pytest.approx([s, s], rel=2e-4)
        assert [logs["weight/a"], logs["weight/b"]] == pytest.approx([1 / (3 * k), 2.0], rel=2e-4)


def test_imtl_update_has_equal_projections_on_every_task_direction():
    rng = np.random.default_rng(5)
    for T in (2, 3, 5):
        G = rng.normal(size=(T, 9))
        alpha = solvers.imtl_weights(G @ G.T)
        g = alpha @ G
        u = G / np.linalg.norm(G, axis=1, keepdims=True)
        assert alpha.sum() == pytest.approx(1)
        assert u @ g == pytest.approx(np.full(T, (u @ g)[0]), rel=1e-8)


def test_aligned_mtl_weights_from_the_svd_of_the_gradients():
    rng = np.random.default_rng(6)
    G = rng.normal(size=(3, 10))  # rows: task gradients
    U, S, Vt = np.linalg.svd(G.T, full_matrices=False)  # G.T = U S Vᵀ (P x T)
    aligned = S.min() * U @ Vt  # the aligned gradient matrix, orthogonal equal-norm columns
    assert aligned.T @ aligned == pytest.approx(S.min() ** 2 * np.eye(3), abs=1e-9)
    alpha = solvers.aligned_weights(G @ G.T)
    assert alpha @ G == pytest.approx(aligned.sum(axis=1), abs=1e-9)


def test_uncertainty_optimum_sigma_squared_equals_the_loss():
    """At fixed losses the minimiser of c e^{-s} L + s/2 is σ² = e^s = 2cL: L (regression), 2L
    (classification)."""
    balancer = make("uw", ("depth", "segmentation"), init_log_var=0.0)
    fixed = {"depth": torch.tensor(0.3), "segmentation": torch.tensor(2.5)}
    opt = torch.optim.Adam(balancer.parameters(), lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        dummy = {t: v.clone().requires_grad_() for t, v in fixed.items()}
        balancer.backward(dummy, BalanceContext(shared_params=[]))
        opt.step()
    sigma2 = torch.exp(balancer.log_var.detach())
    assert sigma2.tolist() == pytest.approx([0.3, 2 * 2.5], rel=1e-3)


def test_dwa_weights_from_a_loss_history():
    balancer = make("dwa", temperature=2.0)
    history = [{"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 0.5, "b": 1.8, "c": 4.4}, {"a": 0.4, "b": 0.9, "c": 4.4}]
    assert balancer._weights == [1.0, 1.0, 1.0]
    balancer.epoch_end(0, history[0], {})
    assert balancer._weights == [1.0, 1.0, 1.0]  # the first two epochs are unweighted
    for epoch in (1, 2):
        balancer.epoch_end(epoch, history[epoch], {})
        r = [history[epoch][t] / history[epoch - 1][t] for t in TASKS]
        e = [math.exp(v / 2.0) for v in r]
        assert balancer._weights == pytest.approx([3 * v / sum(e) for v in e], rel=1e-12)
    # the state is in buffers: a fresh balancer loaded from the state dict has the same weights
    other = make("dwa", temperature=2.0)
    other.load_state_dict(balancer.state_dict())
    assert other._weights == balancer._weights


def test_dtp_focal_weights_from_kpis():
    balancer = make("dtp", ("segmentation", "depth"), gamma={"segmentation": 2.0}, smoothing=0.5, normalize=False)
    metrics = {"segmentation": {"miou": 0.4}, "depth": {"delta1": 0.9}}
    balancer.epoch_end(0, {}, metrics)
    assert balancer._weights == pytest.approx([-(0.6 ** 2) * math.log(0.4), -(0.1 ** 1) * math.log(0.9)])
    balancer.epoch_end(1, {}, {"segmentation": {"miou": 0.6}, "depth": {"delta1": 0.5}})
    k = [0.5 * 0.6 + 0.5 * 0.4, 0.5 * 0.5 + 0.5 * 0.9]  # moving averages
    assert balancer._weights == pytest.approx([-((1 - k[0]) ** 2) * math.log(k[0]), -(1 - k[1]) * math.log(k[1])])


def test_gradnorm_weight_update_against_a_hand_derived_step():
    """Linear trunk z = W x + b, heads y_t = a_tᵀ z + c_t, L_t = mean (y_t - target)²: the
    gradient of L_t on W is (2/n) Σ_k e_tk a_t x_kᵀ, which gives G_t, targets and the step."""
    model, (x, y) = Toy(), toy_data()
    lr, alpha = 0.1, 1.5
    balancer = make("gradnorm", alpha=alpha, min_weight=0.0)
    opt = torch.optim.SGD(balancer.parameters(), lr=lr)
    with torch.no_grad():
        balancer.weights.copy_(torch.tensor([0.5, 1.0, 1.5]))
    L0 = np.array([1.3, 0.7, 2.0])  # initial losses, as if recorded at step 0
    balancer.initial_losses.copy_(torch.tensor(L0, dtype=torch.float64))
    balancer.has_initial.fill_(True)

    X, Y = x.double().numpy(), y.double().numpy()
    W, b = model.trunk.weight.detach().double().numpy(), model.trunk.bias.detach().double().numpy()
    Z = X @ W.T + b
    norms, losses = [], []
    for i, head in enumerate(model.heads.values()):
        a, c = head.weight.detach().double().numpy()[0], head.bias.detach().double().numpy()[0]
        e = Z @ a + c - Y[:, i]
        losses.append(np.mean(e ** 2))
        dW = 2 / len(e) * np.outer(a, e @ X)  # dL/dW
        db = 2 / len(e) * a * e.sum()
        norms.append(np.sqrt((dW ** 2).sum() + (db ** 2).sum()))
    w = np.array([0.5, 1.0, 1.5])
    G = w * np.array(norms)
    ratio = np.array(losses) / L0
    target = G.mean() * (ratio / ratio.mean()) ** alpha
    expected = w - lr * np.sign(G - target) * np.array(norms)
    expected = 3 * expected / expected.sum()

    one_backward(balancer, model, x, y)
    opt.step()
    balancer.after_step()
    assert balancer.weights.detach().double().numpy() == pytest.approx(expected, rel=1e-5)


def test_famo_weight_update_formula():
    balancer = make("famo", lr=0.025, gamma=0.001)
    balancer.logits.copy_(torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64))
    prev, now = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([0.8, 2.1, 0.45], dtype=torch.float64)
    # Jᵀδ of z = softmax(ξ), by autograd on the softmax (an independent route)
    xi = balancer.logits.clone().requires_grad_()
    delta = torch.log(prev + 1e-8) - torch.log(now + 1e-8)
    (reference,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
    assert balancer.logit_gradient(prev, now) == pytest.approx(reference.numpy(), rel=1e-10)
    # one update: Adam's first step moves every logit by lr against the sign of its gradient
    balancer.prev_loss.copy_(prev)
    balancer.has_prev.fill_(True)
    balancer.step_loss.copy_(now)
    before = balancer.logits.clone()
    balancer.after_step()
    g = reference + 0.001 * before  # with the L2 decay γ ξ
    # Adam's first step: m̂ = g, v̂ = g², so ξ moves by −lr g / (|g| + 1e-8)
    assert (balancer.logits - before).numpy() == pytest.approx((-0.025 * g / (g.abs() + 1e-8)).numpy(), rel=1e-9)
    assert balancer.prev_loss.tolist() == now.tolist()


def test_famo_gradient_is_that_of_the_weighted_log_losses():
    model, (x, y) = Toy(), toy_data()
    balancer = make("famo")
    balancer.logits.copy_(torch.tensor([0.3, 0.0, -0.5], dtype=torch.float64))
    one_backward(balancer, model, x, y)
    ours = model.grads().clone()
    model.zero_grad(set_to_none=True)
    losses, _, _ = model.losses(x, y)
    z = torch.softmax(balancer.logits, 0).float()
    vec = torch.stack([losses[t] for t in TASKS])
    c = (z / vec.detach()).sum()
    (3 * (z * torch.log(vec)).sum() / c).backward()  # FAMO's objective, times T
    assert ours == pytest.approx(model.grads().numpy(), rel=1e-5, abs=1e-7)


# -- invariances -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["imtl", "nash_mtl", "famo", "mgda"])
def test_scale_invariant_methods_ignore_rescaled_losses(name):
    """IMTL, Nash-MTL and FAMO are invariant to rescaling each task's loss (the update's
    direction does not change); MGDA is not, and serves as the control."""
    options = {"variant": "gradient"} if name == "imtl" else {}
    directions = []
    for scales in ((1.0, 1.0, 1.0), (10.0, 0.1, 3.0)):
        model, (x, y) = Toy(), toy_data()
        balancer = make(name, **options)
        losses, z, h = model.losses(x, y)
        balancer.backward({t: s * losses[t] for s, t in zip(scales, TASKS)}, model.ctx(z, h))
        g = model.shared_grad().double()
        directions.append(g / g.norm())
    cosine = float(directions[0] @ directions[1])
    if name == "mgda":
        assert cosine < 0.999
    else:
        assert cosine == pytest.approx(1.0, abs=1e-6)


def test_dwa_weights_ignore_rescaled_losses():
    a, b = make("dwa"), make("dwa")
    for epoch, losses in enumerate([{"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.7, "b": 1.9, "c": 2.0}]):
        a.epoch_end(epoch, losses, {})
        b.epoch_end(epoch, {"a": 100 * losses["a"], "b": 0.01 * losses["b"], "c": losses["c"]}, {})
    assert a._weights == pytest.approx(b._weights, rel=1e-12)


# -- accumulation, AMP -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fixed", "uw", "dwa", "rlw", "dtp"])
def test_two_half_batches_equal_one_full_batch(name):
    (x, y) = toy_data(n=16)
    full, halves = Toy(), Toy()
    one_backward(make(name), full, x, y, step=3)
    balancer = make(name)
    for part in (slice(0, 8), slice(8, 16)):
        one_backward(balancer, halves, x[part], y[part], step=3, accumulate=2)
    assert halves.grads().numpy() == pytest.approx(full.grads().numpy(), rel=1e-5, abs=1e-7)
    if name == "uw":  # the log σ² gradients too
        reference = make(name)
        one_backward(reference, Toy(), x, y)
        assert balancer.log_var.grad.numpy() == pytest.approx(reference.log_var.grad.numpy(), rel=1e-5)


GRADIENT_METHODS = sorted(n for n, c in BALANCERS.items() if c.manual_gradients)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_methods_accumulate_into_grad(name):
    (x, y) = toy_data(n=16)
    separate = []
    for part in (slice(0, 8), slice(8, 16)):
        model = Toy()
        one_backward(make(name), model, x[part], y[part], step=2, accumulate=2)
        separate.append(model.grads().clone())
    model, balancer = Toy(), make(name)
    for part in (slice(0, 8), slice(8, 16)):
        one_backward(balancer, model, x[part], y[part], step=2, accumulate=2)
    assert model.grads().numpy() == pytest.approx((separate[0] + separate[1]).numpy(), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_methods_are_invariant_to_the_amp_loss_scale(name):
    """Under GradScaler every backward is of scale·L: the written gradients are scale × the
    unscaled ones, so unscaling before the optimizer step gives the same update."""
    (x, y) = toy_data()
    plain, scaled = Toy(), Toy()
    one_backward(make(name), plain, x, y)
    one_backward(make(name), scaled, x, y, scale_loss=lambda loss: loss * 1024.0)
    assert (scaled.grads() / 1024.0).numpy() == pytest.approx(plain.grads().numpy(), rel=1e-4, abs=1e-8)


# -- recipes ---------------------------------------------------------------------------------
def test_options_are_validated_like_every_recipe_key():
    base = {"tasks": {"segmentation": {}, "depth": {}}}
    with pytest.raises(ConfigError, match="balancer.options.alpha: expected a number"):
        recipe_from_dict({**base, "balancer": {"name": "gradnorm", "options": {"alpha": "high"}}})
    with pytest.raises(ConfigError, match="balancer.options.temp: unknown key"):
        recipe_from_dict({**base, "balancer": {"name": "dwa", "options": {"temp": 2}}})
    with pytest.raises(ConfigError, match="balancer.options: temperature must be positive"):
        recipe_from_dict({**base, "balancer": {"name": "dwa", "options": {"temperature": 0}}})
    with pytest.raises(ConfigError, match="balancer.options: forms: 'detection' is not a task of this recipe"):
        recipe_from_dict({**base, "balancer": {"name": "uw", "options": {"forms": {"detection": "regression"}}}})
    with pytest.raises(ConfigError, match="balancer.options.normalization: expected one of"):
        recipe_from_dict({**base, "balancer": {"name": "mgda", "options": {"normalization": "l1"}}})
    dtp = {"gamma": {"depth": 2}, "kpi": {"depth": "delta2"}}
    recipe_from_dict({**base, "balancer": {"name": "dtp", "options": dtp}})


# -- every method trains; resume, AMP, DDP -------------------------------------------------------
def tiny_recipe(data_root, out_dir, balancer, **optim):
    return recipe_from_dict({
        "name": "tiny", "seed": 7, "out_dir": str(out_dir),
        "data": {"train": str(data_root / "train"), "val": str(data_root / "val"), "input_size": [64, 32]},
        "model": {"channels": [8, 8, 16, 16, 16], "blocks": [0, 0, 0, 0], "fpn_channels": 16},
        "balancer": {"name": balancer},
        "optim": {"epochs": 2, "batch_size": 4, "warmup_steps": 1, "lr": 0.003, **optim},
    })


@pytest.fixture(scope="module")
def tiny_trainer(tiny_data, tmp_path_factory):
    recipe = tiny_recipe(tiny_data, tmp_path_factory.mktemp("run"), "fixed", epochs=1, accumulate=2)
    return Trainer(recipe, progress=False, plots=False)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_trains_the_real_model(tiny_trainer, tmp_path, name):
    """One epoch of the trainer's loop (accumulating two micro-batches per step): finite losses
    and weights, every parameter updated, except the head of a task the balancer gave weight 0
    in every step (MGDA's min-norm point may lie on a face of the simplex: such a head gets a
    zero gradient, so only decoupled weight decay moves its decayed weights)."""
    trainer = use_balancer(tiny_trainer, name)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    log = CsvLog(tmp_path / "steps.csv")
    means = trainer.train_epoch(log)
    assert all(np.isfinite(v) for v in means.values())
    assert len(log.rows) == 2 and all(np.isfinite(v) for row in log.rows for v in row.values())
    assert {f"weight/{t}" for t in trainer.tasks} <= set(log.rows[-1])
    idle = [t for t in trainer.tasks if all(row[f"weight/{t}"] == 0 for row in log.rows)]
    assert len(idle) < len(trainer.tasks)
    unchanged = [k for k, v in trainer.model.named_parameters() if torch.equal(v, before[k])
                 and not any(k.startswith(f"heads.{t}.") for t in idle)]
    assert not unchanged, unchanged[:3]


def use_balancer(trainer, name):
    trainer.balancer = make(name, tuple(trainer.tasks))
    trainer.optimizer = trainer._make_optimizer()
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, trainer._lr_factor)
    return trainer


def test_amp_bf16_training_on_cpu(tiny_trainer):
    """bf16 autocast with a balancer that differentiates the (bf16) shared representation."""
    trainer = use_balancer(tiny_trainer, "mgda_ub")
    trainer.recipe.optim.amp = True
    try:
        means = trainer.train_epoch(None)
    finally:
        trainer.recipe.optim.amp = False
    assert all(np.isfinite(v) for v in means.values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("name", ["famo", "gradnorm"])
def test_resume_is_exact_with_stateful_balancers(tiny_data, tmp_path, name):
    whole = Trainer(tiny_recipe(tiny_data, tmp_path / "whole", name), progress=False, plots=name == "famo")
    whole.fit()
    Trainer(tiny_recipe(tiny_data, tmp_path / "split", name), progress=False, plots=False).fit(stop_after_epoch=1)
    torch.manual_seed(999)
    second = Trainer(tiny_recipe(tiny_data, tmp_path / "split", name), progress=False, plots=False)
    second.fit()
    for key, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[key]), key
    for key, tensor in whole.balancer.state_dict().items():
        assert torch.equal(tensor, second.balancer.state_dict()[key]), key
    if name == "famo":  # the per-run plot of the weights
        assert (tmp_path / "whole" / "weights.png").stat().st_size > 1000


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data_root, out_dir, name, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(tiny_recipe(Path(data_root), Path(out_dir), name, epochs=1), progress=False, plots=False)
        trainer.fit()
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]
                         + [b.detach().double().reshape(-1).float() for b in trainer.balancer.buffers()]
                         + [p.detach().reshape(-1) for p in trainer.balancer.parameters()])
        results[rank] = flat.numpy()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["pcgrad", "gradnorm"])
def test_ddp_two_processes_stay_in_step(tiny_data, tmp_path, name):
    """Gradient-writing balancers under DDP (gloo, 2 CPU processes): the ranks end with identical
    parameters and balancer state."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path), name, results), nprocs=2)
    assert np.array_equal(results[0], results[1])
    assert load_step(tmp_path) == 16 // (4 * 2)


def load_step(out_dir):
    from training.engine.checkpoint import load_checkpoint

    return load_checkpoint(Path(out_dir) / LAST)["step"]


# -- the comparison's selection protocol ------------------------------------------------------
def _epoch(n, val, test):
    return {"epoch": n, "val": val, "test": test}


def test_comparison_selects_epochs_on_validation_and_reports_test():
    from mtl_perception.evaluation.metrics import delta_m
    from training.experiments.compare import summarize

    seg = lambda v: {"segmentation": {"miou": v}}  # noqa: E731
    dep = lambda v: {"depth": {"abs_rel": v}}  # noqa: E731
    both = lambda s, d: {**seg(s), **dep(d)}  # noqa: E731
    runs = {
        # single-task: validation peaks at epoch 2 (test would prefer epoch 3)
        "single/segmentation/seed0": [_epoch(1, seg(0.4), seg(0.40)), _epoch(2, seg(0.6), seg(0.50)),
                                      _epoch(3, seg(0.5), seg(0.70))],
        "single/depth/seed0": [_epoch(1, dep(0.3), dep(0.30)), _epoch(2, dep(0.2), dep(0.25))],
        # multi-task: validation Δm is best at epoch 1, test at epoch 2
        "m/seed0": [_epoch(1, both(0.6, 0.2), both(0.45, 0.3)), _epoch(2, both(0.5, 0.3), both(0.9, 0.1))],
    }
    summary = summarize(runs, ["m"], [0], ["segmentation", "depth"])
    row = summary["m"]["per_seed"][0]
    assert row["epoch"] == 1
    single_test = {"segmentation/miou": 0.50, "depth/abs_rel": 0.25}
    assert row["delta_m"] == pytest.approx(delta_m({"segmentation/miou": 0.45, "depth/abs_rel": 0.3}, single_test))
    assert row["delta_m"] == pytest.approx(100 * ((0.45 - 0.5) / 0.5 - (0.3 - 0.25) / 0.25) / 2)
    assert summary["single_task"]["metrics"]["segmentation/miou"]["mean"] == 0.5


def test_sweep_grid_and_jobs(tmp_path):
    from training.experiments.jobs import make_jobs
    from training.experiments.sweep import _by_weights, weight_grid

    base = {"segmentation": 1.0, "depth": 1.0, "detection": 2.0}
    grid = weight_grid(base, ["depth", "detection"], [0.5, 1.0])
    assert grid[0] == base and len(grid) == 5  # the reference plus the 2 x 2 combinations
    assert {(g["depth"], g["detection"]) for g in grid[1:]} == {(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)}
    assert all(g["segmentation"] == 1.0 for g in grid)
    doc = {"tasks": {"segmentation": {}, "depth": {"max_depth": 50.0}, "detection": {"weight": 2.0}}}
    jobs = make_jobs(doc, [], [0, 1], tmp_path, single_task=False, weights=grid)
    groups = _by_weights(jobs, 2)
    assert len(groups) == 5 and all(len(g) == 2 for g in groups)
    for weights, group in zip(grid, groups):
        for job, seed in zip(group, (0, 1)):
            assert job.recipe["seed"] == seed and job.recipe["balancer"] == {"name": "fixed"}
            assert {t: o["weight"] for t, o in job.recipe["tasks"].items()} == weights
            assert job.recipe["tasks"]["depth"]["max_depth"] == 50.0
