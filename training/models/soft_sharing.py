"""Soft parameter sharing: trunks that give every task its own features.

The shared trunk (`trunk.SharedTrunk`) is hard sharing: one network, one set of features, every
head reads the same tensors. The trunks here return one feature dict per task,
`{task: {"s2": ..., "s4": ...}}`, with the shared trunk's channels (`feature_channels`), so the
task heads are reused unchanged; `MultiTaskNet` detects them by `per_task = True`.

- `CrossStitchTrunk` (Misra et al. 2016, "Cross-stitch networks for multi-task learning"): one
  column per task, each a full copy of the shared trunk's layers (encoder + pyramid). After the
  stem and after each of the four encoder stages a cross-stitch unit replaces every column's
  features by a learned linear combination of all columns' features at that level. The pyramid
  of each column reads its own mixed encoder features, so it is task-specific.
- `NDDRTrunk` (Gao et al. 2019, "NDDR-CNN: layerwise feature fusing in multi-task CNNs by neural
  discriminative dimensionality reduction"): the same columns; at the same five levels the
  columns' features are concatenated and, per task, a 1x1 convolution (T*C -> C) + BN + ReLU
  maps them back to C channels; the result goes on through that task's column.
- `MTANTrunk` (Liu et al. 2019, "End-to-end multi-task learning with attention"): the shared
  trunk, unchanged, plus per task a chain of soft-attention modules, one per encoder level
  (stem, four stages) and per pyramid level (strides 16, 8, 4). Each makes a sigmoid mask from
  the shared features at its level and the task's attended features of the previous level, and
  multiplies it into the shared features element-wise; the heads read the attended ones.

Which parameters are shared (they receive gradient from more than one task) is spelled out per
trunk in `shared_parameters()`, the rest per task in `task_parameters()`; together they are
every parameter of the trunk. The gradient balancers read these two lists.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.blocks import ConvBNAct
from training.models.registry import Trunk, register_trunk
from training.models.trunk import SharedTrunk

#: initial weight of a task's own features in a cross-stitch unit / NDDR fusion (Misra et al.'s
#: and Gao et al.'s near-identity initialisation); the others share 1 - SELF_WEIGHT equally
SELF_WEIGHT = 0.9


def initial_mixing(tasks: int, self_weight: float = SELF_WEIGHT) -> torch.Tensor:
    """[T, T] near-identity matrix: self_weight on the diagonal, (1 - self_weight) / (T - 1)
    elsewhere; every row sums to 1 (a single task: [[1.0]])."""
    if tasks == 1:
        return torch.ones(1, 1)
    other = (1.0 - self_weight) / (tasks - 1)
    return torch.full((tasks, tasks), other) + (self_weight - other) * torch.eye(tasks)


def _params(modules: Sequence[nn.Module]) -> List[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


class CrossStitchUnit(nn.Module):
    """x'_t = sum_s alpha[t, s] * x_s, per channel.

    `weight` is [T, T, C]: one T x T mixing matrix per channel, not one per level. A channel of
    one column may help another task while its neighbour does not; per-channel units let the
    network share the one and not the other, for T*T*C scalars per level and no extra
    multiply-accumulates compared with a per-level unit.
    """

    def __init__(self, tasks: int, channels: int, self_weight: float = SELF_WEIGHT):
        super().__init__()
        init = initial_mixing(tasks, self_weight)
        self.weight = nn.Parameter(init[:, :, None].repeat(1, 1, channels))

    def forward(self, xs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        tasks = len(xs)
        out = []
        for t in range(tasks):
            y = xs[0] * self.weight[t, 0].view(1, -1, 1, 1)
            for s in range(1, tasks):
                y = y + xs[s] * self.weight[t, s].view(1, -1, 1, 1)
            out.append(y)
        return out


class NDDRFusion(nn.Module):
    """Per task: concat(x_1..x_T) -> 1x1 conv (T*C -> C, no bias) -> BN -> ReLU.

    The convolution starts as a weighted identity: task t's output channel c reads input channel
    c of column t with weight `self_weight` and channel c of every other column with
    (1 - self_weight) / (T - 1), nothing else. BN starts as identity (running mean 0, variance 1,
    weight 1, bias 0), and the columns' features are ReLU outputs, so at initialisation in eval
    mode the fusion is 0.9 x_t + 0.1/(T-1) sum_{s != t} x_s (up to BN's eps).
    """

    def __init__(self, tasks: int, channels: int, self_weight: float = SELF_WEIGHT):
        super().__init__()
        self.fuse = nn.ModuleList(ConvBNAct(tasks * channels, channels, kernel=1) for _ in range(tasks))
        init = initial_mixing(tasks, self_weight)
        eye = torch.eye(channels)
        with torch.no_grad():
            for t, block in enumerate(self.fuse):
                weight = torch.cat([init[t, s] * eye for s in range(tasks)], dim=1)  # [C, T*C]
                block[0].weight.copy_(weight[:, :, None, None])

    def forward(self, xs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        cat = torch.cat(list(xs), dim=1)
        return [block(cat) for block in self.fuse]

    def conv_weights(self) -> List[nn.Parameter]:
        """The fusion convolutions' trainable parameters (also when over-parameterised)."""
        return [p for block in self.fuse for p in block[0].parameters() if p.requires_grad]


class _ColumnTrunk(Trunk):
    """T copies of the shared trunk's layers (columns) mixed after the stem and after each of the
    four encoder stages by `self.mixers[level]` (five mixers); each column's pyramid reads its
    own mixed encoder features."""

    per_task = True
    shared_representation = False

    def __init__(self, config, tasks: Sequence[str]):
        super().__init__()
        if not tasks:
            raise ValueError("a soft-sharing trunk needs at least one task")
        self.tasks = list(tasks)
        self.columns = nn.ModuleDict({t: SharedTrunk(config) for t in self.tasks})
        self.feature_channels: Dict[str, int] = dict(self.columns[self.tasks[0]].feature_channels)
        self.mixers = nn.ModuleList(self.make_mixer(len(self.tasks), c) for c in config.channels)

    def make_mixer(self, tasks: int, channels: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        cols = [self.columns[t] for t in self.tasks]
        xs = self.mixers[0]([col.stem(x) for col in cols])
        stems = xs
        feats: List[List[torch.Tensor]] = [[] for _ in cols]
        for i in range(4):
            xs = self.mixers[i + 1]([col.stages[i](h) for col, h in zip(cols, xs)])
            for f, h in zip(feats, xs):
                f.append(h)
        return {t: {"s2": stems[k], "s4": cols[k].decode(feats[k])} for k, t in enumerate(self.tasks)}

    def _encoder(self, task: str) -> List[nn.Module]:
        col = self.columns[task]
        return [col.stem, col.stages]

    def _pyramid(self, task: str) -> List[nn.Module]:
        col = self.columns[task]
        return [col.lateral, col.smooth]


@register_trunk
class CrossStitchTrunk(_ColumnTrunk):
    """Cross-stitch network: columns mixed by `CrossStitchUnit`s.

    Shared parameters: every column's encoder (the units make each column's features feed every
    task) and the units (the last unit's row t only ever gets task t's gradient, but it is one
    tensor). Task-specific: each column's pyramid (lateral + smooth).
    """

    name = "cross_stitch"

    def make_mixer(self, tasks: int, channels: int) -> nn.Module:
        return CrossStitchUnit(tasks, channels)

    def shared_parameters(self) -> List[nn.Parameter]:
        return _params([m for t in self.tasks for m in self._encoder(t)]) + _params(self.mixers)

    def task_parameters(self) -> Dict[str, List[nn.Parameter]]:
        return {t: _params(self._pyramid(t)) for t in self.tasks}

    def mixing_parameters(self) -> List[nn.Parameter]:
        return [unit.weight for unit in self.mixers]

    def last_shared_layer(self) -> nn.Module:
        return self.mixers[-1]


@register_trunk
class NDDRTrunk(_ColumnTrunk):
    """NDDR-CNN: columns fused by `NDDRFusion` layers.

    Shared parameters: every column's encoder and the fusions after the stem and the first three
    stages. Task-specific: the last level's fusion of each task (it feeds only that task's
    pyramid) and each column's pyramid.
    """

    name = "nddr"

    def make_mixer(self, tasks: int, channels: int) -> nn.Module:
        return NDDRFusion(tasks, channels)

    def shared_parameters(self) -> List[nn.Parameter]:
        return _params([m for t in self.tasks for m in self._encoder(t)]) + _params(self.mixers[:-1])

    def task_parameters(self) -> Dict[str, List[nn.Parameter]]:
        last = self.mixers[-1].fuse
        return {t: _params([last[k]] + self._pyramid(t)) for k, t in enumerate(self.tasks)}

    def mixing_parameters(self) -> List[nn.Parameter]:
        """The fusion convolutions' weights (their BN affine terms train at the base rate)."""
        return [w for fusion in self.mixers for w in fusion.conv_weights()]

    def last_shared_layer(self) -> nn.Module:
        """The last layer of every column's final stage: each of them feeds every task."""
        return nn.ModuleList(self.columns[t].stages[3][-1] for t in self.tasks)


class AttentionMask(nn.Sequential):
    """MTAN's attention module g: 1x1 conv-BN-ReLU, 1x1 conv-BN, sigmoid -> a mask in (0, 1)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNAct(cin, cout, kernel=1), ConvBNAct(cout, cout, kernel=1, act=False), nn.Sigmoid())


@register_trunk
class MTANTrunk(Trunk):
    """Multi-task attention network over the unchanged shared trunk (`self.shared`).

    Encoder, level j = stem, stage 1..4: u_j is the output of the level's first layer (its
    strided conv), p_j the level's output. Task t's attended features are
        a_t,0 = g_t,0(p_0) * p_0
        a_t,j = g_t,j([u_j, f_j(a_t,j-1)]) * p_j
    with f_j a *shared* 3x3 stride-2 conv-BN-ReLU that brings the previous level's attended
    features to this level's size and width (MTAN: a shared conv, then pooling). Pyramid, levels
    k = strides 16, 8, 4 (p = the pyramid's merged map there, for stride 4 after `smooth`; u =
    the merged map before it): a_t,k = g_t,k([u_k, up(f_k(a_t,k-1))]) * p_k, with the
    shared f_k a 3x3 conv-BN-ReLU applied before the nearest-neighbour upsampling (cheaper than
    after it, same receptive field in spirit). The heads read {"s2": a_t,stem, "s4": a_t,stride 4}.

    Shared parameters: the shared trunk and the f convs (every task's chain runs through them).
    Task-specific: each task's attention modules g_t.
    """

    name = "mtan"
    per_task = True
    shared_representation = False

    def __init__(self, config, tasks: Sequence[str]):
        super().__init__()
        if not tasks:
            raise ValueError("a soft-sharing trunk needs at least one task")
        self.tasks = list(tasks)
        c, d = config.channels, config.fpn_channels
        self.shared = SharedTrunk(config)
        self.feature_channels: Dict[str, int] = dict(self.shared.feature_channels)
        self.encoder_bridge = nn.ModuleList(ConvBNAct(c[j], c[j + 1], stride=2) for j in range(4))
        self.decoder_bridge = nn.ModuleList(ConvBNAct(c[4] if k == 0 else d, d) for k in range(3))
        self.encoder_attention = nn.ModuleDict({
            t: nn.ModuleList([AttentionMask(c[0], c[0])] + [AttentionMask(2 * c[j], c[j]) for j in range(1, 5)])
            for t in self.tasks})
        self.decoder_attention = nn.ModuleDict({
            t: nn.ModuleList(AttentionMask(2 * d, d) for _ in range(3)) for t in self.tasks})

    def forward(self, x: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        trunk = self.shared
        # the shared trunk's own computation (SharedTrunk.forward), with its intermediate values
        stem = trunk.stem(x)
        first, feats = [], []
        y = stem
        for stage in trunk.stages:
            y = stage[0](y)
            first.append(y)
            for layer in list(stage)[1:]:
                y = layer(y)
            feats.append(y)
        tops = [trunk.lateral[3](feats[3])]
        for i in (2, 1, 0):
            tops.append(trunk.lateral[i](feats[i]) + F.interpolate(tops[-1], size=feats[i].shape[-2:], mode="nearest"))
        s4 = trunk.smooth(tops[3])
        dec_u = tops[1:]  # strides 16, 8, 4
        dec_p = [tops[1], tops[2], s4]

        out: Dict[str, Dict[str, torch.Tensor]] = {}
        for t in self.tasks:
            enc, dec = self.encoder_attention[t], self.decoder_attention[t]
            a = enc[0](stem) * stem
            s2 = a
            for j in range(4):
                a = enc[j + 1](torch.cat([first[j], self.encoder_bridge[j](a)], dim=1)) * feats[j]
            for k in range(3):
                prev = F.interpolate(self.decoder_bridge[k](a), size=dec_p[k].shape[-2:], mode="nearest")
                a = dec[k](torch.cat([dec_u[k], prev], dim=1)) * dec_p[k]
            out[t] = {"s2": s2, "s4": a}
        return out

    def shared_parameters(self) -> List[nn.Parameter]:
        return _params([self.shared, self.encoder_bridge, self.decoder_bridge])

    def task_parameters(self) -> Dict[str, List[nn.Parameter]]:
        return {t: _params([self.encoder_attention[t], self.decoder_attention[t]]) for t in self.tasks}

    def mixing_parameters(self) -> List[nn.Parameter]:
        return []

    def last_shared_layer(self) -> nn.Module:
        return self.shared.smooth
