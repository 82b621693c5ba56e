"""Readers of public datasets' official layouts, read in place, by format name.

    from mtl_perception.data.readers import open_reader
    ds = open_reader("cityscapes", "/data/cityscapes", split="val")
    s = ds.load(0)        # image, semantic (train ids), depth (m), boxes/labels, camera, labelled_tasks

Every reader has the interface of :class:`mtl_perception.data.dataset.MultiTaskDataset` and its
samples are :class:`~mtl_perception.data.readers.base.ReaderSample`. No torch; h5py only for NYUv2.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from mtl_perception.data.readers.base import (
    TASK_KINDS,
    DatasetReader,
    ReaderSample,
    make_sample,
)
from mtl_perception.data.readers.bdd100k import BDD100KReader
from mtl_perception.data.readers.cityscapes import CityscapesReader
from mtl_perception.data.readers.coco import COCOReader
from mtl_perception.data.readers.images import ImageFolderReader, VideoReader
from mtl_perception.data.readers.kitti import KittiDepthReader, KittiReader
from mtl_perception.data.readers.nyuv2 import NYUv2Reader

READERS: dict[str, type[DatasetReader]] = {
    cls.format: cls
    for cls in (CityscapesReader, KittiReader, KittiDepthReader, NYUv2Reader, BDD100KReader, COCOReader,
                ImageFolderReader, VideoReader)
}
"""Format name -> reader class."""


def reader_options(fmt: str) -> tuple[str, ...]:
    """The keyword options a format's reader takes (besides the root)."""
    params = inspect.signature(READERS[fmt].__init__).parameters
    return tuple(name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_options(fmt: str, options: Mapping[str, Any]) -> None:
    """A one-line ValueError for an unknown format or option (a usage error, before any file is read)."""
    if fmt not in READERS:
        raise ValueError(f"unknown dataset format {fmt!r} (known: {', '.join(sorted(READERS))})")
    unknown = sorted(set(options) - set(reader_options(fmt)))
    if unknown:
        raise ValueError(f"format {fmt} takes no option(s) {', '.join(unknown)} "
                         f"(it takes: {', '.join(reader_options(fmt))})")


def open_reader(fmt: str, root: str | os.PathLike, options: Mapping[str, Any] | None = None,
                **kwargs: Any) -> DatasetReader:
    """The reader of format ``fmt`` on ``root``; an unknown format or option is a one-line error."""
    opts = {**dict(options or {}), **kwargs}
    check_options(fmt, opts)
    return READERS[fmt](root, **opts)


__all__ = ["READERS", "TASK_KINDS", "DatasetReader", "ReaderSample", "check_options", "make_sample", "open_reader",
           "reader_options"]
