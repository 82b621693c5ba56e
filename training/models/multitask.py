"""The multi-task network: shared trunk + one head per task, normalisation built in."""
from __future__ import annotations

from typing import Dict, List, Mapping

import torch
from torch import nn

from .trunk import SharedTrunk, TrunkConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiTaskNet(nn.Module):
    """forward(image01) -> {task: raw prediction}; image01 is RGB in [0, 1], NCHW.

    The mean/std normalisation lives inside the module so that training, evaluation and the
    exported graph cannot disagree about it.
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image01: torch.Tensor, return_features: bool = False, cut_features: bool = False):
        """cut_features (training with MGDA-UB/GradNorm): the heads read detached copies of the
        trunk's features, returned as a third value; gradients reach the trunk only when the
        caller backpropagates into `features` itself (one trunk backward for all tasks)."""
        features = self.trunk((image01 - self.mean) / self.std)
        head_inputs = {k: v.detach().requires_grad_() for k, v in features.items()} if cut_features else features
        preds = {name: head(head_inputs, image01) for name, head in self.heads.items()}
        if cut_features:
            return preds, features, head_inputs
        return (preds, features) if return_features else preds

    def shared_parameters(self) -> List[nn.Parameter]:
        return list(self.trunk.parameters())

    def last_shared_parameters(self) -> List[nn.Parameter]:
        return list(self.trunk.last_shared_layer().parameters())

    def task_parameters(self) -> Dict[str, List[nn.Parameter]]:
        return {name: list(head.parameters()) for name, head in self.heads.items()}


def build_model(trunk_config: TrunkConfig, tasks: Mapping[str, "object"]) -> MultiTaskNet:
    """Trunk from its config, heads from the task registry."""
    trunk = SharedTrunk(trunk_config)
    heads = {name: task.build_head(trunk.feature_channels) for name, task in tasks.items()}
    return MultiTaskNet(trunk, heads)
