"""`mtl-perception check-data ROOT` (and `--format FMT ROOT`): every problem of a dataset, found
before a long run.

The reader (:class:`~mtl_perception.data.dataset.MultiTaskDataset`) stops at the first problem,
and decodes a file only when a training epoch reaches it: a corrupt image can end a run hours
in. This check reads everything once, with the reader's own file readers, and lists each
problem on one line naming the file:

- the index: ``dataset.json`` readable, of this format and ``format_version``; categories,
  ``depth_scale``, every ``images`` entry (keys, positive integer size, unique id) and every
  annotation (known image and category, a finite bbox of positive size inside its image);
- every file an entry lists: it exists and decodes; the image is 8-bit with 3 channels, the
  semantic map single-channel 8-bit, the depth map single-channel 16-bit (or a .npy), all of the
  entry's size; semantic class ids are below the number of ``semantic_classes`` or the
  unlabelled id 255.

A public dataset read in place (`check_source`, `check-data --format cityscapes ROOT --split val`)
is checked through its reader: the layout opens, and every sample loads (each file the reader
reads for it decodes with the expected encoding, size and values: the reader's own one-line
errors); its labels are then checked as above (boxes finite, of positive size, inside the image;
class ids known; valid depths finite and positive).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import cv2
import numpy as np
from tqdm import tqdm

from mtl_perception.data.dataset import (
    LABEL_FILE_KEYS,
    UNLABELLED,
    DatasetError,
    annotation_box,
    image_entry_problem,
    read_categories,
    read_depth,
    read_depth_scale,
    read_image,
    read_index,
    read_semantic,
)

#: A box may reach this far (pixels) past the image's border before it is reported (rounding).
BOX_TOLERANCE_PX = 1e-3
#: Smaller sets are checked in moments: no progress bar for them.
PROGRESS_MIN_IMAGES = 200


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file it is in (or about) and what is wrong."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def check_dataset(root: str | os.PathLike, progress: bool = False) -> List[Problem]:
    """Every problem of the dataset at `root` (empty when it is fit to train on); `progress`
    shows a bar over its images on stderr."""
    root = Path(root)
    try:
        meta, doc = read_index(root)
    except (DatasetError, FileNotFoundError) as exc:
        return [_problem(exc, root / "dataset.json")]
    problems: List[Problem] = []
    semantic_classes = _index_field(problems, meta, lambda: _semantic_classes(doc, meta), ())
    categories = _index_field(problems, meta, lambda: read_categories(doc, meta)[1], {})
    depth_scale = _index_field(problems, meta, lambda: read_depth_scale(doc, meta), 1.0)
    images = doc.get("images")
    if not isinstance(images, list):
        return problems + [Problem(meta, "'images' must be a list")]
    entries = _check_entries(images, meta, problems)
    bar = tqdm(entries.values(), desc="check-data", unit="image", leave=False,
               disable=not progress or len(entries) < PROGRESS_MIN_IMAGES)
    for entry in bar:
        problems += _check_files(root, entry, len(semantic_classes), depth_scale)
    problems += _check_annotations(doc.get("annotations", []), meta, entries, categories)
    return problems


def check_source(fmt: str, root: str | os.PathLike, options: Optional[Mapping[str, Any]] = None,
                 progress: bool = False) -> List[Problem]:
    """Every problem of the public dataset at `root` read by format `fmt`'s reader with
    `options` (e.g. split); an unknown format or option raises ValueError (a usage error)."""
    from mtl_perception.data.readers import check_options, open_reader

    options = dict(options or {})
    check_options(fmt, options)
    try:
        reader = open_reader(fmt, root, options)
    except (ValueError, OSError) as exc:  # the layout: a missing folder, an unreadable index file
        return [_problem(exc, Path(root))]
    problems: List[Problem] = []
    bar = tqdm(range(len(reader)), desc="check-data", unit="image", leave=False,
               disable=not progress or len(reader) < PROGRESS_MIN_IMAGES)
    for i in bar:
        path = _sample_path(reader, i)
        try:
            sample = reader.load(i)
        except (ValueError, OSError) as exc:  # the reader's "<file>: <reason>"
            problems.append(_problem(exc, path))
            continue
        problems += [Problem(path, message) for message in _sample_problems(sample, reader)]
    if not len(reader):
        problems.append(Problem(Path(root), f"no samples found (format {fmt}, options {options or 'none'})"))
    return problems


def _sample_path(reader, index: int) -> Path:
    """The file a sample is named by (`root#i` for a sample inside one file: NYUv2, video)."""
    name = reader.image_info(index)["file_name"]
    return reader.root.parent / name if "#" in name else reader.root / name


def _sample_problems(sample, reader) -> List[str]:
    """What is wrong with one loaded sample's labels (the reader has decoded every file)."""
    h, w = sample.image.shape[:2]
    out = []
    bad_ids = _class_id_problem(np.unique(sample.semantic), len(reader.semantic_classes))
    if bad_ids:
        out.append(bad_ids)
    depth = sample.depth[~np.isnan(sample.depth)]
    if depth.size and not (np.isfinite(depth).all() and (depth > 0).all()):
        out.append("depth has infinite, zero or negative values (invalid must be NaN)")
    for box, label in zip(np.asarray(sample.boxes, np.float64), sample.labels):
        bad_box = _box_problem(*box, w, h)
        if bad_box:
            out.append(f"box {box.tolist()} {bad_box}")
        if not 0 <= label < len(reader.detection_classes):
            out.append(f"box label {int(label)} is not in 0..{len(reader.detection_classes) - 1}")
    return out


def _class_id_problem(ids: np.ndarray, n_classes: int) -> Optional[str]:
    """The semantic ids that are neither a class (0..n_classes - 1) nor unlabelled, as one phrase."""
    bad = [int(i) for i in ids if i >= n_classes and i != UNLABELLED]
    if not bad:
        return None
    shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
    return (f"class ids {shown} are not in 0..{n_classes - 1} ({n_classes} semantic classes) "
            f"or {UNLABELLED} (unlabelled)")


def _box_problem(x1: float, y1: float, x2: float, y2: float, w: int, h: int, image: str = "the image"
                 ) -> Optional[str]:
    """What is wrong with an xyxy box in the w x h `image`, as the phrase after the box's name."""
    if not (all(np.isfinite(v) for v in (x1, y1, x2, y2)) and x2 > x1 and y2 > y1):
        return "is not a finite box of positive size"
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
        return f"(x1 y1 x2 y2 = {x1:g} {y1:g} {x2:g} {y2:g}) leaves {image} ({w}x{h})"
    return None


def _problem(exc: Exception, fallback: Path) -> Problem:
    """A reader's one-line `<file>: <reason>` error as a Problem."""
    text = str(exc)
    path, sep, message = text.partition(": ")
    return Problem(Path(path), message) if sep and path else Problem(fallback, text)


def _index_field(problems: List[Problem], meta: Path, read, default):
    try:
        return read()
    except DatasetError as exc:
        problems.append(_problem(exc, meta))
        return default


def _semantic_classes(doc: Mapping[str, Any], meta: Path) -> tuple:
    classes = doc.get("semantic_classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise DatasetError(f"{meta}: 'semantic_classes' must be a list of class names")
    if len(classes) > UNLABELLED:
        raise DatasetError(f"{meta}: {len(classes)} semantic classes; ids must stay below {UNLABELLED}")
    return tuple(classes)


def _check_entries(images: List[Any], meta: Path, problems: List[Problem]) -> Dict[Any, dict]:
    """The usable `images` entries by id; the others reported."""
    entries: Dict[Any, dict] = {}
    for j, im in enumerate(images):
        problem = image_entry_problem(im, j)
        if problem is None and not isinstance(im["id"], (int, str)):
            problem = f"images[{j}] id must be an integer or a string, got {im['id']!r}"
        if problem is None and im["id"] in entries:
            problem = f"images[{j}] repeats image id {im['id']!r}"
        if problem:
            problems.append(Problem(meta, problem))
        else:
            entries[im["id"]] = im
    return entries


def _check_files(root: Path, im: Mapping[str, Any], n_classes: int, depth_scale: float) -> List[Problem]:
    """The problems of one entry's files (each read once, with the reader's own readers)."""
    h, w = im["height"], im["width"]
    problems = []
    for key in LABEL_FILE_KEYS:
        if im.get(key) is None:
            continue
        path = root / im[key]
        if not path.is_file():
            problems.append(Problem(path, f"not found (listed as {key} of image {im['id']!r})"))
            continue
        try:
            problem = _check_file(key, path, h, w, n_classes, depth_scale)
        except DatasetError as exc:
            problems.append(_problem(exc, path))
            continue
        if problem:
            problems.append(Problem(path, problem))
    return problems


def _check_file(key: str, path: Path, h: int, w: int, n_classes: int, depth_scale: float) -> Optional[str]:
    if key == "file_name":
        read_image(path, h, w)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # what the colour conversion hid
        if raw.dtype != np.uint8 or raw.ndim != 3 or raw.shape[2] != 3:
            channels = 1 if raw.ndim == 2 else raw.shape[2]
            return f"image must be 8-bit with 3 channels, got {raw.dtype} with {channels} channel(s)"
        return None
    if key == "depth_file":
        read_depth(path, h, w, depth_scale)
        return None
    problem = _class_id_problem(np.unique(read_semantic(path, h, w)), n_classes)
    if problem and n_classes == 0:
        return "semantic labels, but dataset.json lists no semantic_classes"
    return problem


def _check_annotations(anns: Any, meta: Path, entries: Mapping[Any, dict],
                       categories: Mapping[Any, int]) -> List[Problem]:
    if not isinstance(anns, list):
        return [Problem(meta, "'annotations' must be a list")]
    problems = []
    for j, a in enumerate(anns):
        problem = _annotation_problem(a, meta, entries, categories)
        if problem:
            label = f"annotation {a.get('id')!r}" if isinstance(a, dict) and "id" in a else f"annotations[{j}]"
            problems.append(Problem(meta, f"{label}: {problem}"))
    return problems


def _annotation_problem(a: Any, meta: Path, entries: Mapping[Any, dict],
                        categories: Mapping[Any, int]) -> Optional[str]:
    if not isinstance(a, dict):
        return "must be an object"
    try:
        im = entries.get(a.get("image_id"))
    except TypeError:
        im = None
    if im is None:
        return f"refers to unknown image_id {a.get('image_id')!r}"
    try:
        known = a.get("category_id") in categories
    except TypeError:
        known = False
    if not known:
        return f"refers to unknown category_id {a.get('category_id')!r} (known: {sorted(categories)})"
    try:
        x1, y1, x2, y2 = annotation_box(a, meta)
    except DatasetError:
        return f"bbox must be 4 numbers [x, y, width, height], got {a.get('bbox')!r:.60}"
    problem = _box_problem(x1, y1, x2, y2, im["width"], im["height"], f"image {im['id']!r}")
    return f"bbox {a['bbox']} {problem}" if problem else None
