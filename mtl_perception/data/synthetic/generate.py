"""Writes a synthetic dataset in the format of :mod:`mtl_perception.data.dataset`, in parallel.

Frame ``i`` of a dataset with seed ``s`` is ``render_frame(s, i, camera, night=is_night(s, i,
night_fraction))``: a pure function of those arguments, so the files are byte-identical whatever
the number of worker processes. Workers render and write the PNG files; the parent collects the
annotations in frame order and writes ``dataset.json`` last (atomically).

Command line::

    python -m mtl_perception.data.synthetic.generate --out DIR --frames N [--seed S]
        [--night-fraction F] [--workers W] [--width 384 --height 256]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from mtl_perception.data.dataset import DEFAULT_DEPTH_SCALE, METADATA_FILE, DatasetWriter, write_frame_files
from mtl_perception.data.synthetic.render import MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS, render_frame
from mtl_perception.data.synthetic.world import DETECTION_CLASSES, MAX_DEPTH, SEMANTIC_CLASSES, Camera

_SUBDIRS = ("images", "semantic", "depth")
_NUMBERED = re.compile(r"^\d{6,}\.png$")


def is_night(seed: int, index: int, night_fraction: float) -> bool:
    """Whether frame ``index`` of the dataset with ``seed`` is a night frame (deterministic; on
    average a ``night_fraction`` of the frames)."""
    if night_fraction <= 0:
        return False
    if night_fraction >= 1:
        return True
    return bool(np.random.default_rng([int(seed), int(index), 2]).random() < night_fraction)


def _digits(n_frames: int) -> int:
    return max(6, len(str(max(0, n_frames - 1))))


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _job(args: tuple) -> tuple[int, dict, list]:
    root, seed, index, night, camera, digits = args
    frame = render_frame(seed, index, camera, night)
    entry, anns = write_frame_files(root, index, frame, DEFAULT_DEPTH_SCALE, digits)
    return index, entry, anns


def _prepare(root: Path) -> None:
    """Makes ``root`` ready: creates it, or reuses a previous dataset there (its dataset.json is
    removed first, so an interrupted run never leaves a dataset that looks complete). Refuses a
    non-empty directory that is not a dataset."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: exists and is not a directory")
    if root.is_dir():
        entries = [p.name for p in root.iterdir()]
        foreign = [n for n in entries if n not in (*_SUBDIRS, METADATA_FILE) and not n.startswith(".dataset.")]
        looks_like_dataset = METADATA_FILE in entries or any(n in _SUBDIRS for n in entries)
        if entries and (foreign or not looks_like_dataset):
            raise FileExistsError(f"{root}: directory is not empty and does not hold a dataset "
                                  f"(found {', '.join(sorted(foreign)[:5]) or 'nothing recognisable'}); "
                                  "choose an empty or new directory")
        meta = root / METADATA_FILE
        if meta.exists():
            meta.unlink()
    for sub in _SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Deletes numbered PNGs left by an earlier, larger dataset in the same directory."""
    for sub in _SUBDIRS:
        for p in (root / sub).iterdir():
            if _NUMBERED.match(p.name) and f"{sub}/{p.name}" not in keep:
                p.unlink()


def generate_dataset(out_dir: str | os.PathLike, n_frames: int, seed: int = 0, night_fraction: float = 0.25,
                     camera: Camera | None = None, workers: int | None = None, progress: bool = True) -> Path:
    """Renders ``n_frames`` frames of the synthetic world ``seed`` into ``out_dir`` (created if
    needed; a previous dataset there is replaced) and returns ``out_dir`` as a Path.

    ``night_fraction`` of the frames (deterministically chosen, see :func:`is_night`) are night
    frames. ``camera`` defaults to ``Camera.default()`` (384x256); each frame's mount height and
    pitch are jittered around it. ``workers`` processes render in parallel (default: the CPU
    count; 1 renders in this process). ``progress`` shows a tqdm bar with frames/s.

    Workers are started with the ``spawn`` method (safe with threads, same on every platform), so
    a script that calls this with ``workers > 1`` must do so under ``if __name__ == "__main__":``.
    """
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= float(night_fraction) <= 1.0:
        raise ValueError(f"night_fraction must be in [0, 1], got {night_fraction}")
    n_frames, seed = int(n_frames), int(seed)
    camera = camera or Camera.default()
    workers = int(workers) if workers else (os.cpu_count() or 1)
    workers = max(1, min(workers, n_frames))
    root = Path(out_dir)
    _prepare(root)
    digits = _digits(n_frames)
    info = {
        "description": "mtl_perception procedural synthetic driving world",
        "generator": "mtl_perception.data.synthetic",
        "seed": seed,
        "n_frames": n_frames,
        "night_fraction": float(night_fraction),
        "camera": {"width": camera.width, "height": camera.height, "fx": camera.fx, "fy": camera.fy,
                   "cx": camera.cx, "cy": camera.cy, "mount_height": camera.mount_height,
                   "pitch_deg": camera.pitch_deg, "pixel_origin": "corner"},
        "depth": "planar z along the optical axis in metres; sky and beyond max_depth invalid",
        "max_depth": MAX_DEPTH,
        "box_rule": {"min_visible_pixels": MIN_VISIBLE_PIXELS, "min_visible_fraction": MIN_VISIBLE_FRACTION},
    }
    writer = DatasetWriter(root, SEMANTIC_CLASSES, DETECTION_CLASSES, DEFAULT_DEPTH_SCALE, info, digits)
    jobs = [(str(root), seed, i, is_night(seed, i, night_fraction), camera, digits) for i in range(n_frames)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_frames, unit="frame", desc=f"generate {root.name}", dynamic_ncols=True)
    keep: set[str] = set()
    try:
        if workers == 1:
            results = map(_job, jobs)
            _collect(results, writer, keep, bar)
        else:
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(8, n_frames // (workers * 8)))
            with ctx.Pool(workers, initializer=_init_worker) as pool:
                _collect(pool.imap(_job, jobs, chunksize=chunk), writer, keep, bar)
    finally:
        if bar is not None:
            bar.close()
    _remove_stale(root, keep)
    writer.close()
    return root


def _collect(results, writer: DatasetWriter, keep: set[str], bar) -> None:
    expected = 0
    for index, entry, anns in results:
        if index != expected:  # imap preserves order; this guards the determinism contract
            raise RuntimeError(f"frame {index} arrived out of order (expected {expected})")
        expected += 1
        writer.add_record(entry, anns)
        keep.update(entry[k] for k in ("file_name", "semantic_file", "depth_file") if k in entry)
        if bar is not None:
            bar.update(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtl_perception.data.synthetic.generate",
        description="Render a procedural synthetic driving dataset (RGB images, semantic ids, planar depth, "
                    "COCO boxes) in the mtl_perception dataset format.",
    )
    parser.add_argument("--out", required=True, help="output directory (created; a previous dataset there is replaced)")
    parser.add_argument("--frames", type=int, required=True, help="number of frames to render")
    parser.add_argument("--seed", type=int, default=0,
                        help="world seed (default 0); frame i is a pure function of (seed, i)")
    parser.add_argument("--night-fraction", type=float, default=0.25,
                        help="fraction of night frames, 0..1 (default 0.25)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--width", type=int, default=384, help="image width in pixels (default 384)")
    parser.add_argument("--height", type=int, default=256, help="image height in pixels (default 256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.width < 16 or args.height < 16:
        parser.error("--width and --height must be at least 16")
    t0 = time.perf_counter()
    try:
        root = generate_dataset(args.out, args.frames, args.seed, args.night_fraction,
                                Camera.default(args.width, args.height), args.workers, not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"wrote {args.frames} frames to {root} in {dt:.1f} s ({args.frames / dt:.1f} frames/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
