"""KITTI, read in place: object detection (``label_2`` boxes) with KITTI semantics where present,
and the depth benchmark's annotated depth maps with their raw images.

Object detection / semantics (format ``kitti``; ``root`` holds ``training/`` and ``testing/``)::

    {split}/image_2/{stem}.png        RGB image
    {split}/label_2/{stem}.txt        one object per line: type truncated occluded alpha x1 y1 x2 y2
                                      h w l x y z rotation_y [score]; DontCare lines are ignored
    {split}/calib/{stem}.txt          "P2: fx 0 cx tx 0 fy cy ty 0 0 1 0" (optional: intrinsics)
    {split}/semantic/{stem}.png       KITTI semantics (stems like 000000_10): uint8 Cityscapes label ids

Depth (format ``kitti_depth``; ``root`` holds the annotated depth maps, ``raw_root`` the raw drives)::

    {root}/{split}/{drive}/proj_depth/groundtruth/image_02/{frame}.png   uint16, metres = p / 256, 0 invalid
    {raw_root}/{date}/{drive}/image_02/data/{frame}.png                  the RGB image
    {raw_root}/{date}/calib_cam_to_cam.txt                               "P_rect_02: ..." (optional)

``date`` is the first 10 characters of the drive name (``2011_09_26_drive_0001_sync``).
"""
from __future__ import annotations

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
from mtl_perception.data.readers.cityscapes_labels import TRAIN_CLASSES, to_train_ids

OBJECT_CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
"""The KITTI object types that get a box, in this order (label index); DontCare is ignored."""
IGNORED_TYPE = "DontCare"


def parse_label_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``label_2`` file -> (Nx4 x1y1x2y2 boxes, N labels into :data:`OBJECT_CLASSES`)."""
    boxes, labels = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (15, 16):
            raise ValueError(f"{path}:{lineno}: expected 15 fields (type truncated occluded alpha x1 y1 x2 y2 "
                             f"h w l x y z rotation_y), got {len(fields)}")
        kind = fields[0]
        if kind == IGNORED_TYPE:
            continue
        if kind not in OBJECT_CLASSES:
            raise ValueError(f"{path}:{lineno}: unknown object type {kind!r} (known: {', '.join(OBJECT_CLASSES)}, "
                             f"{IGNORED_TYPE})")
        try:
            boxes.append([float(v) for v in fields[4:8]])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: box x1 y1 x2 y2 must be numbers, got {fields[4:8]}") from None
        labels.append(OBJECT_CLASSES.index(kind))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def read_projection(path: Path, key: str) -> dict | None:
    """Intrinsics {fx, fy, cx, cy} from the 3x4 projection matrix ``key`` of a KITTI calibration
    file, or None when the file or the key is absent."""
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, values = line.partition(":")
        if name.strip() == key:
            try:
                p = [float(v) for v in values.split()]
            except ValueError:
                raise ValueError(f"{path}: {key} must hold 12 numbers") from None
            if len(p) != 12:
                raise ValueError(f"{path}: {key} must hold 12 numbers, got {len(p)}")
            return {"fx": p[0], "fy": p[5], "cx": p[2], "cy": p[6]}
    return None


class KittiReader(DatasetReader):
    """KITTI object detection and/or semantics: every ``{split}/image_2/*.png``, with boxes where
    its ``label_2`` file exists and segmentation where its ``semantic`` file exists."""

    format = "kitti"
    tasks = frozenset({"segmentation", "detection", "super_resolution"})

    def __init__(self, root: str | os.PathLike, *, split: str = "training",
                 tasks: Iterable[str] | None = None) -> None:
        super().__init__(root, tasks)
        self.split = split
        self.semantic_classes = TRAIN_CLASSES
        self.detection_classes = OBJECT_CLASSES
        folder = require_dir(self.root / split / "image_2", f"the KITTI object layout {split}/image_2/*.png")
        self._items = sorted(p.stem for p in folder.glob("*.png"))
        if not self._items:
            raise FileNotFoundError(f"{folder}: no *.png images")
        self.info.update(split=split)

    def _file_name(self, item: str) -> str:
        return f"{self.split}/image_2/{item}.png"

    def _load(self, index: int, item: str) -> ReaderSample:
        base = self.root / self.split
        image = read_rgb(base / "image_2" / f"{item}.png")
        boxes = labels = semantic = None
        if (base / "label_2" / f"{item}.txt").is_file():
            boxes, labels = parse_label_file(base / "label_2" / f"{item}.txt")
        if (base / "semantic" / f"{item}.png").is_file():
            ids = read_label_png(base / "semantic" / f"{item}.png", (np.uint8,), "semantic label ids", image.shape[:2])
            semantic = to_train_ids(ids)
        camera = read_projection(base / "calib" / f"{item}.txt", "P2")
        return make_sample(image, index, self._file_name(item), semantic=semantic, boxes=boxes, labels=labels,
                           camera=camera)


class KittiDepthReader(DatasetReader):
    """KITTI depth completion / prediction ground truth with the raw drives' images.

    ``raw_root`` defaults to ``root`` (both unpacked into one folder); ``cameras`` is a comma list
    of ``image_02`` / ``image_03``. Depth maps whose raw image is missing are an error unless
    ``skip_missing`` (then they are left out and counted in ``info["missing_images"]``)."""

    format = "kitti_depth"
    tasks = frozenset({"depth", "super_resolution"})

    def __init__(self, root: str | os.PathLike, *, split: str = "train", raw_root: str | os.PathLike | None = None,
                 cameras: str = "image_02", skip_missing: bool = False, tasks: Iterable[str] | None = None) -> None:
        super().__init__(root, tasks)
        self.split = split
        self.raw_root = Path(str(raw_root)) if raw_root is not None else self.root
        layout = f"the KITTI depth layout {split}/DRIVE/proj_depth/groundtruth/image_02/*.png"
        folder = require_dir(self.root / split, layout)
        found, missing = [], []
        for cam in [c for c in str(cameras).split(",") if c]:
            if cam not in ("image_02", "image_03"):
                raise ValueError(f"kitti_depth: cameras must be image_02 and/or image_03, got {cam!r}")
            for depth in sorted(folder.glob(f"*/proj_depth/groundtruth/{cam}/*.png")):
                drive = depth.parents[3].name
                image = self.raw_root / drive[:10] / drive / cam / "data" / depth.name
                (found if image.is_file() else missing).append((drive, cam, depth.name))
        if missing and not _truthy(skip_missing):
            drive, cam, name = missing[0]
            raise FileNotFoundError(f"{self.raw_root / drive[:10] / drive / cam / 'data' / name}: not found "
                                    f"({len(missing)} of {len(missing) + len(found)} depth maps lack their raw image; "
                                    "download those raw drives, set raw_root, or pass skip_missing=true)")
        if not found:
            raise FileNotFoundError(f"{folder}: no depth maps with raw images (expected {layout})")
        self._items = found
        self.info.update(split=split, missing_images=len(missing))

    def _file_name(self, item) -> str:
        drive, cam, name = item
        return f"{drive[:10]}/{drive}/{cam}/data/{name}"

    def _load(self, index: int, item) -> ReaderSample:
        drive, cam, name = item
        image = read_rgb(self.raw_root / self._file_name(item))
        path = self.root / self.split / drive / "proj_depth" / "groundtruth" / cam / name
        units = read_label_png(path, (np.uint16,), "depth", image.shape[:2])
        depth = units.astype(np.float32) / np.float32(256.0)
        depth[units == 0] = np.nan
        camera = read_projection(self.raw_root / drive[:10] / "calib_cam_to_cam.txt", f"P_rect_{cam[-2:]}")
        return make_sample(image, index, self._file_name(item), depth=depth, camera=camera)


def _truthy(value) -> bool:
    """A boolean option that may arrive as text from the command line."""
    if isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    return bool(value)
