"""Over-parameterised layers collapse exactly to the plain layer they stand for."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.models.overparam import (
    ElementwiseConv2d,
    KernelExpandedConv2d,
    LinearExpandedConv2d,
    LinearExpandedLinear,
    SharedFactorConv2d,
)


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Unit-scale random weights (std 1/sqrt(fan-in), so outputs stay O(1) and the 1e-5
    tolerance means fp32 accuracy) and clearly non-zero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (fan_in ** -0.5 if p.ndim > 1 else 0.5))
    return module


CASES = [  # cin, cout, k, stride, padding, groups, input H, W
    (4, 6, 3, 1, 1, 1, 11, 13),
    (4, 6, 3, 2, 1, 1, 11, 13),
    (6, 6, 3, 1, 1, 3, 9, 7),
    (8, 8, 3, 2, 1, 8, 9, 15),  # depthwise, stride 2
    (5, 7, 5, 1, 2, 1, 10, 9),
    (4, 4, 1, 1, 0, 1, 7, 7),
]


@pytest.mark.parametrize("cin, cout, k, stride, pad, groups, h, w", CASES)
@pytest.mark.parametrize("rate", [2, 4])
def test_linear_expansion_collapses_exactly(cin, cout, k, stride, pad, groups, h, w, rate):
    layer = _randomise(LinearExpandedConv2d(cin, cout, k, stride, pad, groups, bias=True, rate=rate)).eval()
    x = torch.randn(2, cin, h, w)
    plain = layer.collapsed()
    assert isinstance(plain, nn.Conv2d) and plain.weight.shape == (cout, cin // groups, k, k)
    assert (layer(x) - plain(x)).abs().max().item() < 1e-5


def test_padding_on_the_wrong_layer_breaks_the_borders():
    """Negative control: pad at the last 1x1 instead of the first layer."""
    layer = _randomise(LinearExpandedConv2d(4, 6, 3, 1, 1, bias=True, rate=2)).eval()
    x = torch.randn(1, 4, 12, 12)
    wrong = layer.last(F.pad(layer.middle(layer.first(x)), [1] * 4))  # zeros padded after the k x k
    right = layer.collapsed()(x)
    diff = (wrong - right).abs()
    assert diff[..., 1:-1, 1:-1].max().item() < 1e-5  # the interior agrees
    assert diff[..., 0, :].max().item() > 1e-2  # the border does not


@pytest.mark.parametrize("k, stride, groups", [(5, 1, 1), (5, 2, 1), (7, 1, 2), (5, 1, 4)])
def test_kernel_expansion_collapses_exactly(k, stride, groups):
    layer = _randomise(KernelExpandedConv2d(4, 8, k, stride, k // 2, groups, bias=True)).eval()
    x = torch.randn(2, 4, 13, 11)
    plain = layer.collapsed()
    assert plain.weight.shape == (8, 4 // groups, k, k)
    assert (layer(x) - plain(x)).abs().max().item() < 1e-5


def test_linear_layer_expansion_collapses_exactly():
    layer = _randomise(LinearExpandedLinear(7, 5, rate=3))
    x = torch.randn(4, 7)
    assert (layer(x) - layer.collapsed()(x)).abs().max().item() < 1e-5


def test_elementwise_branches_collapse_exactly():
    for normalise in (True, False):
        layer = _randomise(ElementwiseConv2d(4, 6, 3, 2, 1, alpha=3, normalise=normalise))
        x = torch.randn(2, 4, 9, 10)
        assert (layer(x) - layer.collapsed()(x)).abs().max().item() < 1e-5


def test_plain_sum_of_copies_is_sgd_with_a_larger_learning_rate():
    """W = sum_a W_a with W_a = W / alpha: each copy gets dL/dW, so the sum moves alpha times
    as far as plain SGD with the same learning rate would. Trajectories are identical."""
    torch.manual_seed(0)
    alpha, lr = 3, 0.05
    copies = ElementwiseConv2d(3, 4, 3, 1, 1, alpha=alpha, normalise=False)
    plain = nn.Conv2d(3, 4, 3, 1, 1)
    with torch.no_grad():
        plain.weight.copy_(copies.composed_weight())
        plain.bias.copy_(copies.bias)
    opt_copies = torch.optim.SGD([copies.branches], lr=lr)
    opt_plain = torch.optim.SGD([plain.weight], lr=lr * alpha)
    for step in range(5):
        x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)
        for module, opt in ((copies, opt_copies), (plain, opt_plain)):
            opt.zero_grad()
            ((module(x) - target) ** 2).mean().backward()
            opt.step()
        assert torch.allclose(copies.composed_weight(), plain.weight, atol=1e-6), step
    # the normalised form is not such a rescaling: its update direction differs
    normalised = ElementwiseConv2d(3, 4, 3, 1, 1, alpha=alpha, normalise=True)
    before = normalised.composed_weight().detach().clone()
    x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)
    ((normalised(x) - target) ** 2).mean().backward()
    with torch.no_grad():
        for p in normalised.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    before.requires_grad_()
    grad_plain = torch.autograd.grad(((F.conv2d(x, before, normalised.bias, 1, 1) - target) ** 2).mean(), before)[0]
    step = normalised.composed_weight().detach() - before
    cosine = F.cosine_similarity(step.flatten(), -grad_plain.flatten(), dim=0)
    assert cosine < 0.999


def test_factor_gradients_match_the_composed_kernel_form():
    """d loss / d factors through the layer-by-layer form equals the chain rule through the
    composed kernel (autograd of conv2d(x, composed_weight()))."""
    layer = _randomise(LinearExpandedConv2d(4, 6, 3, 2, 1, groups=2, rate=2))
    x, target = torch.randn(2, 4, 9, 9), torch.randn(2, 6, 5, 5)
    params = [layer.first.weight, layer.middle.weight, layer.last.weight, layer.last.bias]
    by_layers = torch.autograd.grad(((layer(x) - target) ** 2).sum(), params)
    composed = F.conv2d(x, layer.composed_weight(), layer.last.bias, 2, 1, groups=2)
    by_kernel = torch.autograd.grad(((composed - target) ** 2).sum(), params)
    for a, b in zip(by_layers, by_kernel):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_shared_factor_is_one_tensor_and_collapses_per_task():
    shared = nn.Conv2d(2 * 6, 2 * 6, 3, bias=False)
    heads = [_randomise(SharedFactorConv2d(6, 6, 3, shared, padding=1), seed=s) for s in (1, 2)]
    with torch.no_grad():
        shared.weight.normal_()
    assert heads[0].middle is heads[1].middle is shared
    x = torch.randn(1, 6, 8, 8)
    for head in heads:
        assert (head(x) - head.collapsed()(x)).abs().max().item() < 1e-5
    (heads[0](x).sum() + heads[1](x).sum()).backward()
    alone = copy.deepcopy(heads[0])
    alone.zero_grad()
    alone(x).sum().backward()
    assert not torch.allclose(shared.weight.grad, alone.middle.weight.grad)  # both tasks contribute






@pytest.mark.parametrize("kind", ["linear", "elementwise", "shared_factors"])
def test_whole_network_collapses_to_the_compact_model(kind):
    """Expanded multi-task net (eval mode, random BN statistics and affine terms)
    == collapsed + BN-folded net; parameter count and FLOPs equal the compact net's."""
    from tests.train.exported_models import flat_outputs, randomise_batchnorm, tiny_network, tiny_tasks
    from training.models.collapse import collapse, conv_flops, expand, fold_batchnorm, parameter_count

    tasks = tiny_tasks(input_size=(64, 32))
    compact = tiny_network(tasks)
    expanded = tiny_network(tasks)
    names = expand(expanded, kind, rate=2)
    assert names and parameter_count(expanded) > parameter_count(compact)
    randomise_batchnorm(expanded)
    for p in expanded.parameters():
        if p.requires_grad:
            with torch.no_grad():
                p.add_(0.05 * torch.randn_like(p))  # biases and factors away from their init
    expanded.eval()
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        before = flat_outputs(expanded(x))
    collapse(expanded)
    assert parameter_count(expanded) == parameter_count(compact)
    assert conv_flops(expanded, x) == conv_flops(compact, x)
    fold_batchnorm(expanded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in expanded.modules())
    with torch.no_grad():
        after = flat_outputs(expanded(x))
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() < 1e-5


# -- starts, padding modes and refusals --------------------------------------------------------
class _Heads(nn.Module):
    """Two task heads with one k x k conv each (names under `heads.`, as shared_factors wants)."""

    def __init__(self, k=5, zero=True, padding_mode="zeros"):
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Conv2d(3, 4, k, padding=k // 2, padding_mode=padding_mode)
                                    for t in ("a", "b")})
        if zero:  # e.g. the super-resolution head's zero-initialised output layer
            for conv in self.heads.values():
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, x):
        return torch.cat([conv(x) for conv in self.heads.values()], 1)


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("kind, rate", [("linear", 1), ("linear", 2), ("kernel", 2), ("elementwise", 1),
                                        ("elementwise", 2), ("elementwise", 3), ("shared_factors", 2)])
def test_every_factor_of_a_zero_layer_learns(kind, rate):
    """From a zero-initialised layer (preserve: the expanded layer starts at exactly zero; kernel
    starts random, as it must), every trained parameter has a non-zero gradient by the second
    step; element-wise branches at rate >= 2 from the first (the old start, zero branches with
    zero scales, was a fixed point: the layer stayed exactly zero for ever)."""
    from training.models.collapse import collapse, expand

    torch.manual_seed(0)
    model = _Heads()
    preserve = kind != "kernel"
    assert expand(model, kind, rate, preserve=preserve) == ["heads.a", "heads.b"]
    g = torch.Generator().manual_seed(1)
    x, target = torch.randn(2, 3, 9, 9, generator=g), torch.randn(2, 8, 9, 9, generator=g)
    if preserve:
        assert float(model(x).detach().abs().max()) == 0.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in (1, 2):
        optimizer.zero_grad()
        F.mse_loss(model(x), target).backward()
        if step == 2 or (kind == "elementwise" and rate >= 2):
            silent = [n for n, p in _trainable(model) if p.grad is None or float(p.grad.abs().max()) == 0.0]
            assert not silent, f"step {step}: no gradient for {silent}"
        optimizer.step()
    with torch.no_grad():
        assert all(float(c.weight.abs().max()) > 0 for c in collapse(model).heads.values())


def test_elementwise_preserve_of_a_single_weight_is_finite():
    """A 1 -> 1, 1x1 conv: the branch noise is relative to each channel (a one-element std was NaN)."""
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(0.7)
    layer = ElementwiseConv2d(1, 1, 1, alpha=3)
    layer.init_from(conv)
    assert torch.isfinite(layer.branches).all() and torch.isfinite(layer.scales).all()
    assert float(layer.composed_weight()) == pytest.approx(0.7, rel=1e-3)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("kind", ["linear", "kernel", "elementwise", "shared_factors"])
def test_padding_modes_are_kept_exactly(kind, mode):
    """The padding of every mode is applied before the chain: a preserving start equals the
    original layer (zero padding instead of reflect changed the output by 38-63 %), training
    moves it, and the collapse is the same function with the same padding mode."""
    from training.models.collapse import collapse, expand

    torch.manual_seed(0)
    model = _randomise(_Heads(zero=False, padding_mode=mode))
    x = torch.randn(2, 3, 8, 11)
    with torch.no_grad():
        original = model(x)
    expand(model, kind, 2, preserve=kind != "kernel")
    with torch.no_grad():
        if kind in ("linear", "elementwise"):  # shared_factors: least squares, kernel: random
            tolerance = 1e-4 if kind == "linear" else 3e-2
            assert float((model(x) - original).abs().max() / original.abs().max()) < tolerance
        for _, p in _trainable(model):
            p.add_(0.05 * torch.randn_like(p))
        expanded = model(x)
        collapse(model)
        assert all(c.padding_mode == mode for c in model.heads.values())
        assert float((model(x) - expanded).abs().max()) < 1e-5


def test_expansion_refusals_are_one_line_errors():
    from training.models.collapse import expand

    model = _Heads()
    expand(model, "linear", 2)
    with pytest.raises(ValueError, match="already over-parameterised .*heads.a.*collapse it first"):
        expand(model, "linear", 2)
    with pytest.raises(ValueError, match="kind kernel cannot start from the compact weights"):
        expand(_Heads(), "kernel", 2, preserve=True)
    cases = [(dict(padding="same"), "heads.a has padding='same'"),
             (dict(padding=(1, 2)), r"asymmetric padding \(1, 2\)"),
             (dict(padding=1, stride=(1, 2)), r"stride \(1, 2\)")]
    for kwargs, message in cases:
        model = _Heads()
        model.heads["a"] = nn.Conv2d(3, 4, 3, **kwargs)
        for kind in ("linear", "elementwise"):
            with pytest.raises(ValueError, match=message) as error:
                expand(copy.deepcopy(model), kind, 2)
            assert "\n" not in str(error.value)


def test_fold_batchnorm_without_affine_terms_and_refusal_without_statistics():
    """A BN without affine terms folds exactly (scale 1, shift 0); one without running
    statistics cannot be folded (it normalises with each batch's own): a one-line error."""
    from training.models.collapse import fold_batchnorm

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4, affine=False)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), bn).eval()
    x = torch.randn(2, 3, 6, 7)
    with torch.no_grad():
        before = model(x)
        fold_batchnorm(model)
        assert isinstance(model[1], nn.Identity) and model[0].padding_mode == "reflect"
        assert float((model(x) - before).abs().max()) < 1e-5
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="without running statistics .*cannot be folded"):
        fold_batchnorm(no_stats)
