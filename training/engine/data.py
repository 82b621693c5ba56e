"""torch view of a dataset on disk: resize to the recipe's sizes, augment, build task targets.

The on-disk format, its reader and the resizing live in `mtl_perception` (torch-free, shared
with evaluation and the node); here samples are cached, augmented (`training.engine.augment`,
before any task encodes its targets) and given each task's targets.

Partial labels and mixed sources: every item carries `<task>_labelled` (from the sample's
`labelled_tasks`), which the losses and metrics read. `open_sources` turns a recipe's list of
sources (any object with the `MultiTaskDataset` interface, opened by format name) into one
`MixedSource` with each source's task filter and class map into the recipe's classes, and
`SourceSampler` draws from the sources by their sampling weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from mtl_perception.data.dataset import TASK_KINDS, UNLABELLED, MultiTaskDataset
from mtl_perception.data.readers import READERS, DatasetReader, open_reader
from mtl_perception.inference.preprocess import FrameMapping, resize_sample
from training.engine.augment import AugmentConfig, augment_sample, sample_params
from training.recipe.config import ConfigError
from training.recipe.core import SourceConfig

LABELLED = "labelled_tasks"  # key of a resized sample's label kinds (not an array)
NO_INTRINSICS = np.full(4, np.nan, np.float32)  # an item's intrinsics when its source has no camera


def input_intrinsics(camera: Any, source_size: Tuple[int, int], input_size: Tuple[int, int],
                     resize: str = "stretch") -> Optional[np.ndarray]:
    """A sample's camera (fx, fy, cx, cy at its own size, OpenCV convention: first pixel centre
    at 0) at the network input, as `resize_sample` maps the image (`FrameMapping`: input edge
    coordinate = source edge coordinate * s + offset): fx * sx and, in index coordinates,
    cx' + 0.5 = sx (cx + 0.5) + ox. None when the sample has no usable camera."""
    if not isinstance(camera, Mapping) or not all(k in camera for k in ("fx", "fy", "cx", "cy")):
        return None
    mapping = FrameMapping(tuple(source_size), tuple(input_size), resize)
    (sx, sy), (ox, oy) = mapping.scale, mapping.offset
    fx, fy, cx, cy = (float(camera[k]) for k in ("fx", "fy", "cx", "cy"))
    return np.array([fx * sx, fy * sy, sx * (cx + 0.5) + ox - 0.5, sy * (cy + 0.5) + oy - 0.5], np.float32)


def sample_kinds(sample: Any) -> frozenset:
    """The task kinds a sample is labelled for (all for a sample that does not say)."""
    kinds = getattr(sample, "labelled_tasks", None)
    return frozenset(TASK_KINDS) if kinds is None else frozenset(kinds)


# -------------------------------------------------------------------------------- sources
SOURCE_FORMATS: Dict[str, Callable[[SourceConfig], Any]] = {}
"""Format name -> opener(SourceConfig) returning an object with the MultiTaskDataset interface."""


def register_source_format(name: str, opener: Callable[[SourceConfig], Any]) -> None:
    SOURCE_FORMATS[name] = opener


def _open_own_format(cfg: SourceConfig) -> MultiTaskDataset:
    if cfg.options:
        raise ConfigError(f"data source {cfg.root}: format {cfg.format} takes no options")
    return MultiTaskDataset(cfg.root)


def _open_reader(cfg: SourceConfig) -> DatasetReader:
    """A public dataset's official layout, read in place (`mtl_perception.data.readers`)."""
    try:
        return open_reader(cfg.format, cfg.root, cfg.options)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data source {cfg.root} ({cfg.format}): {exc}") from None


register_source_format("mtl", _open_own_format)
register_source_format("synthetic", _open_own_format)
for _format in READERS:  # cityscapes, kitti, kitti_depth, nyuv2, bdd100k, coco, images, video
    register_source_format(_format, _open_reader)


def _class_lut(source_classes: Sequence[str], recipe_classes: Sequence[str],
               class_map: Mapping[str, Optional[str]]) -> np.ndarray:
    """Source class index -> recipe class index (-1: ignored), by name through `class_map`."""
    index = {name: i for i, name in enumerate(recipe_classes)}
    lut = np.full(len(source_classes), -1, np.int64)
    for i, name in enumerate(source_classes):
        target = class_map.get(name, name)
        lut[i] = index.get(target, -1) if target is not None else -1
    return lut


def _check_class_map(dataset: Any, cfg: SourceConfig, recipe_classes: Sequence[str], where: str) -> None:
    """Every class_map key is a class of the source, every target one of the recipe's."""
    known = set(getattr(dataset, "semantic_classes", ())) | set(getattr(dataset, "detection_classes", ()))
    for name, target in cfg.class_map.items():
        if name not in known:
            raise ConfigError(f"{where}.class_map: {name!r} is not a class of {cfg.root}")
        if target is not None and target not in recipe_classes:
            raise ConfigError(f"{where}.class_map: {name!r} -> {target!r}, which is not a recipe class "
                              f"(recipe classes: {', '.join(recipe_classes)})")


class LabelledSource:
    """One source as the recipe sees it: only the task kinds it is used for, its classes mapped
    into the recipe's (unmapped classes become 255 pixels / dropped boxes)."""

    def __init__(self, dataset: Any, cfg: SourceConfig, semantic_classes: Sequence[str],
                 detection_classes: Sequence[str], where: str):
        self.dataset, self.cfg = dataset, cfg
        self.keep = frozenset(cfg.tasks) if cfg.tasks is not None else frozenset(TASK_KINDS)
        _check_class_map(dataset, cfg, tuple(dict.fromkeys((*semantic_classes, *detection_classes))), where)
        semantic = _class_lut(tuple(dataset.semantic_classes), semantic_classes, cfg.class_map)
        self.semantic_lut = np.full(256, UNLABELLED, np.uint8)
        self.semantic_lut[:len(semantic)] = np.where(semantic >= 0, semantic, UNLABELLED)
        self.box_lut = _class_lut(tuple(dataset.detection_classes), detection_classes, cfg.class_map)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> Any:
        sample = self.dataset.load(index)
        kinds = sample_kinds(sample) & self.keep
        h, w = sample.image.shape[:2]
        semantic = (self.semantic_lut[sample.semantic] if "segmentation" in kinds
                    else np.full((h, w), UNLABELLED, np.uint8))
        depth = sample.depth if "depth" in kinds else np.full((h, w), np.nan, np.float32)
        labels = self.box_lut[sample.labels] if "detection" in kinds else np.zeros(0, np.int64)
        boxes = sample.boxes[labels >= 0] if "detection" in kinds else np.zeros((0, 4), np.float32)
        return dataclasses.replace(sample, semantic=semantic, depth=depth, boxes=boxes, labels=labels[labels >= 0],
                                   labelled_tasks=kinds)


class MixedSource:
    """Several sources as one dataset with the MultiTaskDataset interface (indices run through
    the sources in order); `weights` are the sources' sampling weights (normalised)."""

    def __init__(self, sources: Sequence[LabelledSource], semantic_classes: Sequence[str],
                 detection_classes: Sequence[str], weights: Sequence[float]):
        self.sources = list(sources)
        self.semantic_classes, self.detection_classes = tuple(semantic_classes), tuple(detection_classes)
        self.lengths = np.array([len(s) for s in self.sources], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.weights = np.asarray(weights, np.float64) / float(np.sum(weights))
        self.info = {"sources": [dataclasses.asdict(s.cfg) for s in self.sources]}

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def locate(self, index: int) -> Tuple[int, int]:
        """(source number, index inside that source) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return s, int(index - self.offsets[s])

    def load(self, index: int) -> Any:
        s, j = self.locate(index)
        return self.sources[s].load(j)

    def __getitem__(self, index: int) -> Any:
        return self.load(index)

    def __iter__(self):
        for i in range(len(self)):
            yield self.load(i)

    def image_info(self, index: int) -> dict:
        s, j = self.locate(index)
        info = self.sources[s].dataset.image_info(j)
        return {**info, "source": s}


def _first_classes(datasets: Sequence[Any], attr: str) -> Tuple[str, ...]:
    return next((tuple(getattr(d, attr)) for d in datasets if tuple(getattr(d, attr, ()))), ())


def open_sources(spec: Union[str, Sequence[SourceConfig]], semantic_classes: Optional[Sequence[str]] = None,
                 detection_classes: Optional[Sequence[str]] = None, where: str = "data.train") -> Any:
    """A recipe's `data.train` / `data.val`: a folder in the project's format as it is, or a
    `MixedSource` of the listed sources (classes: the given ones, else the first source's)."""
    if isinstance(spec, str):
        return MultiTaskDataset(spec)
    datasets = []
    for i, cfg in enumerate(spec):
        if cfg.format not in SOURCE_FORMATS:
            raise ConfigError(f"{where}[{i}].format: unknown format {cfg.format!r} "
                              f"(known: {', '.join(sorted(SOURCE_FORMATS))})")
        datasets.append(SOURCE_FORMATS[cfg.format](cfg))
    semantic = tuple(semantic_classes) if semantic_classes else _first_classes(datasets, "semantic_classes")
    detection = tuple(detection_classes) if detection_classes else _first_classes(datasets, "detection_classes")
    sources = [LabelledSource(d, cfg, semantic, detection, f"{where}[{i}]")
               for i, (d, cfg) in enumerate(zip(datasets, spec))]
    weights = [cfg.weight if cfg.weight is not None else float(len(src)) for cfg, src in zip(spec, sources)]
    return MixedSource(sources, semantic, detection, weights)


class SourceSampler(Sampler):
    """Draws an epoch of `len(source)` indices from a `MixedSource`: a source by its weight, then
    a sample of it uniformly (with replacement), seeded by (seed, epoch); rank r of W takes every
    W-th draw, so ranks see disjoint draws and their task sets may differ."""

    def __init__(self, source: MixedSource, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.source, self.seed, self.num_replicas, self.rank = source, int(seed), int(num_replicas), int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draws(self, epoch: int) -> np.ndarray:
        """Every rank's draws of `epoch`, in order (rank r takes [r::W])."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self) * self.num_replicas
        which = torch.multinomial(torch.as_tensor(self.source.weights), n, replacement=True, generator=gen).numpy()
        within = (torch.rand(n, generator=gen, dtype=torch.float64).numpy()
                  * self.source.lengths[which]).astype(np.int64)
        return self.source.offsets[which] + np.minimum(within, self.source.lengths[which] - 1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.draws(self.epoch)[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return len(self.source) // self.num_replicas


class TaskDataset(Dataset):
    """Items are dicts of numpy arrays (the default collate stacks them into tensors): the input
    `image`, `index`, `intrinsics` (fx, fy, cx, cy at the input, after augmentation; NaN where
    the source has no camera) and every task's targets.

    `augment`: an `AugmentConfig`, True for its defaults (a horizontal flip), False for none."""

    def __init__(self, source: MultiTaskDataset, tasks: Mapping[str, object], input_size, sr_scale: int,
                 augment: Union[bool, AugmentConfig, None] = False, seed: int = 0, cache: bool = True,
                 resize: str = "stretch"):
        self.source = source
        self.tasks = tasks
        self.input_size = tuple(input_size)
        self.sr_scale = sr_scale
        self.resize = resize  # the recipe's data.resize: the same geometry as the node's
        self.augment: Optional[AugmentConfig] = AugmentConfig() if augment is True else (augment or None)
        self.seed = seed
        self.epoch = 0
        self._cache: Optional[Dict[int, Dict[str, np.ndarray]]] = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def base(self, index: int) -> Dict[str, np.ndarray]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.source.load(index)
        base = resize_sample(sample, self.input_size, self.sr_scale, self.resize)
        base[LABELLED] = sample_kinds(sample)
        h, w = sample.image.shape[:2]
        intrinsics = input_intrinsics(getattr(sample, "camera", None), (w, h), self.input_size, self.resize)
        if intrinsics is not None:  # augmentation moves them with the crop (augment.transform_intrinsics)
            base["intrinsics"] = intrinsics
        if self._cache is not None:
            self._cache[index] = base
        return base

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Dict[str, np.ndarray]:
        """key: an index, or (epoch, index) from `EpochSampler` (DataLoader workers hold a copy
        of this dataset, so `set_epoch` in the main process never reaches them)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        base = self.base(index)
        if self.augment is not None:
            params = sample_params(self.augment, self.seed, epoch, index, self.input_size)
            base = augment_sample(base, params, self.augment.min_visible)
        item = {"image": np.ascontiguousarray(base["image"].transpose(2, 0, 1)), "index": np.int64(index),
                "intrinsics": base.get("intrinsics", NO_INTRINSICS)}
        for name, task in self.tasks.items():
            item.update(task.prepare(base))
            item[f"{name}_labelled"] = np.bool_(task.kind in base[LABELLED])
        return item


def to_device(batch: Mapping[str, torch.Tensor], device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs from a DistributedSampler (or SourceSampler), so the augmentation of every sample is
    decided by the epoch the main process is in, also inside persistent DataLoader workers."""

    def __init__(self, sampler: Union[DistributedSampler, SourceSampler]):
        self.sampler = sampler

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
