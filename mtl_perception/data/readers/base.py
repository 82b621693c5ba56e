"""What every dataset reader shares: the sample it returns, the reader interface, file decoding.

A reader reads an official dataset layout in place and gives samples with the interface of
:class:`mtl_perception.data.dataset.MultiTaskDataset` (``len``, ``load(i)``, ``ds[i]``, iteration,
``image_info(i)``, ``semantic_classes``, ``detection_classes``), so the trainer's data pipeline,
``mtl-perception evaluate`` and ``convert`` take either. Each sample also says which task kinds it
carries labels for (``labelled_tasks``): an image without box labels is *not* an image without
objects, and a sample without a depth map is not a sample whose depth is all invalid.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from mtl_perception.data.dataset import DEFAULT_DEPTH_SCALE, UNLABELLED, Sample

TASK_KINDS = ("segmentation", "depth", "detection", "super_resolution")
"""The task kinds a sample can be labelled for (super-resolution's label is the image itself)."""


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def _no_labels() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass
class ReaderSample(Sample):
    """A :class:`~mtl_perception.data.dataset.Sample` that also says what it is labelled for.

    ``labelled_tasks`` holds task kinds from :data:`TASK_KINDS`. A kind that is absent means "no
    label of that kind": ``semantic`` is then all 255, ``depth`` all NaN and ``boxes`` empty only
    as fillers. ``crowd_boxes`` / ``crowd_labels`` are regions the dataset marks as a crowd of
    a class (COCO ``iscrowd``, Cityscapes instance ids < 1000): neither objects nor background,
    so an evaluation should not count detections there as false positives."""

    labelled_tasks: frozenset = frozenset()
    crowd_boxes: np.ndarray = field(default_factory=_no_boxes)
    crowd_labels: np.ndarray = field(default_factory=_no_labels)


def make_sample(image: np.ndarray, image_id: int, file_name: str, *, semantic: np.ndarray | None = None,
                depth: np.ndarray | None = None, boxes: np.ndarray | None = None,
                labels: np.ndarray | None = None, camera: dict | None = None, night: bool = False,
                crowd_boxes: np.ndarray | None = None, crowd_labels: np.ndarray | None = None) -> ReaderSample:
    """The one rule for partial labels: ``None`` means "not labelled" (filled with 255 / NaN /
    no boxes and left out of ``labelled_tasks``); an empty box array means "labelled, no objects"."""
    h, w = image.shape[:2]
    tasks = {"super_resolution"}
    if semantic is not None:
        tasks.add("segmentation")
    if depth is not None:
        tasks.add("depth")
    if boxes is not None:
        tasks.add("detection")
    return ReaderSample(
        image=image,
        semantic=np.full((h, w), UNLABELLED, np.uint8) if semantic is None else semantic,
        depth=np.full((h, w), np.nan, np.float32) if depth is None else depth.astype(np.float32, copy=False),
        boxes=_no_boxes() if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=_no_labels() if labels is None else np.asarray(labels, np.int64).reshape(-1),
        image_id=int(image_id), night=bool(night), file_name=str(file_name), camera=camera,
        labelled_tasks=frozenset(tasks),
        crowd_boxes=_no_boxes() if crowd_boxes is None else np.asarray(crowd_boxes, np.float32).reshape(-1, 4),
        crowd_labels=_no_labels() if crowd_labels is None else np.asarray(crowd_labels, np.int64).reshape(-1),
    )


def drop_labels(sample: ReaderSample, keep: frozenset) -> ReaderSample:
    """``sample`` with the labels of kinds outside ``keep`` removed (a source used for some tasks only)."""
    if sample.labelled_tasks <= keep:
        return sample
    h, w = sample.image.shape[:2]
    if "segmentation" not in keep:
        sample.semantic = np.full((h, w), UNLABELLED, np.uint8)
    if "depth" not in keep:
        sample.depth = np.full((h, w), np.nan, np.float32)
    if "detection" not in keep:
        sample.boxes, sample.labels = _no_boxes(), _no_labels()
        sample.crowd_boxes, sample.crowd_labels = _no_boxes(), _no_labels()
    sample.labelled_tasks = sample.labelled_tasks & keep
    return sample


class DatasetReader:
    """Base of the readers: subclasses fill ``self._items`` (one record per sample, in a fixed
    sorted order) and implement ``_load(index, item)``; this class gives the dataset interface.

    ``tasks`` (an iterable of task kinds, default all) keeps only those labels, e.g. a source
    used for detection only in a mix. Class attributes: ``format`` (the registry name) and
    ``tasks`` (the kinds the format can label; a given sample may carry fewer)."""

    format: ClassVar[str] = ""
    tasks: ClassVar[frozenset] = frozenset({"super_resolution"})
    depth_scale: float = DEFAULT_DEPTH_SCALE

    def __init__(self, root: str | os.PathLike, tasks: Iterable[str] | None = None) -> None:
        self.root = Path(root)
        self.semantic_classes: tuple[str, ...] = ()
        self.detection_classes: tuple[str, ...] = ()
        self.info: dict[str, Any] = {"source_format": self.format, "source_root": str(self.root)}
        self._items: list[Any] = []
        self.keep = self.tasks if tasks is None else _task_set(tasks, self.format)

    @property
    def labelled_tasks(self) -> frozenset:
        """The kinds this reader's samples may be labelled for (after the ``tasks`` filter)."""
        return self.tasks & self.keep

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> ReaderSample:
        return self.load(index)

    def __iter__(self) -> Iterator[ReaderSample]:
        for i in range(len(self)):
            yield self.load(i)

    def load(self, index: int) -> ReaderSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        return drop_labels(self._load(index, self._items[index]), self.keep)

    def image_info(self, index: int) -> dict:
        """A dict like an "images" entry of dataset.json: at least ``id`` and ``file_name``."""
        return {"id": index, "file_name": self._file_name(self._items[index])}

    def _file_name(self, item: Any) -> str:
        return str(item)

    def _load(self, index: int, item: Any) -> ReaderSample:
        raise NotImplementedError


def _task_set(tasks: Iterable[str], fmt: str) -> frozenset:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    out = frozenset(tasks)
    unknown = sorted(out - set(TASK_KINDS))
    if unknown:
        raise ValueError(f"{fmt}: unknown task kind(s) {unknown} in tasks (known: {', '.join(TASK_KINDS)})")
    return out


# ---------------------------------------------------------------------------------- decoding
def read_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (8-bit colour or grey PNG/JPEG)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode image" if path.is_file() else f"{path}: not found")
    return np.ascontiguousarray(bgr[..., ::-1])


def read_label_png(path: Path, dtypes: tuple, what: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A single-channel label PNG decoded unchanged, checked for its dtype and (h, w)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"{path}: cannot decode {what}" if path.is_file() else f"{path}: not found")
    if arr.ndim != 2 or arr.dtype not in dtypes:
        names = " or ".join(f"{np.dtype(d).itemsize * 8}-bit" for d in dtypes)
        raise ValueError(f"{path}: {what} must be a single-channel {names} PNG, got {arr.dtype} with shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from its image's "
                         f"{shape[1]}x{shape[0]}")
    return arr


def require_dir(path: Path, layout: str) -> Path:
    """``path`` if it is a folder, else a one-line error saying which layout was expected."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found (expected {layout})")
    return path

