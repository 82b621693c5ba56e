"""torch view of a dataset on disk: resize to the recipe's sizes, augment, build task targets.

The on-disk format, its reader and the resizing live in `mtl_perception` (torch-free, shared
with evaluation and the node); here samples are cached, augmented (`training.engine.augment`,
before any task encodes its targets) and given each task's targets.
"""
from __future__ import annotations

from typing import Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.inference.preprocess import resize_sample

from training.engine.augment import AugmentConfig, augment_sample, sample_params
from training.engine.augment import flip_coin as _coin  # noqa: F401  (the name distillation and tests use)


class TaskDataset(Dataset):
    """Items are dicts of numpy arrays (the default collate stacks them into tensors).

    `augment`: an `AugmentConfig`, True for its defaults (a horizontal flip), False for none."""

    def __init__(self, source: MultiTaskDataset, tasks: Mapping[str, object], input_size, sr_scale: int,
                 augment: Union[bool, AugmentConfig, None] = False, seed: int = 0, cache: bool = True):
        self.source = source
        self.tasks = tasks
        self.input_size = tuple(input_size)
        self.sr_scale = sr_scale
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
        base = resize_sample(self.source.load(index), self.input_size, self.sr_scale)
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
        item = {"image": np.ascontiguousarray(base["image"].transpose(2, 0, 1)), "index": np.int64(index)}
        for task in self.tasks.values():
            item.update(task.prepare(base))
        return item


def to_device(batch: Mapping[str, torch.Tensor], device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs from a DistributedSampler, so the augmentation of every sample is
    decided by the epoch the main process is in, also inside persistent DataLoader workers."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
