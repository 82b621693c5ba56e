"""Array-side post-processing of model outputs, shared by the node, bag tools and reports:
the segmentation palette and overlay, depth validity (NaN outside the model's range) and
detections filtered and mapped back from model-input pixels to the camera image.

Only NumPy and OpenCV: a vehicle image needs nothing else for it.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["PALETTE_BGR", "Detections", "overlay_segmentation", "valid_depth", "select_detections"]


def _palette() -> np.ndarray:
    """256 fixed BGR colours: Cityscapes-like ones first, then well-spread generated ones."""
    base_rgb = [
        (128, 64, 128), (244, 35, 232), (255, 255, 255), (70, 70, 70), (107, 142, 35),
        (70, 130, 180), (153, 153, 153), (220, 220, 0), (0, 0, 142), (220, 20, 60),
        (250, 170, 30), (152, 251, 152), (0, 60, 100), (119, 11, 32), (0, 80, 100),
        (102, 102, 156), (190, 153, 153), (0, 0, 230), (255, 0, 0), (0, 0, 70),
    ]
    colours = np.zeros((256, 3), np.uint8)
    colours[: len(base_rgb)] = np.array(base_rgb, np.uint8)[:, ::-1]
    # Golden-angle hues for the rest, so neighbouring ids differ clearly.
    for i in range(len(base_rgb), 256):
        hue = int((i * 137.508) % 180)
        hsv = np.array([[[hue, 200, 230 if i % 2 else 170]]], np.uint8)
        colours[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    colours.setflags(write=False)
    return colours


PALETTE_BGR: np.ndarray = _palette()
"""Colour of class id i (BGR uint8) in the segmentation overlay."""


def overlay_segmentation(image_bgr: np.ndarray, class_map: np.ndarray, alpha: float,
                         ignore_index: int = 255) -> np.ndarray:
    """The image with each pixel's class colour blended in (`alpha` = colour weight); pixels
    with `ignore_index` keep the image. `class_map` is resized (nearest) to the image if needed."""
    h, w = image_bgr.shape[:2]
    if class_map.shape[:2] != (h, w):
        class_map = cv2.resize(class_map, (w, h), interpolation=cv2.INTER_NEAREST)
    colours = PALETTE_BGR[class_map]
    out = cv2.addWeighted(image_bgr, 1.0 - float(alpha), colours, float(alpha), 0.0)
    if 0 <= ignore_index <= 255:
        unlabelled = class_map == ignore_index
        if unlabelled.any():
            out[unlabelled] = image_bgr[unlabelled]
    return out


def valid_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """float32 depth in metres with NaN wherever it is outside (min_depth, max_depth] (REP 118:
    invalid is NaN). Works in place when `depth` is a writable float32 array."""
    out = depth if depth.dtype == np.float32 and depth.flags.writeable else depth.astype(np.float32)
    with np.errstate(invalid="ignore"):
        invalid = ~((out > min_depth) & (out <= max_depth))
    out[invalid] = np.nan
    return out


class Detections(NamedTuple):
    """Detections in the input image's pixels: boxes [N, 4] x1, y1, x2, y2, scores [N],
    classes [N] (int), sorted by descending score."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def select_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, *,
                      scale_x: float, scale_y: float, threshold: float, max_detections: int,
                      width: int, height: int) -> Detections:
    """Keeps scores >= threshold (finite), best first, at most `max_detections`, and maps boxes
    from model-input pixels to the input image (x * scale_x, y * scale_y, clipped to it)."""
    scores = np.asarray(scores, np.float32).reshape(-1)
    keep = np.flatnonzero(np.isfinite(scores) & (scores >= threshold))
    keep = keep[np.argsort(-scores[keep], kind="stable")][: max(0, int(max_detections))]
    out = np.asarray(boxes, np.float64).reshape(-1, 4)[keep] * np.array([scale_x, scale_y, scale_x, scale_y])
    np.clip(out[:, 0::2], 0.0, float(width), out=out[:, 0::2])
    np.clip(out[:, 1::2], 0.0, float(height), out=out[:, 1::2])
    return Detections(out, scores[keep].astype(np.float64),
                      np.asarray(classes).reshape(-1)[keep].astype(np.int64))
