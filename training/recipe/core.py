"""Training recipes: YAML files validated into typed dataclasses on load.

Every section is a dataclass of this package (`model`: `model.py`, `overparam`: `overparam.py`,
`sam`/`swa`/`distill`: `extras.py`, the rest here) except the options that belong to one
registered task or balancer, which that task or balancer declares (`Task.Options`,
`Balancer.Options`) and `Recipe.task_options()` / `balancer_options()` build. A checkpoint's
recipe is read back through `recipe_from_dict` too, so each section has one typed form.

Every key is checked: an unknown key, a wrong type or an unknown task/balancer name is a
one-line `ConfigError` naming the file and the dotted key. Relative paths are relative to the
working directory, like any command-line tool.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

from training.balancers import BALANCERS
from training.models.registry import TRUNKS
from training.models.timm_trunk import check_backbone_name
from training.recipe.augment import AugmentConfig
from training.recipe.config import ConfigError, build, to_dict
from training.recipe.extras import DistillConfig, SAMConfig, SWAConfig
from training.recipe.model import TrunkConfig
from training.recipe.overparam import OverparamConfig
from training.tasks import TASKS


@dataclass
class GenerateConfig:
    """Synthetic data made on first use when the train/val folders do not exist."""

    train_frames: int = 1600
    val_frames: int = 200
    seed: int = 0
    night_fraction: float = 0.25

    def check(self):
        if self.train_frames < 1 or self.val_frames < 1:
            raise ValueError("train_frames and val_frames must be positive")
        if not 0 <= self.night_fraction <= 1:
            raise ValueError("night_fraction must be in [0, 1]")


SOURCE_TASKS = ("segmentation", "depth", "detection", "super_resolution")


@dataclass
class SourceConfig:
    """One source of a mixed `data.train` list (see training.engine.data.open_sources).

    format: "mtl" (the project's format), "synthetic" (the same, generated on first use with
    `frames` and `seed`) or any format registered with `register_source_format` (the readers).
    tasks: the task kinds used from this source (default: all it has); weight: its share of the
    draws (default: proportional to its size); class_map: source class name -> recipe class name
    (null drops it; unlisted names keep their name; names that are not recipe classes are
    ignored: 255 pixels, dropped boxes); options: keyword options of the format's reader."""

    root: str
    format: str = "mtl"
    tasks: Optional[List[str]] = None
    weight: Optional[float] = None
    class_map: Dict[str, Optional[str]] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)
    frames: int = 0
    seed: int = 0

    def check(self):
        unknown = sorted(set(self.tasks or ()) - set(SOURCE_TASKS))
        if unknown:
            raise ValueError(f"tasks: unknown task kind {unknown[0]!r} (known: {', '.join(SOURCE_TASKS)})")
        if self.weight is not None and not self.weight > 0:
            raise ValueError(f"weight must be positive, got {self.weight}")
        if self.format == "synthetic" and self.frames < 1:
            raise ValueError("a synthetic source needs frames >= 1")
        if self.format != "synthetic" and self.frames:
            raise ValueError("frames is for synthetic sources only")


@dataclass
class DataConfig:
    #: a dataset folder in the project's format, or a list of sources (partial labels, mixed)
    train: Union[str, List[SourceConfig]] = "data/synthetic/train"
    val: Union[str, List[SourceConfig]] = "data/synthetic/val"
    #: the recipe's classes (default: the first train source that has any); sources map into them
    semantic_classes: Optional[List[str]] = None
    detection_classes: Optional[List[str]] = None
    generate: Optional[GenerateConfig] = None
    input_size: Tuple[int, int] = (192, 128)  # width, height of the network input
    sr_scale: int = 2  # the SR target is the image at input_size * sr_scale
    #: how an image of another aspect ratio becomes the input (mtl_perception.contract.RESIZE_MODES);
    #: the exported model records it and the node resizes camera frames the same way
    resize: Literal["stretch", "letterbox", "crop"] = "stretch"
    cache: bool = True  # keep decoded, resized samples in memory
    workers: int = 0  # DataLoader worker processes
    augment_flip: bool = True  # false is the older spelling of augment.flip: 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the training set's augmentation

    def check(self):
        for key in ("train", "val"):
            value = getattr(self, key)
            if isinstance(value, list):
                if not value:
                    raise ValueError(f"{key}: an empty list of sources")
                weights = [s.weight is None for s in value]
                if any(weights) and not all(weights):
                    raise ValueError(f"{key}: give every source a weight or none")
        w, h = self.input_size
        if w % 32 or h % 32 or w <= 0 or h <= 0:
            raise ValueError(f"input_size {w}x{h} must be positive multiples of 32")
        if self.sr_scale < 1:
            raise ValueError("sr_scale must be >= 1")

    @property
    def augmentation(self) -> Optional[AugmentConfig]:
        """What the training set applies; None when nothing is left to do."""
        config = self.augment if self.augment_flip else replace(self.augment, flip=0.0)
        if config.flip == 0 and not config.geometric and not config.color.active:
            return None
        return config


@dataclass
class BalancerConfig:
    name: str = "fixed"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    epochs: int = 12
    batch_size: int = 16
    accumulate: int = 1  # micro-batches per optimizer step
    amp: bool = False  # mixed precision: bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 10.0  # max global gradient norm; 0 disables
    #: a step with a non-finite loss or gradient is skipped; this many in a row stop the run
    max_nonfinite_steps: int = 3

    def check(self):
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ValueError("lr, epochs, batch_size and accumulate must be positive")
        if self.max_nonfinite_steps < 1:
            raise ValueError("max_nonfinite_steps must be >= 1")


@dataclass
class ExportConfig:
    opset: int = 18
    verify_frames: int = 8  # validation frames compared between torch and onnxruntime


@dataclass
class Recipe:
    name: str = "model"
    seed: int = 0
    out_dir: str = "runs/model"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    data: DataConfig = field(default_factory=DataConfig)
    model: TrunkConfig = field(default_factory=TrunkConfig)
    tasks: Dict[str, Dict[str, Any]] = field(
        default_factory=lambda: {name: {} for name in ("segmentation", "depth", "detection", "super_resolution")}
    )
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    overparam: OverparamConfig = field(default_factory=OverparamConfig)
    sam: Optional[SAMConfig] = None  # sharpness-aware minimisation around the optimizer
    swa: Optional[SWAConfig] = None  # weight averaging over the last epochs of optim.epochs
    distill: Optional[DistillConfig] = None  # distillation from frozen single-task teachers
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def total_epochs(self) -> int:
        """Training epochs plus fine-tuning epochs on the collapsed network."""
        return self.optim.epochs + (self.overparam.finetune_epochs if self.overparam.enabled else 0)

    def check(self):
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        for name in self.tasks:
            if name not in TASKS:
                raise ValueError(f"tasks.{name}: unknown task (registered: {', '.join(sorted(TASKS))})")
        if self.balancer.name not in BALANCERS:
            raise ValueError(f"balancer.name: unknown balancer {self.balancer.name!r} "
                             f"(known: {', '.join(sorted(BALANCERS))})")
        check_backbone_name(self.model.backbone)
        if self.swa is not None and self.model.freeze_stages:
            raise ValueError("swa: its BatchNorm refresh recomputes every BatchNorm's statistics, also those of the "
                             "frozen stages (model.freeze_stages); use one or the other")
        if self.swa is not None:
            try:
                self.swa.check_epochs(self.optim.epochs)
            except ValueError as exc:
                raise ValueError(f"swa.{exc}") from None
        if self.distill is not None:
            try:
                self.distill.check_tasks(list(self.tasks))
            except ValueError as exc:
                raise ValueError(f"distill.{exc}") from None
        if (BALANCERS[self.balancer.name].needs_representation
                and not TRUNKS[self.model.architecture].shared_representation):
            raise ValueError(f"balancer.name: {self.balancer.name} needs the one representation all heads share, which "
                             f"model.architecture {self.model.architecture!r} does not have "
                             "(use architecture 'shared')")

    def task_options(self) -> Dict[str, Any]:
        """Each task's options, validated by that task's own Options dataclass."""
        return {name: build(TASKS[name].Options, opts, f"tasks.{name}") for name, opts in self.tasks.items()}

    def balancer_options(self):
        cls = BALANCERS[self.balancer.name]
        options = build(cls.Options, self.balancer.options, "balancer.options")
        check_tasks = getattr(options, "check_tasks", None)
        if callable(check_tasks):  # options that name tasks (e.g. per-task forms) must name real ones
            try:
                check_tasks(list(self.tasks))
            except ValueError as exc:
                raise ConfigError(f"balancer.options: {exc}") from None
        return options

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    try:
        recipe = build(Recipe, data)
        recipe.task_options()
        recipe.balancer_options()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return recipe


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Reads a YAML recipe; `overrides` are `dotted.key=value` strings (value parsed as YAML)."""
    path = Path(path)
    data = _read_yaml(path)
    apply_overrides(data, overrides, str(path))
    return recipe_from_dict(data, str(path))


def load_run_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Tuple[Recipe, Dict[str, Any]]:
    """A recipe for commands that run many one-thread training processes side by side (sweep,
    comparisons, task grouping): validated, with `threads: 1`; returns it and its full document."""
    data = _read_yaml(Path(path))
    apply_overrides(data, overrides, str(path))
    data["threads"] = 1
    recipe = recipe_from_dict(data, str(path))
    return recipe, recipe.to_dict()


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str], source: str = "recipe") -> None:
    """`dotted.key=value` strings into `data`; a number indexes a list (`data.train.0.root=...`:
    the first source's root)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r} is not key=value")
        node: Any = data
        parts: List[str] = key.split(".")
        for part in parts[:-1]:
            node = _list_item(node, part, key, source) if isinstance(node, list) else node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{source}: override {key!r} goes through a non-mapping")
        if isinstance(node, list):
            _list_item(node, parts[-1], key, source)
            node[int(parts[-1])] = yaml.safe_load(value)
        else:
            node[parts[-1]] = yaml.safe_load(value)


def _list_item(node: List[Any], part: str, key: str, source: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{source}: override {key!r}: {part!r} is not an index of a list of {len(node)}")
    return node[int(part)]
