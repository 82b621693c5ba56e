"""Cityscapes, read in place: images, fine labels -> 19 train ids, instance ids -> boxes,
disparity + camera JSON -> depth in metres.

Layout (the official zips unpacked into one root)::

    leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png      uint8 label ids
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_instanceIds.png   uint16: class id * 1000 + k,
                                                                        or the class id (stuff, crowd)
    disparity/{split}/{city}/{city}_{seq}_{frame}_disparity.png         uint16: d = (p - 1) / 256, p = 0 invalid
    camera/{split}/{city}/{city}_{seq}_{frame}_camera.json              extrinsic.baseline, intrinsic fx fy u0 v0

Each label kind is used where its file exists. The public test split ships placeholder gtFine
files, so ``split="test"`` is read as unlabelled for segmentation and detection.
``annotations="gtCoarse"`` reads the coarse labels instead (same names with gtCoarse; the only
labels of ``train_extra``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mtl_perception.data.readers.base import (
    DatasetReader,
    ReaderSample,
    make_sample,
    read_label_png,
    read_rgb,
    require_dir,
)
from mtl_perception.data.readers.cityscapes_labels import (
    ID_TO_DETECTION,
    INSTANCE_CLASSES,
    TRAIN_CLASSES,
    to_train_ids,
)

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LAYOUT = "the Cityscapes layout leftImg8bit/{split}/CITY/CITY_SEQ_FRAME_leftImg8bit.png"


def disparity_to_depth(units: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes disparity PNG units -> float32 metres, NaN where invalid.

    d = (p - 1) / 256 pixels for p > 0; depth = baseline * fx / d. p = 0 is invalid, and p = 1
    (zero disparity, infinitely far) is invalid too."""
    p = units.astype(np.float64)
    depth = np.full(units.shape, np.nan, np.float32)
    valid = p > 1
    depth[valid] = baseline * fx / ((p[valid] - 1.0) / 256.0)
    return depth


def boxes_from_instances(instance_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``*_instanceIds.png`` -> (boxes, labels, crowd boxes, crowd labels) of the 8 instance classes.

    An id >= 1000 is one object of class ``id // 1000``; an id < 1000 is a label id: stuff, or a
    crowd region where that id is an instance class. Caravan and trailer (train id 255) give no box.
    Boxes are tight, in pixel-edge coordinates (x2 = last column + 1); one sort of the instance
    pixels gives every box at once."""
    width = instance_ids.shape[1]
    flat = instance_ids.ravel()
    positions = np.flatnonzero(flat >= min(ID_TO_DETECTION))
    values = flat[positions].astype(np.int64)
    classes = np.where(values >= 1000, values // 1000, values)
    keep = np.isin(classes, list(ID_TO_DETECTION))
    positions, values, classes = positions[keep], values[keep], classes[keep]
    order = np.argsort(values, kind="stable")
    positions, values, classes = positions[order], values[order], classes[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.zeros(0, np.int64)
    rows, cols = positions // width, positions % width
    boxes = np.stack([np.minimum.reduceat(cols, starts), np.minimum.reduceat(rows, starts),
                      np.maximum.reduceat(cols, starts) + 1, np.maximum.reduceat(rows, starts) + 1],
                     axis=1).astype(np.float32) if len(starts) else np.zeros((0, 4), np.float32)
    labels = np.array([ID_TO_DETECTION[int(c)] for c in classes[starts]], np.int64)
    crowd = values[starts] < 1000
    return boxes[~crowd], labels[~crowd], boxes[crowd], labels[crowd]


def read_camera(path: Path) -> dict:
    """``*_camera.json`` -> {fx, fy, cx, cy, baseline} (cx, cy = the JSON's u0, v0)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        intr, extr = doc["intrinsic"], doc["extrinsic"]
        return {"fx": float(intr["fx"]), "fy": float(intr["fy"]), "cx": float(intr["u0"]),
                "cy": float(intr["v0"]), "baseline": float(extr["baseline"])}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: needs intrinsic.fx/fy/u0/v0 and extrinsic.baseline as numbers ({e!r})") from None


class CityscapesReader(DatasetReader):
    """Cityscapes ``split`` (train, val, test, or train_extra for images only) under ``root``."""

    format = "cityscapes"
    tasks = frozenset({"segmentation", "depth", "detection", "super_resolution"})

    def __init__(self, root: str | os.PathLike, *, split: str = "train", annotations: str = "gtFine",
                 tasks: Iterable[str] | None = None) -> None:
        super().__init__(root, tasks)
        if annotations not in ("gtFine", "gtCoarse"):
            raise ValueError(f"cityscapes: annotations must be gtFine or gtCoarse, got {annotations!r}")
        self.split = split
        self.annotations = annotations
        self.semantic_classes = TRAIN_CLASSES
        self.detection_classes = INSTANCE_CLASSES
        folder = require_dir(self.root / "leftImg8bit" / split, _LAYOUT)
        for path in sorted(folder.glob(f"*/*{_IMAGE_SUFFIX}")):
            self._items.append((path.parent.name, path.name[: -len(_IMAGE_SUFFIX)]))
        if not self._items:
            raise FileNotFoundError(f"{folder}: no */*{_IMAGE_SUFFIX} images (expected {_LAYOUT})")
        self.info.update(split=split, annotations=annotations)

    def _paths(self, city: str, prefix: str) -> dict[str, Path]:
        def part(folder: str, suffix: str) -> Path:
            return self.root / folder / self.split / city / f"{prefix}_{suffix}"

        gt = self.annotations
        return {"image": part("leftImg8bit", "leftImg8bit.png"), "labels": part(gt, f"{gt}_labelIds.png"),
                "instances": part(gt, f"{gt}_instanceIds.png"), "disparity": part("disparity", "disparity.png"),
                "camera": part("camera", "camera.json")}

    def _file_name(self, item) -> str:
        return str(self._paths(*item)["image"].relative_to(self.root))

    def _load(self, index: int, item) -> ReaderSample:
        paths = self._paths(*item)
        image = read_rgb(paths["image"])
        shape = image.shape[:2]
        labelled = self.split != "test"
        semantic = depth = boxes = labels = crowd = crowd_labels = camera = None
        if labelled and paths["labels"].is_file():
            semantic = to_train_ids(read_label_png(paths["labels"], (np.uint8,), "label ids", shape))
        if labelled and paths["instances"].is_file():
            ids = read_label_png(paths["instances"], (np.uint16,), "instance ids", shape)
            boxes, labels, crowd, crowd_labels = boxes_from_instances(ids)
        if paths["camera"].is_file():
            camera = read_camera(paths["camera"])
            if paths["disparity"].is_file():
                units = read_label_png(paths["disparity"], (np.uint16,), "disparity", shape)
                depth = disparity_to_depth(units, camera["baseline"], camera["fx"])
        return make_sample(image, index, self._file_name(item), semantic=semantic, depth=depth, boxes=boxes,
                           labels=labels, camera=camera, crowd_boxes=crowd, crowd_labels=crowd_labels)
