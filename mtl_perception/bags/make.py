"""`mtl-perception make-bag`: a rosbag2 bag to try evaluation and replay on.

Sources:

- `synthetic` (default): frames of the procedural world (`mtl_perception.data.synthetic`) with every
  ground truth it has: camera image, camera_info, segmentation, depth and detections;
- a dataset folder (`dataset.json`, see the README's "Data"): its images, camera intrinsics where
  recorded, and the labels it has;
- a folder of images (sorted by name) or a video file: the camera image only.

Topics follow the ground-truth convention of `bag_io` (and docs/bags.md): `/camera/image_raw`
(sensor_msgs/Image) or `/camera/image_raw/compressed` (CompressedImage), `/camera/camera_info`,
`/ground_truth/segmentation` (mono8 class ids, 255 unlabelled), `/ground_truth/depth` (32FC1
metres, NaN invalid), `/ground_truth/detections` (vision_msgs/Detection2DArray, class_id = class
name, boxes in camera pixels). All messages of frame i carry the same header stamp,
`start + i / rate`, which is also their log time. The bag is a pure function of the arguments.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import cv2
import numpy as np

from mtl_perception.bags.io import (
    DEFAULT_TOPICS,
    GROUND_TRUTH_TOPICS,
    STORAGES,
    BagError,
    BagWriter,
    camera_info_msg,
    compressed_image_msg,
    detections_msg,
    image_msg,
    make_header,
)
from mtl_perception.inference.pixels import WRITABLE_ENCODINGS, color_to_array

#: Header stamp of the first frame: 2024-01-01T00:00:00Z (fixed, so bags are reproducible).
DEFAULT_START_NS = 1_704_067_200 * 1_000_000_000
FRAME_ID = "camera_optical_frame"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
COMPRESSIONS = ("jpeg", "png")


@dataclass
class BagFrame:
    """One camera frame and whatever ground truth it has (None: no such label)."""

    image: np.ndarray  # HxWx3 uint8 RGB
    semantic: Optional[np.ndarray] = None  # HxW uint8 class ids, 255 unlabelled
    depth: Optional[np.ndarray] = None  # HxW float32 metres, NaN invalid
    boxes: Optional[np.ndarray] = None  # Nx4 xyxy pixels
    labels: Optional[np.ndarray] = None  # N indices into detection_classes
    k: Optional[np.ndarray] = None  # 3x3 intrinsics (OpenCV / ROS convention)


def write_bag(out: os.PathLike | str, frames: Iterator[BagFrame], *, rate: float = 10.0, storage: str = "sqlite3",
              compressed: Optional[str] = None, encoding: str = "bgr8", detection_classes: Sequence[str] = (),
              start_ns: int = DEFAULT_START_NS, frame_id: str = FRAME_ID) -> dict:
    """Writes frames to a new bag; returns a summary (path, storage, frames, topics with counts)."""
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if encoding not in WRITABLE_ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(WRITABLE_ENCODINGS)}, got {encoding!r}")
    if compressed not in (None,) + COMPRESSIONS:
        raise ValueError(f"compressed must be one of {', '.join(COMPRESSIONS)}, got {compressed!r}")
    period_ns = int(round(1e9 / rate))
    counts: dict = {}
    n = 0
    writer = BagWriter(out, storage)  # refuses an existing path before anything is created
    try:
        with writer:
            store = writer.store

            def put(topic: str, stamp: int, msg: Any) -> None:
                writer.write(topic, stamp, msg)
                counts[topic] = counts.get(topic, 0) + 1

            for index, frame in enumerate(frames):
                stamp = int(start_ns) + index * period_ns
                header = make_header(stamp, frame_id, store)
                image = np.ascontiguousarray(frame.image)
                h, w = image.shape[:2]
                if compressed:
                    put(DEFAULT_TOPICS["compressed"], stamp,
                        compressed_image_msg(image, compressed, header, "rgb", store))
                else:
                    put(DEFAULT_TOPICS["image"], stamp,
                        image_msg(color_to_array(image, encoding), encoding, header, store))
                if frame.k is not None:
                    put(DEFAULT_TOPICS["camera_info"], stamp, camera_info_msg(header, w, h, frame.k, store))
                if frame.semantic is not None:
                    put(GROUND_TRUTH_TOPICS["segmentation"], stamp,
                        image_msg(np.asarray(frame.semantic, np.uint8), "mono8", header, store))
                if frame.depth is not None:
                    put(GROUND_TRUTH_TOPICS["depth"], stamp,
                        image_msg(np.asarray(frame.depth, np.float32), "32FC1", header, store))
                if frame.boxes is not None:
                    labels = np.asarray(frame.labels, np.int64).reshape(-1)
                    names = [detection_classes[i] for i in labels]
                    put(GROUND_TRUTH_TOPICS["detections"], stamp,
                        detections_msg(header, frame.boxes, [1.0] * len(names), names, store))
                n += 1
        if n == 0:
            raise BagError(f"{out}: no frames to write")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never leave a half-written bag behind
        raise
    return {"path": str(out), "storage": storage, "frames": n, "rate_hz": rate,
            "topics": dict(sorted(counts.items()))}


# ------------------------------------------------------------------------------------ sources
def _render(args: tuple) -> BagFrame:
    from mtl_perception.data.synthetic import Camera, is_night, render_frame

    seed, index, width, height, night_fraction = args
    camera = Camera.default(width, height)
    f = render_frame(seed, index, camera, night=is_night(seed, index, night_fraction))
    return BagFrame(image=f.image, semantic=f.semantic, depth=f.depth.astype(np.float32), boxes=f.boxes,
                    labels=f.labels, k=f.camera.K_opencv())


def synthetic_frames(frames: int, width: int = 384, height: int = 256, seed: int = 0, night_fraction: float = 0.25,
                     workers: int = 1) -> Iterator[BagFrame]:
    """Frames 0..frames-1 of the synthetic world `seed` (rendered in `workers` processes, in order)."""
    jobs = [(seed, i, width, height, night_fraction) for i in range(frames)]
    if workers > 1 and frames > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, frames)) as pool:
            yield from pool.imap(_render, jobs)
    else:
        for job in jobs:
            yield _render(job)


def dataset_frames(root: Path, limit: Optional[int] = None) -> tuple:
    """(frames iterator, detection classes, count) of a dataset folder: labels where it has them."""
    from mtl_perception.data.dataset import MultiTaskDataset

    ds = MultiTaskDataset(root)
    count = len(ds) if limit is None else min(limit, len(ds))

    def gen() -> Iterator[BagFrame]:
        for i in range(count):
            info, s = ds.image_info(i), ds.load(i)
            cam = s.camera
            k = None
            if cam and all(key in cam for key in ("fx", "fy", "cx", "cy")):
                k = np.array([[cam["fx"], 0, cam["cx"]], [0, cam["fy"], cam["cy"]], [0, 0, 1]], np.float64)
            has_boxes = bool(ds.detection_classes)
            yield BagFrame(image=s.image, semantic=s.semantic if info.get("semantic_file") else None,
                           depth=s.depth if info.get("depth_file") else None,
                           boxes=s.boxes if has_boxes else None, labels=s.labels if has_boxes else None, k=k)

    return gen(), ds.detection_classes, count


def image_folder_frames(root: Path, limit: Optional[int] = None) -> tuple:
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BagError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) and no dataset.json in this folder")
    files = files[:limit] if limit is not None else files

    def gen() -> Iterator[BagFrame]:
        for p in files:
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise BagError(f"{p}: cannot decode image")
            yield BagFrame(image=np.ascontiguousarray(bgr[..., ::-1]))

    return gen(), (), len(files)


def video_frames(path: Path, limit: Optional[int] = None) -> tuple:
    """(frames, fps or None, count estimate) of a video file read with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BagError(f"{path}: cannot open video (OpenCV has no decoder for it, or it is not a video)")
    fps = cap.get(cv2.CAP_PROP_FPS)

    def gen() -> Iterator[BagFrame]:
        n = 0
        try:
            while limit is None or n < limit:
                ok, bgr = cap.read()
                if not ok:
                    break
                n += 1
                yield BagFrame(image=np.ascontiguousarray(bgr[..., ::-1]))
        finally:
            cap.release()
        if n == 0:
            raise BagError(f"{path}: video has no frames that OpenCV can decode")

    return gen(), (fps if fps and np.isfinite(fps) and fps > 0 else None)


def make_bag(out: os.PathLike | str, source: str = "synthetic", *, frames: Optional[int] = None,
             rate: Optional[float] = None, width: int = 384, height: int = 256, seed: int = 0,
             night_fraction: float = 0.25, storage: str = "sqlite3", compressed: Optional[str] = None,
             encoding: str = "bgr8", workers: int = 1, start_ns: int = DEFAULT_START_NS) -> dict:
    """Writes a bag from `source` ('synthetic', a dataset or image folder, or a video file).
    `frames` limits the count (synthetic default 100); `rate` defaults to the video's frame rate,
    else 10 Hz."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    out = Path(out)
    if out.exists():
        raise BagError(f"{out}: already exists; choose a new path (bags are never overwritten)")
    classes: Sequence[str] = ()
    if source == "synthetic":
        from mtl_perception.data.synthetic import DETECTION_CLASSES

        n = 100 if frames is None else int(frames)
        if n <= 0:
            raise ValueError(f"frames must be positive, got {n}")
        gen = synthetic_frames(n, width, height, seed, night_fraction, workers)
        classes = DETECTION_CLASSES
    else:
        src = Path(source)
        if not src.exists():
            raise BagError(f"{src}: no such source (use 'synthetic', a dataset or image folder, or a video file)")
        if src.is_dir():
            if (src / "dataset.json").is_file():
                gen, classes, _ = dataset_frames(src, frames)
            else:
                gen, classes, _ = image_folder_frames(src, frames)
        elif src.suffix.lower() in VIDEO_SUFFIXES:
            gen, fps = video_frames(src, frames)
            rate = rate if rate is not None else fps
        else:
            raise BagError(f"{src}: not a folder or a video file ({', '.join(VIDEO_SUFFIXES)})")
    return write_bag(out, gen, rate=rate if rate is not None else 10.0, storage=storage, compressed=compressed,
                     encoding=encoding, detection_classes=classes, start_ns=start_ns)


def add_arguments(p: Any) -> None:
    p.add_argument("out", help="bag folder to create (must not exist)")
    p.add_argument("--from", dest="source", default="synthetic",
                   help="'synthetic' (default), a dataset folder (dataset.json), a folder of images, or a video file")
    p.add_argument("--frames", type=int, help="number of frames (synthetic default 100; others: all)")
    p.add_argument("--rate", type=float, help="frames per second (default: the video's, else 10)")
    p.add_argument("--storage", choices=STORAGES, default="sqlite3", help="rosbag2 storage: sqlite3 (.db3) or mcap")
    p.add_argument("--compressed", choices=COMPRESSIONS,
                   help="write sensor_msgs/CompressedImage on /camera/image_raw/compressed instead of raw images")
    p.add_argument("--encoding", choices=WRITABLE_ENCODINGS, default="bgr8", help="raw image encoding")
    p.add_argument("--width", type=int, default=384, help="synthetic image width")
    p.add_argument("--height", type=int, default=256, help="synthetic image height")
    p.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    p.add_argument("--night-fraction", type=float, default=0.25, help="synthetic night frames")
    p.add_argument("--workers", type=int, default=1, help="processes rendering synthetic frames")


def main(args: Any) -> int:
    summary = make_bag(args.out, args.source, frames=args.frames, rate=args.rate, width=args.width,
                       height=args.height, seed=args.seed, night_fraction=args.night_fraction, storage=args.storage,
                       compressed=args.compressed, encoding=args.encoding, workers=args.workers)
    topics = ", ".join(f"{t} ({c})" for t, c in summary["topics"].items())
    print(f"bag: {summary['path']} ({summary['storage']}, {summary['frames']} frames at {summary['rate_hz']:g} Hz)")
    print(f"topics: {topics}")
    return 0


__all__ = ["BagFrame", "write_bag", "make_bag", "synthetic_frames", "dataset_frames", "image_folder_frames",
           "video_frames", "DEFAULT_START_NS", "FRAME_ID", "add_arguments", "main"]
