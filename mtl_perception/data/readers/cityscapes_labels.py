"""The Cityscapes label table (label id -> train id), written from the dataset's label definitions.

Cityscapes label images store *label ids* (0..33, license plate -1); training and evaluation use
the 19 *train ids* (255 = ignored). KITTI semantics uses the same label ids and BDD100K's semantic
masks the same train ids, so the table lives in its own module. ``has_instances`` marks the classes
whose objects carry an instance id (``class id * 1000 + k``) in ``*_instanceIds.png``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE = 255


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    has_instances: bool


LABELS = (
    Label("unlabeled", 0, IGNORE, "void", False),
    Label("ego vehicle", 1, IGNORE, "void", False),
    Label("rectification border", 2, IGNORE, "void", False),
    Label("out of roi", 3, IGNORE, "void", False),
    Label("static", 4, IGNORE, "void", False),
    Label("dynamic", 5, IGNORE, "void", False),
    Label("ground", 6, IGNORE, "void", False),
    Label("road", 7, 0, "flat", False),
    Label("sidewalk", 8, 1, "flat", False),
    Label("parking", 9, IGNORE, "flat", False),
    Label("rail track", 10, IGNORE, "flat", False),
    Label("building", 11, 2, "construction", False),
    Label("wall", 12, 3, "construction", False),
    Label("fence", 13, 4, "construction", False),
    Label("guard rail", 14, IGNORE, "construction", False),
    Label("bridge", 15, IGNORE, "construction", False),
    Label("tunnel", 16, IGNORE, "construction", False),
    Label("pole", 17, 5, "object", False),
    Label("polegroup", 18, IGNORE, "object", False),
    Label("traffic light", 19, 6, "object", False),
    Label("traffic sign", 20, 7, "object", False),
    Label("vegetation", 21, 8, "nature", False),
    Label("terrain", 22, 9, "nature", False),
    Label("sky", 23, 10, "sky", False),
    Label("person", 24, 11, "human", True),
    Label("rider", 25, 12, "human", True),
    Label("car", 26, 13, "vehicle", True),
    Label("truck", 27, 14, "vehicle", True),
    Label("bus", 28, 15, "vehicle", True),
    Label("caravan", 29, IGNORE, "vehicle", True),
    Label("trailer", 30, IGNORE, "vehicle", True),
    Label("train", 31, 16, "vehicle", True),
    Label("motorcycle", 32, 17, "vehicle", True),
    Label("bicycle", 33, 18, "vehicle", True),
    Label("license plate", -1, IGNORE, "vehicle", False),
)

TRAIN_CLASSES = tuple(lab.name for lab in sorted((x for x in LABELS if x.train_id != IGNORE), key=lambda x: x.train_id))
"""The 19 evaluated classes, index = train id."""

INSTANCE_CLASSES = tuple(lab.name for lab in LABELS if lab.has_instances and lab.train_id != IGNORE)
"""The 8 evaluated classes with instances (the detection classes), in label-id order."""

ID_TO_TRAIN_ID = np.full(256, IGNORE, np.uint8)
"""Look-up table indexed by an 8-bit label id; ids outside the table (and -1 stored as 255) -> 255."""
for _lab in LABELS:
    if _lab.id >= 0:
        ID_TO_TRAIN_ID[_lab.id] = _lab.train_id

ID_TO_DETECTION = {lab.id: INSTANCE_CLASSES.index(lab.name) for lab in LABELS if lab.name in INSTANCE_CLASSES}
"""Label id -> 0-based index into :data:`INSTANCE_CLASSES` (caravan and trailer have none)."""


def train_id(label_id: int) -> int:
    """The train id of one label id (255 for ignored or unknown ids, including license plate -1)."""
    if 0 <= label_id < 256:
        return int(ID_TO_TRAIN_ID[label_id])
    return IGNORE


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """A label-id image (any integer dtype) -> uint8 train ids."""
    ids = np.asarray(label_ids)
    if ids.dtype == np.uint8:
        return ID_TO_TRAIN_ID[ids]
    out = np.full(ids.shape, IGNORE, np.uint8)
    inside = (ids >= 0) & (ids < 256)
    out[inside] = ID_TO_TRAIN_ID[ids[inside]]
    return out
