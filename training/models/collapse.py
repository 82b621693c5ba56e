"""Over-parameterise a built model, and collapse it back to plain layers with BN folded.

`expand(model, kind, rate, where)` swaps selected `nn.Conv2d` layers for their
over-parameterised training form (see `overparam.py`); `collapse(model)` swaps every such module
back for the plain layer it equals; `fold_batchnorm(model)` merges each BatchNorm that follows a
convolution into that convolution. After `collapse` the model has exactly the compact model's
layers, parameter count and FLOPs.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from training.models.overparam import (
    ElementwiseConv2d,
    KernelExpandedConv2d,
    LinearExpandedConv2d,
    SharedFactorConv2d,
)

KINDS = ("none", "linear", "kernel", "elementwise", "shared_factors")
NO_KERNEL_PRESERVE = ("kind kernel cannot start from the compact weights (a trained k x k kernel is not in general "
                      "a product of 3x3 kernels): set init: random")


def layer_selector(prefixes: List[str]) -> Callable[[str, nn.Conv2d], bool]:
    """Selects convolutions whose module name is a prefix in `prefixes` or lies under one."""
    return lambda name, conv: any(name == p or name.startswith(p + ".") for p in prefixes)


def apply_overparam(model: nn.Module, config) -> List[str]:
    """Expands the layers a recipe's `overparam` section (`training.recipe.overparam.OverparamConfig`)
    selects; refuses a prefix that names no convolution of the model, and a selection that expands
    nothing (a typo would otherwise silently train the compact model, or the wrong part of it)."""
    if not config.enabled:
        return []
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for prefix in config.layers:
        if not any(name == prefix or name.startswith(prefix + ".") for name in convs):
            raise ValueError(f"overparam.layers: {prefix!r} names no convolution of the model "
                             f"(top-level modules: {', '.join(n for n, _ in model.named_children())})")
    names = expand(model, config.kind, config.rate, layer_selector(config.layers), preserve=config.init == "preserve")
    if not names:
        raise ValueError(f"overparam: kind {config.kind!r} with layers {config.layers} selects no convolution")
    return names


def compact_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy with every over-parameterised layer collapsed and BN folded:
    the network that is exported."""
    import copy

    compact = copy.deepcopy(model).eval()
    return fold_batchnorm(collapse(compact))


def _conv_args(name: str, conv: nn.Conv2d) -> dict:
    """The layer's shape arguments; one-line errors for what the expanded forms cannot repeat."""
    if isinstance(conv.padding, str):
        raise ValueError(f"overparam: {name} has padding={conv.padding!r}; over-parameterised layers need the "
                         f"padding as a number of pixels")
    if conv.padding[0] != conv.padding[1] or conv.stride[0] != conv.stride[1]:
        raise ValueError(f"overparam: {name} has asymmetric padding {tuple(conv.padding)} or stride "
                         f"{tuple(conv.stride)}; over-parameterised layers need the same value for height and width")
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size[0],
                stride=conv.stride[0], padding=conv.padding[0], bias=conv.bias is not None,
                padding_mode=conv.padding_mode)


def _expanded_names(model: nn.Module) -> List[str]:
    return [name for name, m in model.named_modules() if name and hasattr(m, "collapsed")]


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def expand(model: nn.Module, kind: str, rate: int = 2,
           where: Callable[[str, nn.Conv2d], bool] = lambda name, conv: True, preserve: bool = False) -> List[str]:
    """Over-parameterises the convolutions `where` selects; returns their names.

    preserve: start each expanded layer from the layer's current weights (`init_from`: exact
    for linear, within 1 % noise for elementwise, least squares for shared factors) instead of
    fresh random factors; the network then starts as the compact one did. Not possible for
    `kernel` (an error). Every padding mode is kept exactly (the padding is applied to the
    input of the chain); padding='same' and different values for height and width are errors,
    and so is expanding a model that is already expanded.

    linear: every selected conv (1x1 included, any groups) as 1x1 -> k x k -> 1x1 at rate `rate`.
    kernel: selected convs with kernels >= 5 as stacks of 3x3.
    elementwise: selected convs as `rate` weight-normalised, scaled branches.
    shared_factors: selected *head* convs as A_t . S . B_t with one S per conv shape shared by
    all heads (names under `heads.`); trunk convs are left alone, so inference cost is unchanged.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown over-parameterisation {kind!r} (known: {', '.join(KINDS)})")
    if kind == "none":
        return []
    if preserve and kind == "kernel":
        raise ValueError(f"overparam: {NO_KERNEL_PRESERVE}")
    already = _expanded_names(model)
    if already:  # their shape-holding templates are plain convs: a second pass would expand those
        raise ValueError(f"overparam: the model is already over-parameterised ({len(already)} layers, e.g. "
                         f"{already[0]}); collapse it first")
    shared: Dict[tuple, nn.Conv2d] = {}
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Conv2d or not where(name, module):
            continue
        k, groups = module.kernel_size[0], module.groups
        if module.kernel_size[0] != module.kernel_size[1] or module.dilation != (1, 1):
            continue
        if kind == "kernel" and k < 5:
            continue
        if kind == "shared_factors" and (not name.startswith("heads.") or groups != 1 or k < 3
                                         or module.stride != (1, 1)):
            continue
        args = _conv_args(name, module)
        if kind == "linear":
            new = LinearExpandedConv2d(groups=groups, rate=rate, **args)
        elif kind == "kernel":
            new = KernelExpandedConv2d(groups=groups, **args)
        elif kind == "elementwise":
            new = ElementwiseConv2d(groups=groups, alpha=rate, **args)
        else:
            key = (module.in_channels, module.out_channels, k)
            if key not in shared:
                shared[key] = nn.Conv2d(rate * module.in_channels, rate * module.out_channels, k, bias=False)
            new = SharedFactorConv2d(args["in_channels"], args["out_channels"], k, shared[key], stride=1,
                                     padding=args["padding"], bias=args["bias"], padding_mode=args["padding_mode"])
        if preserve and hasattr(new, "init_from"):
            new.init_from(module)
        _replace(model, name, new)
        replaced.append(name)
    return replaced


@torch.no_grad()
def collapse(model: nn.Module) -> nn.Module:
    """Replaces every over-parameterised module by its plain equivalent (in place)."""
    for name, module in list(model.named_modules()):
        if name and hasattr(module, "collapsed"):
            _replace(model, name, module.collapsed())
    return model


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Merges BatchNorm2d into the Conv2d right before it inside nn.Sequential containers
    (eval-mode statistics); the BN becomes an Identity."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = _fold(conv, bn)
                module._modules[second] = nn.Identity()
    return model


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv then BN (eval mode) as one conv; a BN without affine terms is scale 1, shift 0. A BN
    without running statistics normalises by each batch's own, which no fixed conv equals."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: a BatchNorm2d without running statistics (track_running_stats=False) "
                         "normalises with each batch's statistics and cannot be folded into a convolution")
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + shift)
    return fused


def parameter_count(model: nn.Module) -> int:
    """Trainable-size parameters (shape holders of over-parameterised layers excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def conv_flops(model: nn.Module, example: torch.Tensor, forward: Optional[Callable] = None) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one forward pass of `example`."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            (forward or model)(example)
    finally:
        for h in handles:
            h.remove()
    return total[0]
