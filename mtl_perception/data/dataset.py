"""The on-disk multi-task dataset format (writer and torch-free reader).

Layout (the README's "Data" section has the full description)::

    root/
      dataset.json          COCO-style index: "images", "annotations", "categories" plus
                            "format": "mtl_perception.data.dataset", "format_version": 1,
                            "semantic_classes": [...], "depth_scale": metres per depth-PNG unit
      images/000000.png     RGB image
      semantic/000000.png   uint8 class ids, 255 = unlabelled            (optional per image)
      depth/000000.png      uint16, metres = value * depth_scale, 0 = invalid (optional per image;
                            a float32 .npy in metres, NaN = invalid, is accepted too)

Which tasks an image is labelled for: an "images" entry may list them, ``"labelled":
["segmentation", "depth", "detection", "super_resolution"]`` (any subset). Without the key an
image is labelled for segmentation when it has a ``semantic_file``, for depth when it has a
``depth_file``, and always for detection (no boxes = no objects) and super-resolution (its label
is the image): what datasets written before the key meant.

The generator of :mod:`mtl_perception.data.synthetic` writes it, and a user's own data in the same
layout is read by the same :class:`MultiTaskDataset`. ``dataset.json`` is written last and
atomically, so an interrupted writer never leaves a dataset that looks complete.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FORMAT = "mtl_perception.data.dataset"
FORMAT_VERSION = 1
DEFAULT_DEPTH_SCALE = 1.0 / 256.0
"""Metres per unit of a 16-bit depth PNG: range 0.0039 .. 255.996 m, rounding error <= 1.95 mm."""
UNLABELLED = 255
TASK_KINDS = ("segmentation", "depth", "detection", "super_resolution")
"""The task kinds an image can be labelled for (the "labelled" key of an "images" entry)."""
METADATA_FILE = "dataset.json"
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]


# ----------------------------------------------------------------------------------- encoding
def encode_depth(depth: np.ndarray, depth_scale: float = DEFAULT_DEPTH_SCALE) -> np.ndarray:
    """float metres (NaN/inf/<=0 invalid) -> uint16 units of ``depth_scale`` (0 = invalid).
    Depths beyond the 16-bit range (65535 * depth_scale) are stored as invalid; valid depths
    below half a unit are stored as 1 unit."""
    d = np.asarray(depth, np.float64)
    valid = np.isfinite(d) & (d > 0)
    q = np.zeros(d.shape, np.float64)
    q[valid] = np.rint(d[valid] / depth_scale)
    q[valid & (q < 1)] = 1
    q[q > 65535] = 0
    return q.astype(np.uint16)


def decode_depth(units: np.ndarray, depth_scale: float) -> np.ndarray:
    """uint16 units -> float32 metres, NaN where the unit is 0."""
    d = units.astype(np.float32) * np.float32(depth_scale)
    d[units == 0] = np.nan
    return d


def _imwrite(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array, _PNG_PARAMS):
        raise OSError(f"{path}: could not write image")


def _stem(index: int, digits: int = 6) -> str:
    return f"{index:0{digits}d}"


def write_frame_files(root: str | os.PathLike, index: int, frame: Any, depth_scale: float = DEFAULT_DEPTH_SCALE,
                      digits: int = 6) -> tuple[dict, list[dict]]:
    """Writes one frame's image (and semantic / depth when the frame has them) under ``root``
    and returns its "images" entry and its annotations (COCO, without "id"; category ids are
    label + 1). ``frame`` is any object with an ``image`` (HxWx3 uint8 RGB) and optionally
    ``semantic``, ``depth``, ``boxes`` (xyxy), ``labels``, ``visible_fraction``, ``night`` and
    ``camera`` (a :class:`~mtl_perception.data.synthetic.world.Camera` or a dict of fx, fy, cx, cy in
    the OpenCV convention)."""
    root = Path(root)
    image = np.asarray(frame.image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"frame {index}: image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    stem = _stem(index, digits)
    entry: dict[str, Any] = {"id": int(index), "file_name": f"images/{stem}.png", "width": int(w), "height": int(h)}
    _imwrite(root / entry["file_name"], np.ascontiguousarray(image[..., ::-1]))
    semantic = getattr(frame, "semantic", None)
    if semantic is not None:
        semantic = np.asarray(semantic)
        if semantic.shape != (h, w) or semantic.dtype != np.uint8:
            raise ValueError(f"frame {index}: semantic must be {h}x{w} uint8, got {semantic.dtype} {semantic.shape}")
        entry["semantic_file"] = f"semantic/{stem}.png"
        _imwrite(root / entry["semantic_file"], semantic)
    depth = getattr(frame, "depth", None)
    if depth is not None:
        depth = np.asarray(depth)
        if depth.shape != (h, w):
            raise ValueError(f"frame {index}: depth must be {h}x{w}, got {depth.shape}")
        entry["depth_file"] = f"depth/{stem}.png"
        _imwrite(root / entry["depth_file"], encode_depth(depth, depth_scale))
    night = getattr(frame, "night", None)
    if night is not None:
        entry["night"] = bool(night)
    camera = getattr(frame, "camera", None)
    if camera is not None:
        entry["camera"] = _camera_entry(camera)
    labelled = getattr(frame, "labelled_tasks", None)
    if labelled is not None:
        entry["labelled"] = sorted(labelled)
    boxes = np.asarray(getattr(frame, "boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    labels = np.asarray(getattr(frame, "labels", np.zeros(0)), np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"frame {index}: {len(boxes)} boxes but {len(labels)} labels")
    vis = getattr(frame, "visible_fraction", None)
    anns = []
    for j, (b, lab) in enumerate(zip(boxes, labels)):
        x1, y1, x2, y2 = (float(v) for v in b)
        ann = {
            "image_id": int(index),
            "category_id": int(lab) + 1,
            "bbox": [round(x1, 4), round(y1, 4), round(x2 - x1, 4), round(y2 - y1, 4)],
            "area": None,
            "iscrowd": 0,
        }
        inst = getattr(frame, "instances", None)
        ids = getattr(frame, "instance_ids", None)
        if inst is not None and ids is not None:
            ann["area"] = int(np.count_nonzero(np.asarray(inst) == int(ids[j])))
        else:
            ann["area"] = round((x2 - x1) * (y2 - y1), 4)
        if vis is not None:
            ann["visible_fraction"] = round(float(vis[j]), 4)
        anns.append(ann)
    return entry, anns


def _camera_entry(camera: Any) -> dict:
    if isinstance(camera, Mapping):
        return {k: float(v) for k, v in camera.items()}
    K = camera.K_opencv()
    out = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}
    for extra in ("mount_height", "pitch_deg"):
        if hasattr(camera, extra):
            out[extra] = round(float(getattr(camera, extra)), 6)
    return out


# ------------------------------------------------------------------------------------- writer
class DatasetWriter:
    """Streaming writer: ``add(frame)`` writes a frame's files at once; ``close()`` writes
    ``dataset.json`` (atomically: temporary file + ``os.replace``). Used as a context manager,
    an exception inside the ``with`` block leaves no ``dataset.json`` behind."""

    def __init__(self, root: str | os.PathLike, semantic_classes: Iterable[str], detection_classes: Iterable[str],
                 depth_scale: float = DEFAULT_DEPTH_SCALE, info: Mapping[str, Any] | None = None,
                 digits: int = 6) -> None:
        if not depth_scale > 0:
            raise ValueError(f"depth_scale must be positive, got {depth_scale}")
        self.root = Path(root)
        self.semantic_classes = [str(c) for c in semantic_classes]
        self.detection_classes = [str(c) for c in detection_classes]
        self.depth_scale = float(depth_scale)
        self.info = dict(info or {})
        self.digits = int(digits)
        self._images: list[dict] = []
        self._annotations: list[dict] = []
        self._closed = False
        for sub in ("images", "semantic", "depth"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._images)

    def add(self, frame: Any) -> int:
        """Writes ``frame``'s files (see :func:`write_frame_files`); returns its image id."""
        index = len(self._images)
        entry, anns = write_frame_files(self.root, index, frame, self.depth_scale, self.digits)
        self.add_record(entry, anns)
        return index

    def add_record(self, entry: dict, annotations: Iterable[dict]) -> None:
        """Registers a frame whose files are already written (e.g. by a worker process)."""
        if self._closed:
            raise RuntimeError("DatasetWriter is closed")
        self._images.append(dict(entry))
        for ann in annotations:
            ann = dict(ann)
            ann["id"] = len(self._annotations) + 1
            self._annotations.append(ann)

    def close(self) -> Path:
        """Writes dataset.json; returns its path."""
        if self._closed:
            return self.root / METADATA_FILE
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "info": self.info,
            "semantic_classes": self.semantic_classes,
            "unlabelled_id": UNLABELLED,
            "depth_scale": self.depth_scale,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.detection_classes)],
            "images": self._images,
            "annotations": [
                {"id": a["id"], **{k: v for k, v in a.items() if k != "id"}} for a in self._annotations
            ],
        }
        path = self.root / METADATA_FILE
        fd, tmp = tempfile.mkstemp(prefix=".dataset.", suffix=".json.tmp", dir=self.root)
        try:
            os.chmod(tmp, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._closed = True
        return path

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def write_dataset(root: str | os.PathLike, frames: Iterable[Any], semantic_classes: Iterable[str],
                  detection_classes: Iterable[str], depth_scale: float = DEFAULT_DEPTH_SCALE,
                  info: Mapping[str, Any] | None = None) -> Path:
    """Writes ``frames`` (frame-like objects, see :func:`write_frame_files`) as a dataset at
    ``root``; returns ``root``."""
    with DatasetWriter(root, semantic_classes, detection_classes, depth_scale, info) as w:
        for f in frames:
            w.add(f)
    return Path(root)


# ------------------------------------------------------------------------------------- reader
@dataclass
class Sample:
    """One image of a dataset with its labels (missing labels are all-unlabelled / all-NaN)."""

    image: np.ndarray       # HxWx3 uint8 RGB
    semantic: np.ndarray    # HxW uint8, 255 = unlabelled
    depth: np.ndarray       # HxW float32 metres, NaN = invalid
    boxes: np.ndarray       # Nx4 float32 xyxy pixels
    labels: np.ndarray      # N int64, 0-based index into detection_classes
    image_id: int
    night: bool = False
    file_name: str = ""
    camera: dict | None = None
    labelled_tasks: frozenset = frozenset(TASK_KINDS)  # the kinds this sample has labels for


def labelled_tasks(entry: Mapping[str, Any], where: str = "dataset.json") -> frozenset:
    """The task kinds an "images" entry is labelled for: its "labelled" list, else what the
    entry's files imply (see the module docstring). A kind listed without its label file, or an
    unknown kind, is a one-line ``DatasetError`` naming ``where``."""
    listed = entry.get("labelled")
    if listed is None:
        kinds = {"detection", "super_resolution"}
        kinds.update(k for k, key in (("segmentation", "semantic_file"), ("depth", "depth_file")) if entry.get(key))
        return frozenset(kinds)
    if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
        raise DatasetError(f"{where}: 'labelled' must be a list of task kinds, got {listed!r}")
    unknown = sorted(set(listed) - set(TASK_KINDS))
    if unknown:
        raise DatasetError(f"{where}: 'labelled' has unknown task kind {unknown[0]!r} (known: {', '.join(TASK_KINDS)})")
    for kind, key in (("segmentation", "semantic_file"), ("depth", "depth_file")):
        if kind in listed and not entry.get(key):
            raise DatasetError(f"{where}: 'labelled' lists {kind} but the image has no {key}")
    return frozenset(listed)


class DatasetError(ValueError):
    """A dataset's index or one of its files cannot be used; str() is one line naming the file.

    A DataLoader worker hands an exception to the main process as ``type(exc)(its formatted
    traceback)``; the constructor keeps only the original line, so the error a training run
    ends with still reads ``<file>: cannot decode image``."""

    def __init__(self, message: object) -> None:
        super().__init__(_original_line(str(message), type(self)))


def _original_line(text: str, kind: type) -> str:
    if "Traceback (most recent call last)" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


def read_index(root: str | os.PathLike) -> tuple[Path, dict]:
    """``(path, document)`` of ``root/dataset.json`` after the checks every reader needs: it
    exists (else ``FileNotFoundError``), is UTF-8 JSON, an object, of this format and of
    ``format_version`` 1 (the integer: ``true`` and ``1.0`` are refused). Else ``DatasetError``."""
    meta = Path(root) / METADATA_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found (a dataset root must contain {METADATA_FILE})")
    try:
        with open(meta, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta}: invalid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{meta}: not UTF-8 text ({e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{meta}: top level must be a JSON object")
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise DatasetError(f"{meta}: format is {fmt!r}, expected {FORMAT!r}")
    if "format_version" not in doc:
        raise DatasetError(f"{meta}: missing 'format_version' (this reader supports version {FORMAT_VERSION})")
    version = doc["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise DatasetError(f"{meta}: format_version {version!r} is not supported "
                           f"(this reader supports version {FORMAT_VERSION})")
    return meta, doc


def read_categories(doc: Mapping[str, Any], meta: Path) -> tuple[tuple[str, ...], dict]:
    """``(detection class names, {category id: 0-based label})`` of an index document."""
    cats = doc.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise DatasetError(f"{meta}: 'categories' must be a list of {{\"id\", \"name\"}} objects")
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    if len(cat_index) != len(cats):
        raise DatasetError(f"{meta}: duplicate category ids")
    return tuple(str(c["name"]) for c in cats), cat_index


def read_depth_scale(doc: Mapping[str, Any], meta: Path) -> float:
    scale = doc.get("depth_scale", DEFAULT_DEPTH_SCALE)
    if type(scale) not in (int, float) or not np.isfinite(scale) or not scale > 0:
        raise DatasetError(f"{meta}: depth_scale must be a positive number, got {scale!r}")
    return float(scale)


IMAGE_KEYS = ("id", "file_name", "width", "height")
LABEL_FILE_KEYS = ("file_name", "semantic_file", "depth_file")


def image_entry_problem(im: Any, j: int) -> str | None:
    """What is wrong with ``images[j]`` of an index (its keys and their types), or None."""
    if not isinstance(im, dict) or not all(k in im for k in IMAGE_KEYS):
        return f"images[{j}] needs 'id', 'file_name', 'width' and 'height'"
    for key in ("width", "height"):
        if type(im[key]) is not int or im[key] <= 0:
            return f"images[{j}] {key} must be a positive integer, got {im[key]!r}"
    for key in LABEL_FILE_KEYS:
        if key in im and im[key] is not None and (not isinstance(im[key], str) or not im[key]):
            return f"images[{j}] {key} must be a file name, got {im[key]!r}"
    return None


def annotation_box(a: Any, meta: Path) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` of a COCO annotation's ``bbox`` (x, y, width, height)."""
    try:
        x, y, w, h = (float(v) for v in a["bbox"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{meta}: annotation {a.get('id')!r} has a missing or malformed bbox") from None
    return x, y, x + w, y + h


def _check_size(path: Path, arr: np.ndarray, h: int, w: int) -> None:
    if arr.shape[:2] != (h, w):
        raise DatasetError(f"{path}: size {arr.shape[1]}x{arr.shape[0]} disagrees with dataset.json ({w}x{h})")


def read_image(path: Path, h: int, w: int) -> np.ndarray:
    """An index's image as HxWx3 uint8 RGB (``DatasetError`` naming the file otherwise)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"{path}: cannot decode image")
    _check_size(path, bgr, h, w)
    return np.ascontiguousarray(bgr[..., ::-1])


def read_semantic(path: Path, h: int, w: int) -> np.ndarray:
    """A semantic label file as HxW uint8 class ids."""
    semantic = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if semantic is None:
        raise DatasetError(f"{path}: cannot decode semantic label image")
    if semantic.ndim != 2 or semantic.dtype != np.uint8:
        raise DatasetError(f"{path}: semantic labels must be a single-channel 8-bit PNG, got {semantic.dtype} "
                           f"with shape {semantic.shape}")
    _check_size(path, semantic, h, w)
    return semantic


def read_depth(path: Path, h: int, w: int, depth_scale: float) -> np.ndarray:
    """A depth file (16-bit PNG in units of ``depth_scale``, or a .npy) as HxW float32 metres."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DatasetError(f"{path}: cannot read depth array ({e})") from None
        if arr.ndim != 2:
            raise DatasetError(f"{path}: depth must be a 2-D array, got shape {arr.shape}")
        _check_size(path, arr, h, w)
        if arr.dtype == np.uint16:
            return decode_depth(arr, depth_scale)
        if arr.dtype.kind != "f":
            raise DatasetError(f"{path}: depth array must be float metres or uint16 units, got {arr.dtype}")
        d = arr.astype(np.float32)
        d[~np.isfinite(d) | (d <= 0)] = np.nan
        return d
    units = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if units is None:
        raise DatasetError(f"{path}: cannot decode depth image")
    if units.ndim != 2 or units.dtype != np.uint16:
        raise DatasetError(f"{path}: depth must be a single-channel 16-bit PNG, got {units.dtype} "
                           f"with shape {units.shape}")
    _check_size(path, units, h, w)
    return decode_depth(units, depth_scale)


class MultiTaskDataset:
    """Torch-free reader of the format. Raises ``FileNotFoundError`` / ``DatasetError`` (a
    ``ValueError``) with a one-line message naming the offending file: at construction for a
    missing or malformed dataset.json, an unsupported format version, or a missing image / label
    file; at :meth:`load` for a file that cannot be decoded or whose size disagrees with
    dataset.json. ``mtl-perception check-data`` (:mod:`mtl_perception.data.check`) lists every
    such problem of a dataset at once, before a long run."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        meta, doc = read_index(self.root)
        self.meta_path = meta
        self.semantic_classes: tuple[str, ...] = tuple(str(c) for c in doc.get("semantic_classes", ()))
        self.detection_classes, cat_index = read_categories(doc, meta)
        self.depth_scale = read_depth_scale(doc, meta)
        self.info = doc.get("info", {})
        images = doc.get("images")
        if not isinstance(images, list):
            raise DatasetError(f"{meta}: 'images' must be a list")
        self._images: list[dict] = []
        ids: dict[Any, int] = {}
        for j, im in enumerate(images):
            problem = image_entry_problem(im, j)
            if problem:
                raise DatasetError(f"{meta}: {problem}")
            if im["id"] in ids:
                raise DatasetError(f"{meta}: duplicate image id {im['id']!r}")
            ids[im["id"]] = j
            labelled_tasks(im, f"{meta}: images[{j}]")
            for key in LABEL_FILE_KEYS:
                if im.get(key) is not None:
                    p = self.root / im[key]
                    if not p.is_file():
                        raise FileNotFoundError(f"{p}: not found (listed as {key} of image {im['id']} in {meta})")
            self._images.append(im)
        anns = doc.get("annotations", [])
        if not isinstance(anns, list):
            raise DatasetError(f"{meta}: 'annotations' must be a list")
        boxes: list[list] = [[] for _ in self._images]
        labels: list[list] = [[] for _ in self._images]
        for a in anns:
            if not isinstance(a, dict):
                raise DatasetError(f"{meta}: annotations must be objects, got {a!r:.40}")
            if a.get("iscrowd", 0):
                continue
            try:
                j = ids[a["image_id"]]
                lab = cat_index[a["category_id"]]
            except (KeyError, TypeError) as e:
                raise DatasetError(f"{meta}: annotation {a.get('id')!r} refers to unknown {e} "
                                   "or lacks a field") from None
            boxes[j].append(annotation_box(a, meta))
            labels[j].append(lab)
        self._boxes = [np.array(b, np.float32).reshape(-1, 4) for b in boxes]
        self._labels = [np.array(lbl, np.int64) for lbl in labels]

    def __len__(self) -> int:
        return len(self._images)

    def image_info(self, index: int) -> dict:
        """The "images" entry of sample ``index``."""
        return dict(self._images[index])

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    def __iter__(self):
        for i in range(len(self)):
            yield self.load(i)

    def load(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        im = self._images[index]
        h, w = im["height"], im["width"]
        image = read_image(self.root / im["file_name"], h, w)
        if im.get("semantic_file"):
            semantic = read_semantic(self.root / im["semantic_file"], h, w)
        else:
            semantic = np.full((h, w), UNLABELLED, np.uint8)
        if im.get("depth_file"):
            depth = read_depth(self.root / im["depth_file"], h, w, self.depth_scale)
        else:
            depth = np.full((h, w), np.nan, np.float32)
        cam = im.get("camera")
        return Sample(
            image=image,
            semantic=semantic,
            depth=depth,
            boxes=self._boxes[index].copy(),
            labels=self._labels[index].copy(),
            image_id=int(im["id"]) if isinstance(im["id"], (int, np.integer)) else im["id"],
            night=bool(im.get("night", False)),
            file_name=str(im["file_name"]),
            camera=dict(cam) if isinstance(cam, dict) else None,
            labelled_tasks=labelled_tasks(im),
        )


__all__ = [
    "DEFAULT_DEPTH_SCALE",
    "FORMAT",
    "FORMAT_VERSION",
    "DatasetError",
    "DatasetWriter",
    "MultiTaskDataset",
    "Sample",
    "TASK_KINDS",
    "decode_depth",
    "encode_depth",
    "labelled_tasks",
    "write_dataset",
    "write_frame_files",
]
