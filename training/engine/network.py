"""The one builder of tasks and networks, from a recipe or from a checkpoint.

Training, export, SWA, distillation teachers, reports, cost and task grouping all build their
network here, so "which trunk, which heads, over-parameterised or not, which weights" has one
answer. A checkpoint's recipe is read through `recipe_from_dict`, in the same typed form as a
YAML recipe (every section, `overparam` included, one way).

- `network_from_recipe(recipe, tasks)`: the recipe's untrained network (trunk from the trunk
  registry, heads from the task registry), over-parameterised as its `overparam` section says;
- `network_from_checkpoint(state)`: a checkpoint's network as it was trained (expanded unless it
  was saved after the collapse), weights loaded, eval mode.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

from torch import nn

from mtl_perception.data.dataset import MultiTaskDataset
from training.engine.checkpoint import CheckpointError
from training.models.collapse import apply_overparam
from training.models.multitask import MultiTaskNet, build_model
from training.models.state_dicts import state_dict_mismatch
from training.models.timm_trunk import BackboneError, init_backbone
from training.recipe.config import ConfigError
from training.recipe.core import Recipe, recipe_from_dict
from training.tasks import TASKS, DataInfo, Task

__all__ = ["build_tasks", "checkpoint_data_info", "checkpoint_recipe", "data_info_dict", "dataset_info",
           "expanded_layers", "make_tasks", "network_from_checkpoint", "network_from_recipe", "tasks_from_checkpoint"]


# -- tasks ---------------------------------------------------------------------------------------
def make_tasks(recipe: Recipe, info: DataInfo) -> Dict[str, Task]:
    """The recipe's tasks (options validated by each task's Options) for data described by `info`."""
    return {name: TASKS[name](opts, info) for name, opts in recipe.task_options().items()}


def dataset_info(recipe: Recipe, source: MultiTaskDataset) -> DataInfo:
    """The data facts of a dataset (its class lists) at the recipe's input size and SR scale."""
    return DataInfo(semantic_classes=tuple(source.semantic_classes), detection_classes=tuple(source.detection_classes),
                    sr_scale=recipe.data.sr_scale, input_size=tuple(recipe.data.input_size))


def build_tasks(recipe: Recipe, source: MultiTaskDataset) -> Dict[str, Task]:
    """The recipe's tasks for the classes of dataset `source`."""
    return make_tasks(recipe, dataset_info(recipe, source))


def data_info_dict(tasks: Mapping[str, Task]) -> dict:
    """The data facts a checkpoint needs to rebuild its tasks without the dataset."""
    info = next(iter(tasks.values())).info
    return {"semantic_classes": list(info.semantic_classes), "detection_classes": list(info.detection_classes),
            "sr_scale": info.sr_scale, "input_size": list(info.input_size)}


def checkpoint_data_info(state: Mapping) -> DataInfo:
    """`data_info_dict` read back from a checkpoint."""
    d = state["data_info"]
    return DataInfo(semantic_classes=tuple(d["semantic_classes"]), detection_classes=tuple(d["detection_classes"]),
                    sr_scale=int(d["sr_scale"]), input_size=tuple(d["input_size"]))


def checkpoint_recipe(state: Mapping) -> Recipe:
    """A checkpoint's recipe, validated like a recipe file."""
    return recipe_from_dict(state["recipe"], "checkpoint recipe")


def tasks_from_checkpoint(state: Mapping) -> Dict[str, Task]:
    """A checkpoint's tasks, rebuilt from its recipe and data facts (no dataset needed)."""
    return make_tasks(checkpoint_recipe(state), checkpoint_data_info(state))


# -- networks ------------------------------------------------------------------------------------
def network_from_recipe(recipe: Recipe, tasks: Mapping[str, Task], expanded: bool = True,
                        load_pretrained: bool = False) -> MultiTaskNet:
    """The recipe's untrained network, over-parameterised as its `overparam` section says unless
    `expanded` is False. `load_pretrained`: a timm encoder starts from `model.pretrained` with
    `model.freeze_stages` frozen (what training starts from; a checkpoint's weights replace them).
    Seed torch first where the initial weights matter (the trainer does)."""
    model = build_model(recipe.model, tasks)
    if load_pretrained:
        try:
            init_backbone(model.trunk, recipe.model)
        except BackboneError as exc:
            raise ConfigError(str(exc)) from None
    if expanded:
        try:  # over-parameterised layers train in place of the compact ones
            apply_overparam(model, recipe.overparam)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return model


def network_from_checkpoint(state: Mapping, tasks: Optional[Mapping[str, Task]] = None,
                            source: str = "checkpoint") -> MultiTaskNet:
    """The network of a checkpoint as it was trained (over-parameterised unless the checkpoint was
    saved after the collapse), weights loaded, eval mode, on the CPU. `tasks`: the checkpoint's
    tasks when the caller has them already (`tasks_from_checkpoint`). Weights that do not fit
    the network this version builds from the checkpoint's recipe (a checkpoint of an older head,
    say) are a one-line CheckpointError naming `source` and the first mismatching tensors."""
    recipe = checkpoint_recipe(state)
    if tasks is None:
        tasks = make_tasks(recipe, checkpoint_data_info(state))
    model = network_from_recipe(recipe, tasks, expanded=not state.get("collapsed"))
    problem = state_dict_mismatch(model.state_dict(), state["model"])
    if problem:
        raise CheckpointError(f"{source}: its weights do not fit the network this version of mtl_perception builds "
                              f"from its recipe ({problem}); it was written by an older version: retrain, or "
                              f"export it with the version that wrote it")
    model.load_state_dict(state["model"])
    return model.eval()


def expanded_layers(model: nn.Module) -> List[str]:
    """Names of the over-parameterised layers in `model` (those `collapse` would replace)."""
    return [name for name, module in model.named_modules() if name and hasattr(module, "collapsed")]
