"""The trunk registry: every trunk (encoder + feature pyramid, or a backbone) by name.

A trunk is declared, not hard-wired, like tasks (`training.tasks`) and balancers
(`training.balancers`): subclass `Trunk`, give it a `name`, decorate it with `@register_trunk`
and import its module in `training/models/__init__.py`; a recipe then names it as
`model.architecture` and the multi-task network, balancers, distillation, export and cost work
with it unchanged. What a trunk declares:

- `feature_channels` / `feature_strides` (instance / class attributes): the channels and the
  stride of every feature level it returns. Heads read the levels of `HEAD_FEATURES` ("s4", the
  finest pyramid level, for segmentation, depth and detection; "s2", stem detail, for
  super-resolution), so every trunk returns at least those, at those strides;
- `per_task`: False when `forward(x)` returns one `{level: tensor}` dict that every head reads
  (hard sharing), True when it returns `{task: {level: tensor}}` (soft sharing);
- `shared_representation`: whether all heads read one set of features that gradient balancers
  can cut (MGDA-UB, GradNorm's representation); the recipe refuses such balancers otherwise;
- `last_shared_layer()`, `shared_parameters()`, `task_parameters()`, `mixing_parameters()`: the
  parameter lists the balancers and the optimizer groups read (defaults: every parameter is
  shared, no task-specific or mixing parameters).
"""
from __future__ import annotations

from typing import ClassVar, Dict, List, Sequence, Type

from torch import nn

#: the feature levels task heads read, with their strides
HEAD_FEATURES: Dict[str, int] = {"s2": 2, "s4": 4}

TRUNKS: Dict[str, Type["Trunk"]] = {}


def register_trunk(cls: Type["Trunk"]) -> Type["Trunk"]:
    """Class decorator: makes `cls` available as recipe `model.architecture: <cls.name>`."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__}: a registered trunk needs a name")
    TRUNKS[cls.name] = cls
    return cls


class Trunk(nn.Module):
    """Base of the registered trunks (see the module docstring for what a trunk declares).

    Built as `cls(config, tasks)`: `config` is the recipe's `model` section
    (`training.recipe.model.TrunkConfig`), `tasks` the task names in head order."""

    name: ClassVar[str] = ""
    per_task: ClassVar[bool] = False
    shared_representation: ClassVar[bool] = True
    feature_strides: ClassVar[Dict[str, int]] = dict(HEAD_FEATURES)
    feature_channels: Dict[str, int]

    def last_shared_layer(self) -> nn.Module:
        """The last layer every task's gradient reaches (GradNorm's W)."""
        raise NotImplementedError(f"{type(self).__name__} declares no last shared layer")

    def shared_parameters(self) -> List[nn.Parameter]:
        """Parameters that receive gradient from more than one task."""
        return list(self.parameters())

    def task_parameters(self) -> Dict[str, List[nn.Parameter]]:
        """Each task's own trunk parameters (soft sharing); none for a shared trunk."""
        return {}

    def mixing_parameters(self) -> List[nn.Parameter]:
        """Cross-task mixing weights that train with their own learning rate (none by default)."""
        return []


#: `model.backbone` of the home trunk; any other backbone is a timm encoder (trunk "timm")
COMPACT = "compact"


def build_trunk(config, tasks: Sequence[str]) -> Trunk:
    """The trunk `config.architecture` names (the timm trunk when `config.backbone` is a timm
    encoder), checked to provide the levels the heads read."""
    name = config.architecture if getattr(config, "backbone", COMPACT) == COMPACT else "timm"
    if name not in TRUNKS:
        raise ValueError(f"model.architecture: unknown {name!r} (known: {', '.join(sorted(TRUNKS))})")
    trunk = TRUNKS[name](config, list(tasks))
    for level, stride in HEAD_FEATURES.items():
        if level not in trunk.feature_channels or trunk.feature_strides.get(level) != stride:
            raise ValueError(f"trunk {config.architecture!r} must return feature level {level!r} at stride {stride} "
                             f"(it declares channels {trunk.feature_channels}, strides {trunk.feature_strides})")
    return trunk
