"""NYU Depth V2, labeled subset: ``nyu_depth_v2_labeled.mat`` read in place through h5py.

The file is MATLAB v7.3, i.e. HDF5, and HDF5 stores MATLAB's column-major arrays with the axes
reversed: MATLAB's ``images`` [H, W, 3, N] is [N, 3, W, H] here, ``depths`` and ``labels``
[H, W, N] are [N, W, H]. So image i is ``images[i].transpose(2, 1, 0)`` (HxWx3 RGB) and its depth
``depths[i].T`` (metres, in-painted, 0 = none).

Semantic labels: ``labels`` holds the 894 raw class ids (0 = unlabelled), which do not fit the
project's uint8 class maps. ``classes=40`` maps them to the 40 classes of Gupta et al. (2013)
through the standard ``classMapping40.mat`` (``mapClass``, 894 values 1..40), which must be passed
as ``mapping`` (it is a separate download; this module does not reproduce it). ``classes=13``
groups those 40 into the 13 classes of Couprie et al. / Eigen & Fergus with the table below.
Without ``classes`` the samples carry depth only. ``split`` train / test reads the official
split from ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based; the file is MATLAB v5, read
through scipy, or v7.3 through h5py).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mtl_perception.data.readers.base import DatasetReader, ReaderSample, make_sample

NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)
NYU13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
                 "tv", "wall", "window")
NYU40_TO_13 = (12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5,
               7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7)
"""1-based 13-class id of each 1-based NYU40 class (wall -> wall, door -> wall, blinds -> window, ...)."""

NYU_CAMERA = {"fx": 518.8579, "fy": 519.4696, "cx": 324.5824, "cy": 252.7362}
"""The RGB camera of the NYU toolbox's camera_params.m (cx 325.58, cy 253.74 there, 1-based pixel
centres), here in the OpenCV convention (first pixel centre at 0)."""

_DATASETS = ("images", "depths", "labels")


def read_class_mapping(path: str | os.PathLike) -> np.ndarray:
    """The 894 -> 40 mapping (``mapClass`` of ``classMapping40.mat``, or the same 894 values 1..40 as
    .npy / .json / whitespace-separated .txt) as a look-up table: raw id (0..894) -> 0-based NYU40
    class, 255 for unlabelled."""
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the NYUv2 894 -> 40 class mapping, classMapping40.mat)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values = np.load(path, allow_pickle=False)
    elif suffix == ".json":
        values = np.array(json.loads(path.read_text(encoding="utf-8")))
    elif suffix == ".txt":
        values = np.array(path.read_text(encoding="utf-8").split(), dtype=np.float64)
    elif suffix == ".mat":
        values = _mat_variable(path, "mapClass")
    else:
        raise ValueError(f"{path}: class mapping must be .mat, .npy, .json or .txt")
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size != 894 or not np.all((values >= 0) & (values <= 40) & (values == np.round(values))):
        raise ValueError(f"{path}: class mapping must hold 894 integers in 0..40, got {values.size} values")
    lut = np.full(895, 255, np.uint8)
    mapped = values.astype(np.int64)
    lut[1:] = np.where(mapped > 0, mapped - 1, 255)
    return lut


def _mat_variable(path: Path, name: str) -> np.ndarray:
    """A numeric variable of a MATLAB file: v7.3 through h5py, older versions through scipy."""
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if name not in f:
                raise ValueError(f"{path}: no variable {name!r}")
            return np.asarray(f[name])
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ValueError(f"{path}: a MATLAB v5 file needs scipy to read; install scipy or pass the 894 "
                         "values as .npy/.json/.txt") from None
    doc = loadmat(path)
    if name not in doc:
        raise ValueError(f"{path}: no variable {name!r}")
    return np.asarray(doc[name])


def semantic_table(classes: int | None, mapping: str | os.PathLike | None) -> tuple[np.ndarray | None, tuple]:
    """(raw id -> class look-up table, class names) for ``classes`` in None, 13, 40."""
    if classes in (None, "", "none"):
        return None, ()
    classes = int(classes)
    if classes == 894:
        raise ValueError("nyuv2: the 894 raw classes do not fit uint8 class maps; use classes=40 or 13")
    if classes not in (13, 40):
        raise ValueError(f"nyuv2: classes must be 13 or 40, got {classes}")
    if mapping is None:
        raise ValueError(f"nyuv2: classes={classes} needs mapping=classMapping40.mat (the standard 894 -> 40 "
                         "mapping of Gupta et al. 2013, a separate download)")
    lut = read_class_mapping(mapping)
    if classes == 40:
        return lut, NYU40_CLASSES
    to13 = np.full(256, 255, np.uint8)
    to13[:40] = np.array(NYU40_TO_13, np.uint8) - 1
    return to13[lut], NYU13_CLASSES


def split_indices(split: str, splits: str | os.PathLike | None, count: int) -> list[int]:
    """0-based frame indices of ``split``: all frames, or the official ``trainNdxs`` / ``testNdxs``
    (1-based, 795 / 654 frames) of ``splits.mat``."""
    if split == "all":
        return list(range(count))
    if split not in ("train", "test"):
        raise ValueError(f"nyuv2: split must be all, train or test, got {split!r}")
    if splits is None:
        raise ValueError(f"nyuv2: split={split} needs splits=splits.mat (the official train/test split, a "
                         "separate download)")
    path = Path(str(splits))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the NYUv2 splits.mat)")
    values = np.asarray(_mat_variable(path, f"{split}Ndxs"), np.float64).reshape(-1)
    if not np.all((values >= 1) & (values <= count) & (values == np.round(values))):
        raise ValueError(f"{path}: {split}Ndxs must hold 1-based frame numbers 1..{count}")
    return sorted(int(v) - 1 for v in values)


class NYUv2Reader(DatasetReader):
    """The 1449 labeled frames of NYU Depth V2 (640x480) from ``nyu_depth_v2_labeled.mat``.

    The HDF5 file is opened lazily in each process (an h5py handle cannot be pickled into
    DataLoader workers)."""

    format = "nyuv2"
    tasks = frozenset({"segmentation", "depth", "super_resolution"})

    def __init__(self, root: str | os.PathLike, *, split: str = "all", splits: str | os.PathLike | None = None,
                 classes: int | None = None, mapping: str | os.PathLike | None = None,
                 tasks: Iterable[str] | None = None) -> None:
        import h5py

        path = Path(root)
        if path.is_dir():
            path = path / "nyu_depth_v2_labeled.mat"
        super().__init__(path, tasks)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (the NYUv2 labeled file nyu_depth_v2_labeled.mat)")
        if not h5py.is_hdf5(path):
            raise ValueError(f"{path}: not an HDF5 (MATLAB v7.3) file")
        self._lut, self.semantic_classes = semantic_table(classes, mapping)
        if self._lut is None:
            self.keep = self.keep - {"segmentation"}
        with h5py.File(path, "r") as f:
            self._check(f, path)
            n = f["images"].shape[0]
        self._items = split_indices(split, splits, n)
        self._file = None
        self.info.update(split=split, classes=len(self.semantic_classes) or None)

    @staticmethod
    def _check(f, path: Path) -> None:
        for name in _DATASETS:
            if name not in f:
                raise ValueError(f"{path}: no dataset {name!r} (expected images, depths and labels)")
        n, c, w, h = f["images"].shape if f["images"].ndim == 4 else (0, 0, 0, 0)
        if c != 3:
            raise ValueError(f"{path}: images must be [N, 3, W, H] in HDF5 order, got {f['images'].shape}")
        for name in ("depths", "labels"):
            if f[name].shape != (n, w, h):
                raise ValueError(f"{path}: {name} must be {[n, w, h]} (images are {list(f['images'].shape)}), "
                                 f"got {list(f[name].shape)}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def _file_name(self, item: int) -> str:
        return f"{self.root.name}#{item}"

    def _load(self, index: int, item: int) -> ReaderSample:
        import h5py

        if self._file is None:
            self._file = h5py.File(self.root, "r")
        f = self._file
        image = np.ascontiguousarray(np.asarray(f["images"][item], np.uint8).transpose(2, 1, 0))
        depth = np.asarray(f["depths"][item], np.float32).T.copy()
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
        semantic = None
        if self._lut is not None:
            raw = np.asarray(f["labels"][item]).T
            if raw.size and (raw.min() < 0 or raw.max() > 894):
                raise ValueError(f"{self.root}: labels of frame {item} lie outside 0..894")
            semantic = self._lut[raw.astype(np.int64)]
        return make_sample(image, index, self._file_name(item), semantic=semantic, depth=depth,
                           camera=dict(NYU_CAMERA))
