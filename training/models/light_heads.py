"""Depthwise-separable heads (`model.head: depthwise`): the same heads, each 3x3 convolution
split into a depthwise 3x3 and a pointwise 1x1.

At 512x256 on ResNet-18 a plain 3x3 head at stride 4 is 6 % of the trunk's multiply-accumulates
and the stride-2 super-resolution head 15 % (`docs/backbone_sharing_cost.md`); all four run in
the shared model, so sharing saves less than it should. The separable form keeps every head's
structure, receptive field and outputs and cuts its 3x3 layers' multiply-accumulates by
9 / (1 + 9 / width) (about 8x at 64 channels).
"""
from __future__ import annotations

import torch
from torch import nn

from training.models.blocks import ConvBNAct


class SeparableConvBNAct(nn.Sequential):
    """Depthwise 3x3 + BN, pointwise 1x1 + BN + ReLU (MobileNet's block); stands in for a
    `ConvBNAct` 3x3. Flat, so `fold_batchnorm` folds both BatchNorms into their convolutions."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                  nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def separable_conv(conv: nn.Conv2d) -> nn.Sequential:
    """A bare 3x3 convolution (e.g. the super-resolution output layer) as depthwise 3x3 + BN +
    pointwise 1x1 with the original's bias; a zero-initialised layer stays zero at the output
    (the SR head starts as plain bicubic)."""
    cin, cout = conv.in_channels, conv.out_channels
    pointwise = nn.Conv2d(cin, cout, 1, bias=conv.bias is not None)
    with torch.no_grad():
        if not bool(conv.weight.any()):
            pointwise.weight.zero_()
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    return nn.Sequential(nn.Conv2d(cin, cin, 3, conv.stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), pointwise)


def _separable_candidate(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.groups == 1
            and module.dilation == (1, 1) and module.padding == (1, 1))


def depthwise_heads(heads: nn.Module) -> int:
    """Replaces, in place, every 3x3 `ConvBNAct` and bare 3x3 convolution of the heads by its
    depthwise-separable form; returns how many were replaced."""
    count = 0
    for name, module in list(heads.named_modules()):
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = heads.get_submodule(parent_name) if parent_name else heads
        if isinstance(module, ConvBNAct) and _separable_candidate(module[0]):
            conv = module[0]
            setattr(parent, child, SeparableConvBNAct(conv.in_channels, conv.out_channels, conv.stride[0],
                                                      act=len(module) > 2))
            count += 1
        elif _separable_candidate(module) and not isinstance(parent, (ConvBNAct, SeparableConvBNAct)):
            setattr(parent, child, separable_conv(module))
            count += 1
    return count

