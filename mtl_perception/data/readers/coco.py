"""COCO instances (detection), read in place.

Layout (``root`` is the COCO folder)::

    annotations/instances_{split}.json   {"images": [{"id", "file_name", ...}], "categories": [{"id", "name"}],
                                          "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h],
                                                           "iscrowd": 0|1}, ...]}
    {split}/{file_name}                  the images (split e.g. val2017)

``annotation_file`` / ``image_dir`` point elsewhere (another COCO-style set). Boxes become
x1 y1 x2 y2 = x, y, x + w, y + h; labels index the categories in the file's order; ``iscrowd``
annotations become crowd regions, not objects; boxes without area are dropped. Every listed image
is labelled for detection (COCO labels all instances of its classes; none listed = no objects).
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
    read_rgb,
)


def parse_instances(path: Path) -> tuple[list[dict], tuple[str, ...], dict]:
    """instances JSON -> (images, category names, {image id: (boxes, labels, crowd boxes, crowd labels)})."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{path}: needs 'images' and 'categories' lists")
    try:
        index = {int(c["id"]): j for j, c in enumerate(doc["categories"])}
        names = tuple(str(c["name"]) for c in doc["categories"])
        images = [{"id": im["id"], "file_name": str(im["file_name"])} for im in doc["images"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: categories need 'id' and 'name', images 'id' and 'file_name'") from None
    per_image: dict = {im["id"]: ([], [], [], []) for im in images}
    for k, a in enumerate(doc.get("annotations", [])):
        try:
            target = per_image[a["image_id"]]
            label = index[int(a["category_id"])]
            x, y, w, h = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: annotations[{k}] has an unknown image_id / category_id or a malformed "
                             "bbox") from None
        if w <= 0 or h <= 0:
            continue
        crowd = 2 if a.get("iscrowd", 0) else 0
        target[crowd].append((x, y, x + w, y + h))
        target[crowd + 1].append(label)
    return images, names, per_image


class COCOReader(DatasetReader):
    """COCO instances of ``split`` (e.g. train2017, val2017)."""

    format = "coco"
    tasks = frozenset({"detection", "super_resolution"})

    def __init__(self, root: str | os.PathLike, *, split: str = "val2017", annotation_file: str | None = None,
                 image_dir: str | None = None, tasks: Iterable[str] | None = None) -> None:
        super().__init__(root, tasks)
        ann = Path(str(annotation_file)) if annotation_file else self.root / "annotations" / f"instances_{split}.json"
        if not ann.is_file():
            raise FileNotFoundError(f"{ann}: not found (the COCO layout annotations/instances_{split}.json)")
        self.image_dir = Path(str(image_dir)) if image_dir else self.root / split
        images, self.detection_classes, self._targets = parse_instances(ann)
        self._items = images
        self.info.update(split=split, annotation_file=str(ann))

    def _file_name(self, item: dict) -> str:
        return item["file_name"]

    def _load(self, index: int, item: dict) -> ReaderSample:
        image = read_rgb(self.image_dir / item["file_name"])
        boxes, labels, crowd, crowd_labels = self._targets[item["id"]]
        return make_sample(image, index, item["file_name"], boxes=np.array(boxes, np.float32), labels=labels,
                           crowd_boxes=np.array(crowd, np.float32), crowd_labels=crowd_labels)
