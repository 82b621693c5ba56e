"""Array-side post-processing of model outputs, shared by the node, bag tools and reports:
the segmentation palette and overlay, depth validity (NaN outside the model's range),
detections filtered and mapped back from model-input pixels to the camera image, and those
detections drawn on the image (the node's `detections/image`).

Only NumPy and OpenCV: a vehicle image needs nothing else for it.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import cv2
import numpy as np

from mtl_perception.inference.preprocess import FrameMapping

__all__ = ["PALETTE_BGR", "Detections", "overlay_segmentation", "valid_depth", "select_detections",
           "draw_detections"]


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
    colours = np.take(PALETTE_BGR, class_map, axis=0)  # 4x faster than fancy indexing
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
                      mapping: FrameMapping, threshold: float, max_detections: int) -> Detections:
    """Keeps scores >= threshold (finite), best first, at most `max_detections`, and maps boxes
    from model-input pixels to the camera image through `mapping` (clipped to what the model saw)."""
    scores = np.asarray(scores, np.float32).reshape(-1)
    keep = np.flatnonzero(np.isfinite(scores) & (scores >= threshold))
    keep = keep[np.argsort(-scores[keep], kind="stable")][: max(0, int(max_detections))]
    out = mapping.boxes_to_camera(np.asarray(boxes, np.float64).reshape(-1, 4)[keep])
    return Detections(out, scores[keep].astype(np.float64),
                      np.asarray(classes).reshape(-1)[keep].astype(np.int64))


def _box_pixels(box: Sequence[float], width: int, height: int) -> Tuple[int, int, int, int]:
    """The first and last pixel columns/rows covered by an xyxy box (x2, y2 exclusive), inside the image."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
    x2, y2 = min(max(x2 - 1, x1), width - 1), min(max(y2 - 1, y1), height - 1)
    return x1, y1, x2, y2


def _draw_label(out: np.ndarray, text: str, x1: int, y1: int, colour: Tuple[int, int, int], scale: float) -> None:
    """`text` on a filled band of the box colour just above the box (inside it at the image top)."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = th + base + 2
    top = y1 - band if y1 - band >= 0 else y1
    cv2.rectangle(out, (x1, top), (min(x1 + tw + 2, out.shape[1] - 1), top + band - 1), colour, cv2.FILLED)
    ink = (0, 0, 0) if sum(colour) > 3 * 128 else (255, 255, 255)
    cv2.putText(out, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)


def draw_detections(image_bgr: np.ndarray, detections: Detections, class_names: Sequence[str],
                    thickness: int = 2) -> np.ndarray:
    """A copy of the BGR image with each box outlined (`thickness` pixels, inside the box) in
    its class's palette colour and labelled "name score" above it; boxes in image pixels."""
    out = np.array(image_bgr, np.uint8, copy=True, order="C")
    height, width = out.shape[:2]
    names = list(class_names)
    scale = max(0.35, min(width, height) / 900.0)
    t = max(1, int(thickness))
    for box, score, cls in zip(detections.boxes, detections.scores, detections.classes):
        cls = int(cls)
        colour = tuple(int(c) for c in PALETTE_BGR[cls % 256])
        x1, y1, x2, y2 = _box_pixels(box, width, height)
        out[y1:min(y1 + t, y2 + 1), x1:x2 + 1] = colour
        out[max(y2 - t + 1, y1):y2 + 1, x1:x2 + 1] = colour
        out[y1:y2 + 1, x1:min(x1 + t, x2 + 1)] = colour
        out[y1:y2 + 1, max(x2 - t + 1, x1):x2 + 1] = colour
        name = names[cls] if 0 <= cls < len(names) else str(cls)
        _draw_label(out, f"{name} {float(score):.2f}", x1, y1, colour, scale)
    return out
