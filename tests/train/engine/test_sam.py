"""SAM/ASAM wrapper: closed forms, BN statistics, state, accumulation, balancers."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from training.balancers import BALANCERS, BalanceContext
from training.engine.sam import SAM, frozen_bn_stats

pytestmark = pytest.mark.usefixtures("one_thread")


def quadratic(w1, w2, a=(10.0, 1.0)):
    return 0.5 * (a[0] * w1.pow(2).sum() + a[1] * w2.pow(2).sum())


def sam_update(sam, loss_fn):
    sam.zero_grad()
    loss_fn().backward()
    sam.first_step()
    sam.zero_grad()
    loss_fn().backward()
    sam.second_step()


def test_one_sam_step_matches_the_closed_form_over_two_groups():
    w1, w2 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    # two parameter groups: the norm must be global, not per group
    sam = SAM(torch.optim.SGD([{"params": [w1]}, {"params": [w2]}], lr=0.01), rho=0.05)
    sam_update(sam, lambda: quadratic(w1, w2))
    got = [w1.item(), w2.item()]
    np.testing.assert_allclose(got, [0.89502, 0.98995], atol=1e-5)
    a, w = np.array([10.0, 1.0]), np.ones(2)
    g = a * w
    expected = w - 0.01 * a * (w + 0.05 * g / np.linalg.norm(g))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not sam.perturbed


def test_asam_step_matches_a_hand_computed_step():
    w0 = np.array([2.0, -0.5])
    w1, w2 = nn.Parameter(torch.tensor([w0[0]])), nn.Parameter(torch.tensor([w0[1]]))
    a, rho, eta, lr = np.array([3.0, 1.0]), 0.5, 0.01, 0.1
    sam = SAM(torch.optim.SGD([w1, w2], lr=lr), rho=rho, adaptive=True, eta=eta)
    sam_update(sam, lambda: quadratic(w1, w2, a))
    t = np.abs(w0) + eta
    g = a * w0
    e = rho * t**2 * g / np.linalg.norm(t * g)
    expected = w0 - lr * a * (w0 + e)
    np.testing.assert_allclose([w1.item(), w2.item()], expected, rtol=1e-6)
    plain = w0 - lr * a * (w0 + rho * g / np.linalg.norm(g))
    assert not np.allclose(expected, plain)  # the adaptive scaling really changed the step


def small_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_bn_statistics_after_a_sam_step_equal_one_plain_forward():
    model = small_bn_net()
    plain = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 1, 0])
    plain.train()
    plain(x)
    expected = bn_buffers(plain)

    model.train()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5)
    nn.functional.cross_entropy(model(x), y).backward()
    assert sam.first_step()
    sam.zero_grad()
    with frozen_bn_stats(model):
        nn.functional.cross_entropy(model(x), y).backward()
    sam.second_step()
    for k, v in bn_buffers(model).items():
        assert torch.equal(v, expected[k]), k

    # without the context manager the second pass would have moved them
    unfrozen = copy.deepcopy(plain)
    unfrozen(x + 0.5)
    assert not torch.equal(bn_buffers(unfrozen)["1.running_mean"], expected["1.running_mean"])


def test_state_dict_round_trip_and_refusal_while_perturbed():
    def make():
        torch.manual_seed(1)
        w1, w2 = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2))
        return (w1, w2), SAM(torch.optim.Adam([w1, w2], lr=0.05), rho=0.1)

    (a1, a2), sam_a = make()
    for _ in range(3):
        sam_update(sam_a, lambda: quadratic(a1, a2))
    state = copy.deepcopy(sam_a.state_dict())  # state_dict() holds references to live tensors
    assert state.keys() == sam_a.base.state_dict().keys()  # the base's own layout

    (b1, b2), sam_b = make()
    with torch.no_grad():
        b1.copy_(a1)
        b2.copy_(a2)
    sam_b.load_state_dict(state)
    sam_update(sam_a, lambda: quadratic(a1, a2))
    sam_update(sam_b, lambda: quadratic(b1, b2))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)

    quadratic(a1, a2).backward()
    sam_a.first_step()
    with pytest.raises(RuntimeError, match="perturbed"):
        sam_a.state_dict()
    sam_a.restore()


def test_accumulated_micro_batches_give_the_full_batch_update():
    torch.manual_seed(2)
    x, y = torch.randn(8, 5), torch.randn(8, 1)
    full = nn.Linear(5, 1)
    accum = copy.deepcopy(full)

    def loss(model, xs, ys):
        return nn.functional.mse_loss(model(xs), ys)

    sam_full = SAM(torch.optim.SGD(full.parameters(), lr=0.1), rho=0.2)
    sam_update(sam_full, lambda: loss(full, x, y))

    sam_acc = SAM(torch.optim.SGD(accum.parameters(), lr=0.1), rho=0.2)

    def two_halves():
        for part in (slice(0, 4), slice(4, 8)):
            (loss(accum, x[part], y[part]) / 2).backward()

    sam_acc.zero_grad()
    two_halves()
    sam_acc.first_step()
    sam_acc.zero_grad()
    two_halves()
    sam_acc.second_step()
    for p, q in zip(full.parameters(), accum.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_perturbs_along_the_balanced_gradient():
    """With the fixed balancer (weights 1 and 3) the update is SAM's on L = 1·L1 + 3·L2."""
    w1, w2 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    balancer = BALANCERS["fixed"]({"a": 1.0, "b": 3.0}, BALANCERS["fixed"].Options())
    sam = SAM(torch.optim.SGD([w1, w2], lr=0.01), rho=0.05)
    ctx = BalanceContext(shared_params=[w1, w2])

    def balanced_backward():
        balancer.backward({"a": 5.0 * w1.pow(2).sum(), "b": 0.5 * w2.pow(2).sum() / 3.0}, ctx)

    balanced_backward()
    sam.first_step()
    sam.zero_grad()
    balanced_backward()
    sam.second_step()
    np.testing.assert_allclose([w1.item(), w2.item()], [0.89502, 0.98995], atol=1e-5)


def test_scaled_gradients_perturb_the_same_and_overflow_skips():
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    sam = SAM(torch.optim.SGD([w], lr=0.1), rho=0.1)
    w.grad = torch.tensor([0.3, 0.1, -0.2])
    sam.first_step()
    unscaled = w.detach().clone()
    sam.restore()
    w.grad = w.grad * 65536.0  # GradScaler's scale: e(w) is scale-invariant
    sam.first_step()
    torch.testing.assert_close(w.detach(), unscaled)
    sam.restore()
    before = w.detach().clone()
    w.grad = torch.tensor([float("inf"), 0.0, 0.0])
    assert sam.first_step() is False and not sam.perturbed
    assert torch.equal(w.detach(), before)


def test_groups_marked_sam_false_are_not_perturbed():
    w, log_var = nn.Parameter(torch.ones(2)), nn.Parameter(torch.zeros(1))
    sam = SAM(torch.optim.SGD([{"params": [w]}, {"params": [log_var], "sam": False}], lr=0.1), rho=0.1)
    w.grad, log_var.grad = torch.tensor([3.0, 4.0]), torch.tensor([100.0])
    sam.first_step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.06, 1.08]))
    assert log_var.item() == 0.0
    sam.second_step()
    assert log_var.item() == pytest.approx(-10.0)  # the base optimizer still updates it


def test_grad_scaler_protocol_gives_the_unscaled_update():
    """first_step on scaled gradients (no unscale_), unscale_/clip only in the second pass."""
    w1, w2 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    sam = SAM(torch.optim.SGD([w1, w2], lr=0.01), rho=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(quadratic(w1, w2)).backward()
    assert sam.first_step()
    sam.zero_grad()
    scaler.scale(quadratic(w1, w2)).backward()
    scaler.unscale_(sam.base)
    torch.nn.utils.clip_grad_norm_([w1, w2], 100.0)
    sam.restore()
    scaler.step(sam.base)
    scaler.update()
    np.testing.assert_allclose([w1.item(), w2.item()], [0.89502, 0.98995], atol=1e-5)


def test_famo_counts_the_first_pass_losses_once_under_frozen_buffers():
    from training.engine.sam import frozen_buffers

    w1, w2 = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
    famo = BALANCERS["famo"]({"a": 1.0, "b": 1.0}, BALANCERS["famo"].Options())
    sam = SAM(torch.optim.SGD([w1, w2], lr=0.01), rho=0.05)
    ctx = BalanceContext(shared_params=[w1, w2])

    def losses():
        return {"a": 5.0 * w1.pow(2).sum(), "b": 0.5 * w2.pow(2).sum()}

    famo.backward(losses(), ctx)
    sam.first_step()
    sam.zero_grad()
    with frozen_buffers(famo):
        famo.backward(losses(), ctx)
    sam.second_step()
    assert famo.step_loss.tolist() == [5.0, 0.5]  # the losses at w, once
