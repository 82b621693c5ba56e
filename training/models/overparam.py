"""Training-time over-parameterisation that collapses back to plain layers for inference.

Every module here computes a *linear* function of its input that one ordinary `nn.Conv2d` or
`nn.Linear` of the original shape can represent exactly; `collapsed()` returns that layer.
So a model can train with more parameters and still export at exactly its compact size.

- `LinearExpandedConv2d` (ExpandNets): k x k conv as 1x1 (cin -> r cin) -> k x k (-> r cout)
  -> 1x1 (-> cout), no nonlinearity. Zero padding goes on the first layer and the first two
  layers have no bias, so padded pixels stay zero through the chain and the collapse is exact
  at the borders too; stride goes on the k x k layer; groups are kept per layer.
- `KernelExpandedConv2d`: a large kernel as a stack of 3x3 convs (two 3x3 = one 5x5).
- `LinearExpandedLinear`: a linear layer as a product of three matrices.
- `ElementwiseConv2d`: the weight as a combination of alpha copies. A plain sum of copies is
  exactly plain SGD with an alpha-times larger learning rate (tested); the useful form here
  normalises each branch per output channel and gives it a learnable scale (weight-normalised
  branches, RepVGG/OREPA-style), which changes the training dynamics, not only the step size.
- `SharedFactorConv2d`: the knowledge-sharing scheme: a task head's k x k conv trained as
  A_t . S . B_t where the k x k factor S is shared by all task heads (one `nn.Conv2d` object
  held by several modules). Collapsed per task, so inference cost does not grow.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _grouped_product(outer: torch.Tensor, inner: torch.Tensor, groups: int) -> torch.Tensor:
    """Weight of conv(outer) after conv(inner), where `outer` is 1x1: per group,
    W[o, i] = sum_a outer[o, a] inner[a, i] (inner may have any kernel size)."""
    cout, a_per_group = outer.shape[:2]
    mid, cin_per_group, kh, kw = inner.shape
    o = outer.reshape(groups, cout // groups, a_per_group)
    i = inner.reshape(groups, mid // groups, cin_per_group, kh, kw)
    return torch.einsum("goa,gaihw->goihw", o, i).reshape(cout, cin_per_group, kh, kw)


def _pre_product(inner: torch.Tensor, first: torch.Tensor, groups: int) -> torch.Tensor:
    """Weight of conv(inner) after conv(first), where `first` is 1x1:
    W[o, i] = sum_b inner[o, b] first[b, i] per group."""
    cout, b_per_group, kh, kw = inner.shape
    mid, cin_per_group = first.shape[:2]
    w = inner.reshape(groups, cout // groups, b_per_group, kh, kw)
    f = first.reshape(groups, mid // groups, cin_per_group)
    return torch.einsum("gobhw,gbi->goihw", w, f).reshape(cout, cin_per_group, kh, kw)


def _check_group_widths(cin: int, cout: int, groups: int) -> None:
    if cin % groups or cout % groups:
        raise ValueError(f"channels {cin}->{cout} are not divisible by groups={groups}")


def _pad(x: torch.Tensor, padding: int, mode: str) -> torch.Tensor:
    """The padding of the layer being replaced, applied to its input: any linear chain of
    unpadded convolutions after it then equals the padded layer exactly, for every
    `padding_mode` (zeros, reflect, replicate, circular)."""
    if not padding:
        return x
    return F.pad(x, [padding] * 4, mode="constant" if mode == "zeros" else mode)


def _plain_conv(template: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Conv2d:
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size, template.stride,
                     template.padding, template.dilation, template.groups, bias=bias is not None,
                     padding_mode=template.padding_mode)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


class LinearExpandedConv2d(nn.Module):
    """ExpandNets' linear expansion of one k x k convolution (expansion rate `rate`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True, rate: int = 2, padding_mode: str = "zeros"):
        super().__init__()
        _check_group_widths(in_channels, out_channels, groups)
        self.template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias,
                                  padding_mode=padding_mode)
        self.template.requires_grad_(False)  # shape holder only; never trained
        self.padding = padding
        self.padding_mode = padding_mode
        self.groups = groups
        self.first = nn.Conv2d(in_channels, rate * in_channels, 1, groups=groups, bias=False)
        self.middle = nn.Conv2d(rate * in_channels, rate * out_channels, kernel_size, stride, 0, groups=groups,
                                bias=False)
        self.last = nn.Conv2d(rate * out_channels, out_channels, 1, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # padded before the first layer (no bias in the first two): exact at the borders
        return self.last(self.middle(self.first(_pad(x, self.padding, self.padding_mode))))

    def composed_weight(self) -> torch.Tensor:
        w = _pre_product(self.middle.weight, self.first.weight, self.groups)
        return _grouped_product(self.last.weight[..., 0, 0], w, self.groups)

    @torch.no_grad()
    def init_from(self, conv: nn.Conv2d) -> None:
        """Function-preserving start: keep the random outer factors A (first) and B (last) and
        solve the middle one, K = B^+ W A^+ per group and tap, so B.K.A is exactly the layer's
        current weight W (and the bias is kept): the expanded network starts as the compact one,
        with the tasks' own output initialisations (e.g. a detection prior) intact."""
        g = self.groups
        weight = conv.weight.detach()
        a = self.first.weight[..., 0, 0]  # [r cin, cin / g]
        b = self.last.weight[..., 0, 0]  # [cout, r cout / g]
        ra, rb, cout = a.shape[0] // g, b.shape[1], weight.shape[0] // g
        for i in range(g):
            a_pinv = torch.linalg.pinv(a[i * ra:(i + 1) * ra].double())  # [cin/g, r cin/g]
            b_pinv = torch.linalg.pinv(b[i * cout:(i + 1) * cout].double())  # [r cout/g, cout/g]
            w = weight[i * cout:(i + 1) * cout].double()  # [cout/g, cin/g, k, k]
            k = torch.einsum("bo,oiuv,ia->bauv", b_pinv, w, a_pinv)
            self.middle.weight[i * rb:(i + 1) * rb].copy_(k.to(self.middle.weight.dtype))
        self.template.weight.copy_(weight)
        if conv.bias is not None:
            self.last.bias.copy_(conv.bias)
            self.template.bias.copy_(conv.bias)

    def collapsed(self) -> nn.Conv2d:
        return _plain_conv(self.template, self.composed_weight(), self.last.bias)


class KernelExpandedConv2d(nn.Module):
    """A k x k conv (k odd, >= 5) as (k - 1) / 2 stacked 3 x 3 convs without nonlinearity.

    Always starts from fresh random factors: a trained k x k kernel is in general not a
    product of 3 x 3 kernels, so a function-preserving start does not exist (`expand`
    refuses `preserve` for this kind)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        if kernel_size < 5 or kernel_size % 2 == 0:
            raise ValueError("kernel expansion needs an odd kernel_size >= 5")
        _check_group_widths(in_channels, out_channels, groups)
        self.template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias,
                                  padding_mode=padding_mode)
        self.template.requires_grad_(False)
        self.padding = padding
        self.padding_mode = padding_mode
        self.groups = groups
        n = (kernel_size - 1) // 2
        widths = [in_channels] + [out_channels] * n
        self.layers = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride if i == n - 1 else 1, groups=groups,
                      bias=bias if i == n - 1 else False)
            for i in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad(x, self.padding, self.padding_mode)
        for layer in self.layers:
            x = layer(x)
        return x

    def composed_weight(self) -> torch.Tensor:
        weight = self.layers[0].weight
        for layer in self.layers[1:]:
            weight = _compose_kernels(layer.weight, weight, self.groups)
        return weight

    def collapsed(self) -> nn.Conv2d:
        return _plain_conv(self.template, self.composed_weight(), self.layers[-1].bias)


def _compose_kernels(outer: torch.Tensor, inner: torch.Tensor, groups: int) -> torch.Tensor:
    """Kernel of conv(outer) after conv(inner), both stride 1, no padding: a full convolution
    of the kernels, computed with conv2d itself (per group)."""
    cout, mid_g, ko, _ = outer.shape
    mid, cin_g, ki, _ = inner.shape
    out = []
    for g in range(groups):
        o = outer[g * (cout // groups):(g + 1) * (cout // groups)]  # [co, mid_g, ko, ko]
        i = inner[g * (mid // groups):(g + 1) * (mid // groups)]  # [mid_g, cin_g, ki, ki]
        # treat input channels of `inner` as a batch: conv(inner^T padded, flipped outer)
        x = i.permute(1, 0, 2, 3)  # [cin_g, mid_g, ki, ki]
        y = F.conv2d(F.pad(x, [ko - 1] * 4), o.flip(-1, -2))  # [cin_g, co, ki+ko-1, ...]
        out.append(y.permute(1, 0, 2, 3))
    return torch.cat(out, dim=0)


class LinearExpandedLinear(nn.Module):
    """A linear layer as Linear(in, r in) -> Linear(r in, r out) -> Linear(r out, out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rate: int = 2):
        super().__init__()
        self.first = nn.Linear(in_features, rate * in_features, bias=False)
        self.middle = nn.Linear(rate * in_features, rate * out_features, bias=False)
        self.last = nn.Linear(rate * out_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.middle(self.first(x)))

    def composed_weight(self) -> torch.Tensor:
        return self.last.weight @ self.middle.weight @ self.first.weight

    def collapsed(self) -> nn.Linear:
        layer = nn.Linear(self.first.in_features, self.last.out_features, bias=self.last.bias is not None)
        layer.weight.data.copy_(self.composed_weight())
        if self.last.bias is not None:
            layer.bias.data.copy_(self.last.bias)
        return layer


class ElementwiseConv2d(nn.Module):
    """Weight = sum over alpha branches of scale_a * W_a / ||W_a|| (per output channel).

    With `normalise=False` it is the plain sum of copies (weight = sum W_a), kept to show that
    this form is only a learning-rate change.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True, alpha: int = 2, normalise: bool = True,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias,
                                  padding_mode=padding_mode)
        self.template.requires_grad_(False)
        base = self.template.weight.detach()
        self.normalise = normalise
        self.branches = nn.Parameter(torch.stack([base + 0.01 * torch.randn_like(base) for _ in range(alpha)]))
        if normalise:
            norms = base.flatten(1).norm(dim=1).view(1, -1, 1, 1, 1)
            self.scales = nn.Parameter(norms.expand(alpha, -1, -1, -1, -1).clone() / alpha)
        else:
            self.branches.data /= alpha
        self.bias = nn.Parameter(self.template.bias.detach().clone()) if bias else None

    @torch.no_grad()
    def init_from(self, conv: nn.Conv2d) -> None:
        """Starts at the layer's current weight, bias kept (see `_preserving_branches`)."""
        base = conv.weight.detach()
        alpha = self.branches.shape[0]
        self.template.weight.copy_(base)
        if self.normalise:
            branches, scales = _preserving_branches(base, alpha)
            self.branches.copy_(branches)
            self.scales.copy_(scales)
        else:
            noise = 0.01 * _channel_rms(base) * torch.randn((alpha,) + base.shape, dtype=base.dtype)
            self.branches.copy_((base + noise) / alpha)
        if conv.bias is not None:
            self.bias.copy_(conv.bias)

    def composed_weight(self) -> torch.Tensor:
        if not self.normalise:
            return self.branches.sum(0)
        norms = self.branches.flatten(2).norm(dim=2).clamp(min=1e-12)[..., None, None, None]
        return (self.scales * self.branches / norms).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.template
        if t.padding_mode != "zeros":
            return F.conv2d(_pad(x, t.padding[0], t.padding_mode), self.composed_weight(), self.bias, t.stride,
                            0, t.dilation, t.groups)
        return F.conv2d(x, self.composed_weight(), self.bias, t.stride, t.padding, t.dilation, t.groups)

    def collapsed(self) -> nn.Conv2d:
        return _plain_conv(self.template, self.composed_weight().detach(),
                           None if self.bias is None else self.bias.detach())


def _channel_rms(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel, the root mean square of its weights (shape [cout, 1, 1, 1])."""
    return weight.flatten(1).pow(2).mean(dim=1).sqrt().view(-1, 1, 1, 1)


def _preserving_branches(base: torch.Tensor, alpha: int):
    """Branches and scales whose normalised sum is `base`, with every parameter trainable.

    A channel with a non-zero weight w: every branch is w plus 1 % noise (relative to the
    channel's own size, so one-weight channels work too) with scale ||w|| / alpha. A channel
    whose weight is zero (e.g. a zero-initialised output layer): branch directions w/||w||
    would be undefined and scales 0 would leave both factors without gradient for ever, so
    all its branches share one random direction u, of a default initialisation's size, and the
    scales c (1, ..., 1, -(alpha - 1)) sum to zero: the weight is exactly 0, yet every scale's
    gradient is ±<g, u> and every branch's s_a P_u g / ||W_a||. (With alpha = 1 the one scale
    is 0: it learns first and the branch from the next step.)"""
    norms = base.flatten(1).norm(dim=1)
    dead = norms == 0
    noise = 0.01 * _channel_rms(base) * torch.randn((alpha,) + base.shape, dtype=base.dtype)
    branches = base.unsqueeze(0) + noise
    scales = (norms / alpha).view(1, -1, 1, 1, 1).expand(alpha, -1, -1, -1, -1).clone()
    if dead.any():
        # a default (kaiming-uniform, a = sqrt 5) weight has per-channel norm 1/sqrt(3)
        size = 1.0 / math.sqrt(3.0)
        u = torch.randn_like(base[dead])
        u = size * u / u.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        branches[:, dead] = u.unsqueeze(0)
        signs = torch.ones(alpha, dtype=base.dtype)
        signs[-1] = -(alpha - 1)
        scales[:, dead] = (size / alpha * signs).view(alpha, 1, 1, 1, 1).expand(-1, int(dead.sum()), -1, -1, -1)
    return branches, scales


class SharedFactorConv2d(LinearExpandedConv2d):
    """A task-specific conv trained as A_t . S . B_t with the k x k factor S shared between the
    task heads: pass the same `shared` conv to every head's module."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, shared: nn.Conv2d,
                 stride: int = 1, padding: int = 0, bias: bool = True, padding_mode: str = "zeros"):
        rate = shared.in_channels // in_channels
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 1, bias, rate, padding_mode)
        if shared.kernel_size != (kernel_size, kernel_size) or shared.out_channels != rate * out_channels:
            raise ValueError("the shared factor does not fit this layer")
        self.middle = shared  # the same module object in every head: its gradient sums over tasks

    @torch.no_grad()
    def init_from(self, conv: nn.Conv2d) -> None:
        """The shared S and this task's A stay as they are; B_t is the least-squares fit of
        B_t . (S . A_t) to the layer's current weight (exact only when r cout >= cin k^2, so
        the start is close to, not equal to, the compact layer), bias kept."""
        weight = conv.weight.detach().double()
        m = torch.einsum("bauv,ai->biuv", self.middle.weight.double(), self.first.weight[..., 0, 0].double())
        b = weight.flatten(1) @ torch.linalg.pinv(m.flatten(1))
        self.last.weight.copy_(b.view_as(self.last.weight).to(self.last.weight.dtype))
        self.template.weight.copy_(conv.weight)
        if conv.bias is not None:
            self.last.bias.copy_(conv.bias)
            self.template.bias.copy_(conv.bias)
