"""Unlabelled images: a folder of photos or a video file. Super-resolution needs no labels (its
target is the image itself), so these samples are labelled for super-resolution only."""
from __future__ import annotations

import os
from collections.abc import Iterable

import cv2
import numpy as np

from mtl_perception.data.readers.base import (
    DatasetReader,
    ReaderSample,
    make_sample,
    read_rgb,
    require_dir,
)

_MAX_SKIP = 64
"""Forward gaps up to this many frames are read through rather than sought."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageFolderReader(DatasetReader):
    """Every image file under ``root`` (sub-folders included, sorted by relative path)."""

    format = "images"
    tasks = frozenset({"super_resolution"})

    def __init__(self, root: str | os.PathLike, *, tasks: Iterable[str] | None = None) -> None:
        super().__init__(root, tasks)
        folder = require_dir(self.root, "a folder of images")
        self._items = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._items:
            raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")

    def _load(self, index: int, item: str) -> ReaderSample:
        return make_sample(read_rgb(self.root / item), index, item)


class VideoReader(DatasetReader):
    """Frames 0, every, 2 * every, ... of a video file OpenCV can decode. The frames are counted
    once at opening (container frame counts are often wrong); reading in order is sequential,
    other orders seek."""

    format = "video"
    tasks = frozenset({"super_resolution"})

    def __init__(self, root: str | os.PathLike, *, every: int = 1, tasks: Iterable[str] | None = None) -> None:
        super().__init__(root, tasks)
        if not self.root.is_file():
            raise FileNotFoundError(f"{self.root}: not found (a video file)")
        self.every = int(every)
        if self.every < 1:
            raise ValueError(f"video: every must be >= 1, got {every}")
        cap = self._open()
        count = 0
        while cap.grab():
            count += 1
        cap.release()
        if count == 0:
            raise ValueError(f"{self.root}: no decodable video frames")
        self._items = list(range(0, count, self.every))
        self._cap: cv2.VideoCapture | None = None
        self._next = 0

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.root))
        if not cap.isOpened():
            raise ValueError(f"{self.root}: OpenCV cannot open this video")
        return cap

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cap"], state["_next"] = None, 0
        return state

    def _file_name(self, item: int) -> str:
        return f"{self.root.name}#{item}"

    def _load(self, index: int, item: int) -> ReaderSample:
        if self._cap is None:
            self._cap, self._next = self._open(), 0
        if self._next < item <= self._next + _MAX_SKIP:
            for _ in range(item - self._next):  # grabbing is exact where seeking may land on a key frame
                self._cap.grab()
        elif item != self._next:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, item)
        ok, bgr = self._cap.read()
        if not ok:
            raise ValueError(f"{self.root}: cannot decode frame {item}")
        self._next = item + 1
        return make_sample(np.ascontiguousarray(bgr[..., ::-1]), index, self._file_name(item))
