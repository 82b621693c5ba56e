"""Distillation from frozen teachers into the multi-task student.

The student learns from the ground truth (the tasks' own losses) and from teachers: single-task
(or any) checkpoints of this trainer, frozen (eval mode, no gradients, buffers never change).
Each task declares its own distillation loss in the task registry (`Task.distill_loss`, zero
exactly when the student reproduces the teacher): segmentation the temperature-scaled KL
(`training.tasks.segmentation.segmentation_kd`), depth smooth L1 on log-depth (`depth_kd`),
detection heatmap KL plus confidence-weighted size/offset L1 (`detection_kd`), super-resolution
L1 (`super_resolution_kd`). This module adds:

- optional feature imitation: 1×1 conv adaptors map the student's trunk features to each
  teacher's channels, MSE to the teacher's features (identity-initialised when the widths match).

`Teachers` runs the teachers (float32, no autocast, no_grad) and can cache their outputs on disk,
keyed by the teacher's parameter fingerprint (a changed teacher is a different cache), the
dataset, the sample index and the flip flag, with a digest of the exact input image stored in
each entry and checked on every hit: a cached output is only ever used for the input the student
sees now (an entry that does not match is recomputed and replaced). Under zoom, crop or colour
augmentation no entry could ever match, so `Distiller` turns the cache off with a warning
(`cache_bypass_reason`); flip-only augmentation keeps it (the flip is part of the key).

Trainer wiring (sketch)::

    teachers = Teachers.from_config(cfg, device); teachers.check_compatible(data_info_dict(tasks), recipe.data.resize)
    adaptors = FeatureAdaptors.build(model.trunk.feature_channels, teachers, cfg.feature_levels)  # if on;
    #   its parameters go into the optimizer (own group), it is not part of the exported model
    preds, features = train_model(image01, return_features=True)
    t_preds, t_feats = teachers(batch, image01, dataset=recipe.data.train,
                                flips=flip_flags(train_set, batch["index"]))
    kd = distillation_losses(preds, t_preds, cfg, tasks,
                             student_features=features, teacher_features=t_feats, adaptors=adaptors)
    losses = {t: v + kd[t] if t in kd else v for t, v in losses.items()}
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from training.engine.augment import flip_coin
from training.engine.checkpoint import CheckpointError, load_checkpoint, parameter_fingerprint
from training.engine.network import checkpoint_recipe, network_from_checkpoint, tasks_from_checkpoint
from training.recipe.extras import DistillConfig
from training.tasks import Task

__all__ = ["DistillConfig", "DistillError", "Distiller", "Teachers", "FeatureAdaptors", "cache_bypass_reason",
           "distillation_losses", "flip_flags", "task_features"]


class DistillError(CheckpointError):
    """A teacher checkpoint cannot serve (missing task, different classes/sizes); names the file."""


class FeatureAdaptors(nn.Module):
    """1×1 convs from the student's trunk features to each teacher's feature channels."""

    def __init__(self, student_channels: Mapping[str, int], teacher_channels: Mapping[str, Mapping[str, int]],
                 levels: Sequence[str] = ("s4",)):
        super().__init__()
        self.levels = list(levels)
        self.convs = nn.ModuleDict()
        for task, channels in teacher_channels.items():
            for level in self.levels:
                conv = nn.Conv2d(student_channels[level], channels[level], 1)
                if student_channels[level] == channels[level]:  # start as the identity
                    with torch.no_grad():
                        conv.weight.copy_(torch.eye(channels[level]).view_as(conv.weight))
                        conv.bias.zero_()
                self.convs[f"{task}__{level}"] = conv

    @classmethod
    def build(cls, student_channels: Mapping[str, int], teachers: "Teachers",
              levels: Sequence[str]) -> "FeatureAdaptors":
        return cls(student_channels, {t: teachers.feature_channels(t) for t in teachers.tasks}, levels)

    def loss(self, task: str, student_features: Mapping[str, Any],
             teacher_features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """MSE of the adapted student features (shared {level: x}, or per task {task: {level:
        x}} from a soft-sharing trunk: then the task's own) to the teacher's {level: x}."""
        student_features = task_features(student_features, task)
        terms = [F.mse_loss(self.convs[f"{task}__{lvl}"](student_features[lvl].float()), teacher_features[lvl].float())
                 for lvl in self.levels]
        return sum(terms) / len(terms)


def task_features(features: Mapping[str, Any], task: str) -> Mapping[str, torch.Tensor]:
    """A task's trunk features: per-task trunks (soft sharing) return {task: {level: x}}."""
    value = features.get(task)
    return value if isinstance(value, Mapping) else features


def distillation_losses(student_preds: Mapping[str, Any], teacher_preds: Mapping[str, Any], config: DistillConfig,
                        tasks: Mapping[str, Task],
                        student_features: Optional[Mapping[str, torch.Tensor]] = None,
                        teacher_features: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None,
                        adaptors: Optional[FeatureAdaptors] = None) -> Dict[str, torch.Tensor]:
    """{task: weighted distillation loss} for every task with a teacher prediction; the trainer
    adds each to that task's ground-truth loss, computed by the student task's own
    `distill_loss` (the task registry). Feature imitation (when on and given features and adaptors) is added to the loss
    of the task whose teacher the features come from."""
    out: Dict[str, torch.Tensor] = {}
    for task, teacher in teacher_preds.items():
        loss = config.weight(task) * tasks[task].distill_loss(student_preds[task], teacher, config)
        if (config.feature_imitation and adaptors is not None and student_features is not None
                and teacher_features is not None and task in teacher_features):
            loss = loss + config.feature_weight * adaptors.loss(task, student_features, teacher_features[task])
        out[task] = loss
    return out


# -- teachers ------------------------------------------------------------------------------------
def cache_bypass_reason(dataset) -> Optional[str]:
    """Why the teacher cache cannot serve `dataset` (a TaskDataset), or None. The cache keys an
    entry by (sample, flip); zoom, crop or colour jitter give a sample a new input every epoch,
    so every entry would fail its image digest: read, recomputed and rewritten each step, never
    used (correct, but all cost and disk churn)."""
    augment = getattr(dataset, "augment", None)
    if augment is None or not (augment.geometric or augment.color.active):
        return None
    what = " and ".join(w for w, on in (("zoom/crop (data.augment.scale)", augment.geometric),
                                        ("colour jitter (data.augment.color)", augment.color.active)) if on)
    return (f"distill.cache is off for this run: {what} changes every sample's input from epoch to epoch, so a "
            f"cached teacher output would never match it; the teachers run on every batch")


def flip_flags(dataset, indices: torch.Tensor) -> torch.Tensor:
    """Whether TaskDataset flipped each sample in its current epoch (the coin of (seed, epoch,
    index)); all False without augmentation. With persistent DataLoader workers the workers' copy
    of the epoch may lag (the cache's image digest catches any disagreement)."""
    if not getattr(dataset, "augment", False):
        return torch.zeros(len(indices), dtype=torch.bool)
    return torch.tensor([flip_coin(dataset.seed, dataset.epoch, int(i)) for i in indices], dtype=torch.bool)


@dataclass
class _Teacher:
    path: str
    model: nn.Module
    fingerprint: str
    tasks: List[str]  # student tasks this checkpoint teaches
    kinds: Dict[str, str]
    data_info: Dict[str, Any]
    resize: str  # the teacher's recipe `data.resize`: how its frames were fitted to its input
    feature_channels: Dict[str, int] = field(default_factory=dict)


def _map(value, fn):
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _stack(items: Sequence[Any]):
    if torch.is_tensor(items[0]):
        return torch.stack(list(items))
    return {k: _stack([it[k] for it in items]) for k in items[0]}


class Teachers:
    """Frozen teachers for some of the student's tasks: {task: checkpoint path}. A checkpoint
    named for several tasks is loaded and run once. Call with a batch (uint8 `image`, `index`)
    to get ({task: raw prediction}, {task: {level: features}})."""

    def __init__(self, paths: Mapping[str, str], device="cpu", cache_dir: Optional[str] = None,
                 cache_dtype: str = "float32", feature_levels: Sequence[str] = ()):
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache_dtype = {"float32": torch.float32, "float16": torch.float16}[cache_dtype]
        self.feature_levels = list(feature_levels)
        self.tasks = list(paths)
        self._teachers: Dict[str, _Teacher] = {}
        for task, path in paths.items():
            key = os.path.realpath(path)
            if key not in self._teachers:
                state = load_checkpoint(path)
                tasks = tasks_from_checkpoint(state)
                model = network_from_checkpoint(state, tasks, source=str(path))
                model = model.to(self.device).eval().requires_grad_(False)
                self._teachers[key] = _Teacher(
                    path=str(path), model=model, fingerprint=parameter_fingerprint(state["model"]),
                    tasks=[], kinds={t: task_obj.kind for t, task_obj in tasks.items()},
                    data_info=dict(state["data_info"]), resize=checkpoint_recipe(state).data.resize,
                    feature_channels=dict(model.trunk.feature_channels))
            teacher = self._teachers[key]
            if task not in teacher.kinds:
                raise DistillError(f"{path}: teacher for {task!r} has no such task (it has {', '.join(teacher.kinds)})")
            teacher.tasks.append(task)
        self.stats = {"hits": 0, "misses": 0, "stale": 0, "runs": 0}

    @classmethod
    def from_config(cls, config: DistillConfig, device="cpu") -> "Teachers":
        return cls(config.teachers, device=device, cache_dir=config.cache_dir if config.cache else None,
                   cache_dtype=config.cache_dtype,
                   feature_levels=config.feature_levels if config.feature_imitation else ())

    def models(self) -> List[nn.Module]:
        return [t.model for t in self._teachers.values()]

    def feature_channels(self, task: str) -> Dict[str, int]:
        return next(t.feature_channels for t in self._teachers.values() if task in t.tasks)

    def check_compatible(self, data_info: Mapping[str, Any], resize: str) -> None:
        """The student's data facts (trainer.data_info_dict) and resize mode must match each
        teacher's where its outputs depend on them: input size and resize mode always (a teacher
        runs on the student's frames: stretched frames to a letterbox teacher are not what it
        learnt from), classes of segmentation/detection, SR scale."""
        for t in self._teachers.values():
            if t.resize != resize:
                raise DistillError(f"{t.path}: teacher's resize {t.resize!r} differs from the student's {resize!r} "
                                   f"(data.resize): it would see frames fitted differently from its own")
            needs = ["input_size"]
            kinds = {t.kinds[task] for task in t.tasks}
            needs += ["semantic_classes"] if "segmentation" in kinds else []
            needs += ["detection_classes"] if "detection" in kinds else []
            needs += ["sr_scale"] if "super_resolution" in kinds else []
            for key in needs:
                if list(_as_list(t.data_info[key])) != list(_as_list(data_info[key])):
                    raise DistillError(f"{t.path}: teacher's {key} {t.data_info[key]} differs from the student's "
                                       f"{data_info[key]}")

    # -- running -------------------------------------------------------------------------------
    def _forward(self, teacher: _Teacher, image01: torch.Tensor):
        self.stats["runs"] += 1
        teacher.model.eval()  # whatever anyone did to it, teachers never use batch statistics
        with torch.no_grad(), torch.autocast(image01.device.type, enabled=False):
            return teacher.model(image01.float(), return_features=True)

    def _run(self, teacher: _Teacher, image01: torch.Tensor) -> List[Dict[str, Any]]:
        """Per-sample cache entries {"pred": {task: ...}, "features": {level: ...}}, each tensor
        in the cache's dtype with its own storage (a saved view would save the whole batch)."""
        preds, features = self._forward(teacher, image01)
        entries = []
        for i in range(image01.shape[0]):
            # _map calls the lambda at once, in this iteration of i
            pred = {task: _map(preds[task], lambda x: x[i].to(self.cache_dtype).cpu().clone())  # noqa: B023
                    for task in teacher.tasks}
            feats = {task: {lvl: task_features(features, task)[lvl][i].to(self.cache_dtype).cpu().clone()
                            for lvl in self.feature_levels} for task in teacher.tasks}
            entries.append({"pred": pred, "features": feats})
        return entries

    def _entry_path(self, teacher: _Teacher, dataset: str, shape, index: int, flip: bool) -> Path:
        where = hashlib.blake2b(f"{dataset}|{tuple(shape)}".encode(), digest_size=8).hexdigest()
        return self.cache_dir / teacher.fingerprint / where / f"{index}_{int(flip)}.pt"

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, torch.Tensor], image01: Optional[torch.Tensor] = None,
                 dataset: str = "", flips: Optional[torch.Tensor] = None
                 ) -> Tuple[Dict[str, Any], Dict[str, Dict[str, torch.Tensor]]]:
        """Teacher predictions for `batch` (and features at `feature_levels`). With a cache,
        `dataset` names the data (e.g. the recipe's data.train) and `flips` says which samples
        were flipped (`flip_flags`); batch["index"] must be the dataset indices."""
        images = batch["image"]
        if image01 is None:
            image01 = images.to(self.device).float() / 255.0
        image01 = image01.to(self.device)
        preds: Dict[str, Any] = {}
        feats: Dict[str, Dict[str, torch.Tensor]] = {}
        for teacher in self._teachers.values():
            if self.cache_dir is None:
                out, features = self._forward(teacher, image01)
                for task in teacher.tasks:
                    preds[task] = out[task]
                    if self.feature_levels:
                        feats[task] = {lvl: task_features(features, task)[lvl] for lvl in self.feature_levels}
                continue
            entries = self._cached(teacher, images, image01, dataset, flips, batch)
            for task in teacher.tasks:
                preds[task] = _map(_stack([e["pred"][task] for e in entries]), lambda x: x.to(self.device).float())
                if self.feature_levels:
                    feats[task] = {lvl: torch.stack([e["features"][task][lvl] for e in entries]).to(self.device).float()
                                   for lvl in self.feature_levels}
        return preds, feats

    def _cached(self, teacher: _Teacher, images, image01, dataset, flips, batch) -> List[Dict[str, Any]]:
        if "index" not in batch:
            raise KeyError("the teacher cache needs batch['index'] (TaskDataset provides it)")
        indices = [int(i) for i in batch["index"]]
        flips = [bool(f) for f in flips] if flips is not None else [False] * len(indices)
        host = images.detach().cpu()
        digests = [hashlib.blake2b(host[i].contiguous().numpy().tobytes(), digest_size=16).hexdigest()
                   for i in range(len(indices))]
        entries: List[Optional[Dict[str, Any]]] = [None] * len(indices)
        paths = [self._entry_path(teacher, dataset, host.shape[1:], idx, f) for idx, f in zip(indices, flips)]
        for i, path in enumerate(paths):
            if not path.is_file():
                continue
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a torn or foreign file: recompute it
                entry = None
            if (entry is not None and entry.get("digest") == digests[i]
                    and all(lvl in entry["features"].get(t, {}) for t in teacher.tasks for lvl in self.feature_levels)
                    and all(t in entry["pred"] for t in teacher.tasks)):
                entries[i] = entry
                self.stats["hits"] += 1
            else:
                self.stats["stale"] += 1
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            self.stats["misses"] += len(missing)
            computed = self._run(teacher, image01[missing])
            for i, entry in zip(missing, computed):
                entry["digest"] = digests[i]
                _atomic_save(paths[i], entry)
                entries[i] = entry
        return entries


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _atomic_save(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Distiller:
    """What the trainer holds for recipe `distill`: the frozen teachers, the optional feature
    adaptors, and `losses(...)` giving each task's weighted distillation term for a batch."""

    def __init__(self, config: DistillConfig, tasks: Mapping[str, Any], data_info: Mapping[str, Any],
                 student_channels: Mapping[str, int], train_set, dataset: str, resize: str, device="cpu"):
        self.config = config
        self.tasks = dict(tasks)
        silent = [t for t in config.teachers if type(self.tasks[t]).distill_loss is Task.distill_loss]
        if silent:
            raise DistillError(f"distill.teachers.{silent[0]}: task {silent[0]!r} declares no distillation loss "
                               f"(Task.distill_loss)")
        reason = cache_bypass_reason(train_set) if config.cache else None
        if reason:
            warnings.warn(reason, stacklevel=2)
            config = replace(config, cache=False)
        self.config = config
        self.teachers = Teachers.from_config(config, device)
        self.teachers.check_compatible(data_info, resize)
        self.train_set = train_set
        self.dataset = dataset
        self.adaptors = (FeatureAdaptors.build(student_channels, self.teachers, config.feature_levels).to(device)
                         if config.feature_imitation else None)

    def parameters(self) -> List[nn.Parameter]:
        """The adaptors' parameters (trained with the student, never exported)."""
        return list(self.adaptors.parameters()) if self.adaptors is not None else []

    def losses(self, batch: Mapping[str, torch.Tensor], image01: torch.Tensor, preds: Mapping[str, Any],
               features: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        flips = flip_flags(self.train_set, batch["index"]) if self.teachers.cache_dir is not None else None
        t_preds, t_feats = self.teachers(batch, image01, dataset=self.dataset, flips=flips)
        return distillation_losses(preds, t_preds, self.config, self.tasks, student_features=features,
                                   teacher_features=t_feats, adaptors=self.adaptors)
