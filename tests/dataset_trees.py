"""Small fixture trees in public datasets' exact layouts, file names and encodings, written by
hand (not by the readers): shared by the reader tests, `check-data --format` and the "Your own
data" walk-through test. Label values are documented beside each write so tests can compute the
expected labels by hand."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

H, W = 24, 40


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def photo(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A random RGB image (PNG is lossless, so the reader must return exactly this)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    return png(path, np.ascontiguousarray(rgb[..., ::-1]))


CITY_RGB = photo(1)
CITY_PREFIX = "aachen_000000_000019"
CITY_CAMERA = {"extrinsic": {"baseline": 0.2, "pitch": 0.038, "roll": 0.0, "x": 1.7, "y": 0.1, "yaw": -0.02,
                             "z": 1.3},
               "intrinsic": {"fx": 2000.0, "fy": 2010.0, "u0": 20.5, "v0": 12.25}}


def write_cityscapes(root: Path, split: str = "val") -> Path:
    """Two frames of ``split``: aachen (image, labelIds, instanceIds, disparity, camera) and
    bochum (image and labelIds only: all sidewalk)."""
    prefix = CITY_PREFIX
    write_rgb(root / f"leftImg8bit/{split}/aachen" / f"{prefix}_leftImg8bit.png", CITY_RGB)
    ids = np.full((H, W), 7, np.uint8)       # road
    ids[:2] = 23                             # sky
    ids[10:14, 4:12] = 26                    # car, instance 26000
    ids[15:20, 20:26] = 26                   # car, instance 26001
    ids[2:9, 30:33] = 24                     # person, instance 24000
    ids[20:23, 0:6] = 26                     # a crowd of cars (instance id 26)
    ids[0:2, 0:4] = 29                       # caravan 29000: no train id, no box
    ids[22:24, 36:40] = 0                    # unlabeled
    png(root / f"gtFine/{split}/aachen" / f"{prefix}_gtFine_labelIds.png", ids)
    inst = ids.astype(np.uint16)
    inst[10:14, 4:12] = 26000
    inst[15:20, 20:26] = 26001
    inst[2:9, 30:33] = 24000
    inst[0:2, 0:4] = 29000
    png(root / f"gtFine/{split}/aachen" / f"{prefix}_gtFine_instanceIds.png", inst)
    disp = np.full((H, W), 257, np.uint16)   # d = 1 px
    disp[5, 7] = 2561                        # d = (2561 - 1) / 256 = 10 px
    disp[0, 0] = 0                           # invalid
    disp[0, 1] = 1                           # d = 0: infinitely far, invalid
    png(root / f"disparity/{split}/aachen" / f"{prefix}_disparity.png", disp)
    (root / f"camera/{split}/aachen").mkdir(parents=True, exist_ok=True)
    (root / f"camera/{split}/aachen" / f"{prefix}_camera.json").write_text(json.dumps(CITY_CAMERA))
    other = "bochum_000000_000313"           # image and labelIds only
    write_rgb(root / f"leftImg8bit/{split}/bochum" / f"{other}_leftImg8bit.png", photo(2))
    png(root / f"gtFine/{split}/bochum" / f"{other}_gtFine_labelIds.png", np.full((H, W), 8, np.uint8))
    return root


def write_bdd100k(root: Path, split: str = "val") -> Path:
    """Two detection frames (a car, a traffic light and an "other vehicle" without a class; a
    night frame with no objects) and one segmentation frame (sky over road, rest ignored)."""
    write_rgb(root / f"images/100k/{split}/b1c66a42-6f7d68ca.jpg", photo(8))
    write_rgb(root / f"images/100k/{split}/b1c81faa-3df17267.jpg", photo(9))
    det = [
        {"name": "b1c66a42-6f7d68ca.jpg", "attributes": {"weather": "overcast", "timeofday": "daytime"},
         "timestamp": 10000,
         "labels": [
             {"id": "0", "category": "car", "attributes": {"occluded": False},
              "box2d": {"x1": 1.5, "y1": 2.25, "x2": 11.0, "y2": 9.75}},
             {"id": "1", "category": "traffic light", "box2d": {"x1": 30, "y1": 0, "x2": 33, "y2": 6}},
             {"id": "2", "category": "other vehicle", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}},
         ]},
        {"name": "b1c81faa-3df17267.jpg", "attributes": {"timeofday": "night"}, "timestamp": 10000},
    ]
    (root / "labels/det_20").mkdir(parents=True, exist_ok=True)
    (root / f"labels/det_20/det_{split}.json").write_text(json.dumps(det))
    write_rgb(root / f"images/10k/{split}/7d2f7975-e0c1c5a7.jpg", photo(10))
    mask = np.full((H, W), 255, np.uint8)
    mask[12:] = 0
    mask[:12, :20] = 10
    png(root / f"labels/sem_seg/masks/{split}/7d2f7975-e0c1c5a7.png", mask)
    return root


def write_image_folder(root: Path, count: int = 3, seed: int = 20) -> Path:
    """``count`` unlabelled photos (PNG) for super-resolution."""
    for i in range(count):
        write_rgb(root / f"photo_{i:02d}.png", photo(seed + i))
    return root
