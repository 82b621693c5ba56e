"""Small building blocks shared by the trunk and the heads."""
from __future__ import annotations

from torch import nn


class ConvBNAct(nn.Sequential):
    """k x k convolution, batch norm, ReLU: the one block every layer is made of.

    Plain convolutions (no depthwise) keep CPU training fast and make every layer a target for
    over-parameterisation and collapse.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: bool = True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels)
        self.conv2 = ConvBNAct(channels, channels, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.conv2(self.conv1(x)))
