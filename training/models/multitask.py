"""The multi-task network: a trunk + one head per task, normalisation built in.

The trunk is any registered trunk (`training.models.registry.TRUNKS`): the shared trunk (hard
sharing) or a soft-sharing trunk (`soft_sharing.py`) that returns one feature dict per task; the
recipe's `model.architecture` picks it."""
from __future__ import annotations

from typing import Dict, List, Mapping

import torch
from torch import nn

from training.models.light_heads import depthwise_heads
from training.models.registry import build_trunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiTaskNet(nn.Module):
    """forward(image01) -> {task: raw prediction}; image01 is RGB in [0, 1], NCHW.

    The mean/std normalisation lives inside the module so that training, evaluation and the
    exported graph cannot disagree about it; it is the trunk's own (`input_mean`/`input_std`,
    e.g. a timm encoder's pretrained_cfg) where the trunk has one, ImageNet's otherwise. A trunk
    with `per_task = True` returns {task: {"s2", "s4"}} and each head reads its own task's features.
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        mean, std = getattr(trunk, "input_mean", IMAGENET_MEAN), getattr(trunk, "input_std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image01: torch.Tensor, return_features: bool = False, cut_features: bool = False):
        """cut_features (training with MGDA-UB/GradNorm): the heads read detached copies of the
        trunk's features, returned as a third value; gradients reach the trunk only when the
        caller backpropagates into `features` itself (one trunk backward for all tasks)."""
        features = self.features(image01)
        if cut_features:
            if self.per_task:
                raise ValueError("cut_features needs one shared representation; this trunk gives each task its own")
            cut = {k: v.detach().requires_grad_() for k, v in features.items()}
            return {name: head(cut, image01) for name, head in self.heads.items()}, features, cut
        inputs = self.head_inputs(features)
        preds = {name: head(inputs[name], image01) for name, head in self.heads.items()}
        return (preds, features) if return_features else preds

    def features(self, image01: torch.Tensor):
        """The trunk's output for an RGB [0, 1] image (normalised here)."""
        return self.trunk((image01 - self.mean) / self.std)

    def head_inputs(self, features) -> Dict[str, object]:
        """{task: what its head reads}: the trunk's features, or its own features from a
        per-task (soft-sharing) trunk."""
        return {name: features[name] if self.per_task else features for name in self.heads}

    @property
    def per_task(self) -> bool:
        """Whether the trunk gives each task its own features (soft sharing)."""
        return bool(getattr(self.trunk, "per_task", False))

    def shared_parameters(self) -> List[nn.Parameter]:
        """Parameters that receive gradient from more than one task."""
        if hasattr(self.trunk, "shared_parameters"):
            return list(self.trunk.shared_parameters())
        return list(self.trunk.parameters())

    def last_shared_parameters(self) -> List[nn.Parameter]:
        return list(self.trunk.last_shared_layer().parameters())

    def task_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """Each task's own parameters: its head, plus its part of a soft-sharing trunk."""
        own = self.trunk.task_parameters() if hasattr(self.trunk, "task_parameters") else {}
        return {name: list(head.parameters()) + list(own.get(name, ())) for name, head in self.heads.items()}

    def encoder_parameters(self) -> List[nn.Parameter]:
        """A timm encoder's parameters: their own optimizer group (lr x `encoder_lr_scale`);
        empty for the compact trunks."""
        if hasattr(self.trunk, "encoder_parameters"):
            return list(self.trunk.encoder_parameters())
        return []

    def mixing_parameters(self) -> List[nn.Parameter]:
        """Cross-stitch units / NDDR fusion weights: their own optimizer group
        (lr x `mixing_lr_scale`, no weight decay); empty for the shared trunk and MTAN."""
        if hasattr(self.trunk, "mixing_parameters"):
            return list(self.trunk.mixing_parameters())
        return []


def build_model(trunk_config, tasks: Mapping[str, "object"]) -> MultiTaskNet:
    """Trunk from the recipe's `model` section (training.recipe.model.TrunkConfig: `backbone`, or
    `architecture` named in the trunk registry), heads from the task registry (depthwise-separable
    with `head: depthwise`)."""
    trunk = build_trunk(trunk_config, list(tasks))
    heads = nn.ModuleDict({name: task.build_head(trunk.feature_channels) for name, task in tasks.items()})
    if trunk_config.head == "depthwise":
        depthwise_heads(heads)
    return MultiTaskNet(trunk, heads)
