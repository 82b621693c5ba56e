"""BDD100K, read in place: detection JSON (100k images) and semantic masks (10k images).

Layout (``root`` is the folder holding ``images/`` and ``labels/``)::

    images/100k/{split}/{name}.jpg                 detection images
    labels/det_20/det_{split}.json                 [{"name": "x.jpg", "attributes": {"timeofday": ...},
                                                     "labels": [{"category": "car", "box2d":
                                                                 {"x1", "y1", "x2", "y2"}}, ...]}, ...]
    images/10k/{split}/{stem}.jpg                  segmentation images
    labels/sem_seg/masks/{split}/{stem}.png        uint8 Cityscapes train ids (19 classes), 255 ignored

A frame listed in the detection JSON is labelled for detection (no ``labels`` = no objects); a
frame with a mask is labelled for segmentation; a frame in both carries both. Categories outside
the 10 evaluated ones ("other person", "other vehicle", "trailer") get no box.
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
)
from mtl_perception.data.readers.cityscapes_labels import IGNORE, TRAIN_CLASSES

DETECTION_CLASSES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
                     "traffic light", "traffic sign")


def parse_detection_json(path: Path) -> dict[str, dict]:
    """det_{split}.json -> {image name: {"boxes", "labels", "night"}}."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(doc, list):
        raise ValueError(f"{path}: top level must be a list of frames")
    frames = {}
    for j, frame in enumerate(doc):
        if not isinstance(frame, dict) or not isinstance(frame.get("name"), str):
            raise ValueError(f"{path}: frame [{j}] needs a 'name'")
        boxes, labels = [], []
        for k, lab in enumerate(frame.get("labels") or []):
            box = lab.get("box2d") if isinstance(lab, dict) else None
            if box is None or lab.get("category") not in DETECTION_CLASSES:
                continue
            try:
                boxes.append([float(box[c]) for c in ("x1", "y1", "x2", "y2")])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: frame {frame['name']} label [{k}] has a malformed box2d") from None
            labels.append(DETECTION_CLASSES.index(lab["category"]))
        night = (frame.get("attributes") or {}).get("timeofday") == "night"
        frames[frame["name"]] = {"boxes": np.array(boxes, np.float32).reshape(-1, 4),
                                 "labels": np.array(labels, np.int64), "night": night}
    return frames


class BDD100KReader(DatasetReader):
    """BDD100K ``split`` (train or val): detection frames, segmentation frames, or both."""

    format = "bdd100k"
    tasks = frozenset({"segmentation", "detection", "super_resolution"})

    def __init__(self, root: str | os.PathLike, *, split: str = "train", tasks: Iterable[str] | None = None) -> None:
        super().__init__(root, tasks)
        self.split = split
        self.semantic_classes = TRAIN_CLASSES
        self.detection_classes = DETECTION_CLASSES
        det_json = self.root / "labels" / "det_20" / f"det_{split}.json"
        masks = self.root / "labels" / "sem_seg" / "masks" / split
        self._det = parse_detection_json(det_json) if det_json.is_file() and "detection" in self.keep else {}
        items: dict[str, dict] = {}
        for name in self._det:
            items[Path(name).stem] = {"image": f"images/100k/{split}/{name}", "det": name}
        if masks.is_dir() and "segmentation" in self.keep:
            for mask in sorted(masks.glob("*.png")):
                item = items.setdefault(mask.stem, {"image": f"images/10k/{split}/{mask.stem}.jpg"})
                item["mask"] = str(mask.relative_to(self.root))
        if not items:
            raise FileNotFoundError(f"{self.root}: neither {det_json.relative_to(self.root)} nor "
                                    f"{masks.relative_to(self.root)}/*.png found (the BDD100K labels of split {split})")
        self._items = [items[k] for k in sorted(items)]
        self.info.update(split=split)

    def _file_name(self, item: dict) -> str:
        return item["image"]

    def image_info(self, index: int) -> dict:
        """Also ``night`` (the detection JSON's timeofday), known without decoding the image."""
        item = self._items[index]
        return {**super().image_info(index), "night": "det" in item and self._det[item["det"]]["night"]}

    def _load(self, index: int, item: dict) -> ReaderSample:
        image = read_rgb(self.root / item["image"])
        semantic = boxes = labels = None
        night = False
        if "mask" in item:
            path = self.root / item["mask"]
            semantic = read_label_png(path, (np.uint8,), "semantic mask", image.shape[:2])
            bad = (semantic >= len(TRAIN_CLASSES)) & (semantic != IGNORE)
            if bad.any():
                raise ValueError(f"{path}: values {sorted(np.unique(semantic[bad]).tolist())} are not train ids "
                                 f"0..{len(TRAIN_CLASSES) - 1} or {IGNORE}")
        if "det" in item:
            frame = self._det[item["det"]]
            boxes, labels, night = frame["boxes"], frame["labels"], frame["night"]
        return make_sample(image, index, item["image"], semantic=semantic, boxes=boxes, labels=labels, night=night)
