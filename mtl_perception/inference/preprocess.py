"""Resizing between camera/dataset images and the model's fixed input: one implementation
for training, evaluation, bag tools, the benchmark and the node (OpenCV, no torch).

`model_input(frame, encoding, size, color_order, resize)` is the one "camera frame -> model
input" step; it returns the input together with the `FrameMapping` that takes model-input
pixels back to camera pixels (and camera labels to the model's resolution). The resize modes
(`contract.RESIZE_MODES`: stretch, letterbox, crop) are defined once, by the two rectangles of
`FrameMapping.windows`; every consumer maps through it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from mtl_perception.contract import IGNORE_ID, RESIZE_MODES
from mtl_perception.inference.pixels import array_to_color, color_encoding_info

__all__ = ["PAD_VALUE", "resize_image", "resize_sample", "FrameMapping", "ModelInput", "model_input"]

#: Letterbox padding, per 8-bit channel (16-bit frames: PAD_VALUE * 257, the same grey after
#: conversion): mid grey, close to the ImageNet mean, so the padded border normalises to about 0.
PAD_VALUE = 114

Window = Tuple[int, int, int, int]  # x, y, width, height in pixels


#: The longest repeating weight pattern (output pixels per period) `_area_shrink` takes; beyond it
#: the dense period products cost more than OpenCV's own area path.
_MAX_AREA_PERIOD = 16


@lru_cache(maxsize=64)
def _area_period(source: int, target: int, channels: int) -> Optional[np.ndarray]:
    """The weights of one period of an area shrink of an axis from `source` to `target` pixels,
    interleaved `channels` times: [p * channels, q * channels] with p / q = source / target in
    lowest terms, entry (i, j) the fraction of source pixel i inside target pixel j (columns
    summing to 1); None when q is over `_MAX_AREA_PERIOD`."""
    common = math.gcd(source, target)
    p, q = source // common, target // common
    if q > _MAX_AREA_PERIOD:
        return None
    i, j = np.arange(p)[:, None], np.arange(q)[None, :]
    overlap = np.clip(np.minimum((i + 1) * q, (j + 1) * p) - np.maximum(i * q, j * p), 0, None)
    return np.kron(overlap / p, np.eye(channels)).astype(np.float32)


def _area_shrink(image: np.ndarray, size: Tuple[int, int]) -> Optional[np.ndarray]:
    """The exact area mean (rounded once), as two matrix products over the repeating period of
    each axis; None where a period is too long or the dtype is not 8 or 16 bits (OpenCV then).
    OpenCV's area path for a non-integer ratio costs about twice as much (1.3 against 0.6 ms
    from 640x480 to 192x128 here)."""
    if image.dtype not in (np.uint8, np.uint16):
        return None
    (h, w), channels = image.shape[:2], (image.shape[2] if image.ndim == 3 else 1)
    rows, cols = _area_period(h, size[1], 1), _area_period(w, size[0], channels)
    if rows is None or cols is None:
        return None
    x = image.astype(np.float32).reshape(h // rows.shape[0], rows.shape[0], w * channels)
    x = np.matmul(rows.T, x)  # rows: [periods, output rows per period, w * channels]
    x = x.reshape(-1, cols.shape[0]) @ cols  # columns, one period of pixels x channels per row
    out = x.reshape((size[1], size[0]) + image.shape[2:])
    if image.dtype == np.uint8:
        return cv2.convertScaleAbs(out)  # rounds and saturates (the values are >= 0)
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bicubic when enlarging; size = (w, h).

    OpenCV's area path costs in proportion to the source pixels and is slow for non-integer
    ratios, so a large shrink first halves the frame with exact 2x2 box means (OpenCV's fast
    integer path) while it stays at least 4x the target in both directions, then takes one area
    step of ratio 2-4 on the far smaller image: still a box filter (its footprint at most half
    a halved pixel wider), at about a fifth of the cost at 1920x1080 -> 192x128. That step is
    the exact area mean by period products (`_area_shrink`) where both axes repeat within a
    short period (640x480 and, after its halving, 1280x720 to 192x128), else OpenCV's. Training,
    evaluation and the node all resize here, so they see the same pixels."""
    h, w = image.shape[:2]
    target_w, target_h = int(size[0]), int(size[1])
    if (w, h) == (target_w, target_h):
        return image
    if w < target_w or h < target_h:
        return cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_CUBIC)
    while w >= 4 * target_w and h >= 4 * target_h:
        image = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    if (w, h) == (target_w, target_h):
        return image
    exact = _area_shrink(image, (target_w, target_h))
    if exact is not None:
        return exact
    return cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_AREA)


def _round(value: float) -> int:
    return int(math.floor(value + 0.5))


def _nearest(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    return cv2.resize(np.ascontiguousarray(array), tuple(size), interpolation=cv2.INTER_NEAREST)


def _clip_boxes(boxes: np.ndarray, window: Window) -> np.ndarray:
    """xyxy boxes clipped, in place, to `window` (x, y, w, h)."""
    x, y, w, h = window
    np.clip(boxes[:, 0::2], x, x + w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], y, y + h, out=boxes[:, 1::2])
    return boxes


def _place(content: np.ndarray, window: Window, size: Tuple[int, int], fill) -> np.ndarray:
    """`content` at `window` of an array of `size` (w, h) filled with `fill` elsewhere."""
    x, y, w, h = window
    if (x, y, w, h) == (0, 0, *size):
        return content
    out = np.full((size[1], size[0]) + content.shape[2:], fill, content.dtype)
    out[y:y + h, x:x + w] = content
    return out


@dataclass(frozen=True)
class FrameMapping:
    """How the model input was made from the camera frame (`mode`, see `contract.RESIZE_MODES`),
    so outputs can be mapped back: boxes and dense maps to camera pixels, camera labels and
    boxes to model pixels. `factor` > 1 is the same geometry for an output `factor` times the
    model input's size (the SR image); `model_size` stays the input's.

    Model pixel = camera pixel * scale + offset (pixel-edge coordinates, per axis), exact for
    the arrays `image_to_model` makes."""

    camera_size: Tuple[int, int]  # (w, h)
    model_size: Tuple[int, int]  # (w, h)
    mode: str = "stretch"
    factor: int = 1

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.mode!r}")

    @cached_property
    def windows(self) -> Tuple[Window, Window]:
        """(camera window, model window): the camera pixels the model sees, and where they are
        in the model input (at factor 1). Everything else here follows from these two."""
        (wc, hc), (wm, hm) = self.camera_size, self.model_size
        camera, model = (0, 0, wc, hc), (0, 0, wm, hm)
        if self.mode == "letterbox":
            s = min(wm / wc, hm / hc)
            w, h = min(wm, max(1, _round(wc * s))), min(hm, max(1, _round(hc * s)))
            model = ((wm - w) // 2, (hm - h) // 2, w, h)
        elif self.mode == "crop":
            s = max(wm / wc, hm / hc)
            w, h = min(wc, max(1, _round(wm / s))), min(hc, max(1, _round(hm / s)))
            camera = ((wc - w) // 2, (hc - h) // 2, w, h)
        return camera, model

    @property
    def camera_window(self) -> Window:
        """The camera pixels the model sees (x, y, w, h): the whole frame but for crop."""
        return self.windows[0]

    @property
    def valid_region(self) -> Window:
        """The output pixels (x, y, w, h, at `factor`) that show the image: all but letterbox padding."""
        x, y, w, h = self.windows[1]
        f = self.factor
        return x * f, y * f, w * f, h * f

    @property
    def size(self) -> Tuple[int, int]:
        """(w, h) of the model-side array: the model input times `factor`."""
        return self.model_size[0] * self.factor, self.model_size[1] * self.factor

    @property
    def scale(self) -> Tuple[float, float]:
        """Model-side pixels per camera pixel (x, y)."""
        cam, valid = self.camera_window, self.valid_region
        return valid[2] / cam[2], valid[3] / cam[3]

    @property
    def offset(self) -> Tuple[float, float]:
        """Where the camera's origin lands in model-side pixels (x, y)."""
        cam, valid = self.camera_window, self.valid_region
        sx, sy = self.scale
        return valid[0] - cam[0] * sx, valid[1] - cam[1] * sy

    def at_camera(self) -> "FrameMapping":
        """The identity: for outputs brought back to the camera's size (their intrinsics are the camera's)."""
        return FrameMapping(self.camera_size, self.camera_size)

    def scaled(self, factor: int) -> "FrameMapping":
        """The same geometry for an output `factor` times larger (the SR image)."""
        return replace(self, factor=self.factor * int(factor))

    # ------------------------------------------------------------------------------- boxes
    def boxes_to_camera(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy model pixels -> camera pixels (float64), clipped to the camera pixels the model saw."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        out = (np.asarray(boxes, np.float64).reshape(-1, 4) - [ox, oy, ox, oy]) / [sx, sy, sx, sy]
        return _clip_boxes(out, self.camera_window)

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy camera pixels -> model pixels (float32), clipped to the region that shows the image."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        out = np.asarray(boxes, np.float64).reshape(-1, 4) * [sx, sy, sx, sy] + [ox, oy, ox, oy]
        return _clip_boxes(out, self.valid_region).astype(np.float32)

    def labelled_boxes_to_model(self, boxes: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Ground-truth boxes and their labels at the model: `boxes_to_model`, less the boxes
        that had an area and have none left (outside the crop)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = self.boxes_to_model(boxes)
        had = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        has = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
        keep = has | ~had
        return out[keep], np.asarray(labels).reshape(-1)[keep]

    # ------------------------------------------------------------------------------ arrays
    def image_to_model(self, image: np.ndarray, pad=PAD_VALUE) -> np.ndarray:
        """The camera image as the model-side array: its window cut out, resized (area when
        shrinking, bicubic when enlarging), placed in the valid region, `pad` around it."""
        x, y, w, h = self.camera_window
        valid = self.valid_region
        content = resize_image(image[y:y + h, x:x + w], valid[2:])
        return _place(content, valid, self.size, pad)

    def dense_to_camera(self, array: np.ndarray, fill=0) -> np.ndarray:
        """A per-pixel output (class ids, depth) at the camera size, nearest-neighbour; camera
        pixels the model did not see (outside the crop) get `fill` (the caller's invalid value)."""
        x, y, w, h = self.valid_region
        content = _nearest(array[y:y + h, x:x + w], self.camera_window[2:])
        return _place(content, self.camera_window, self.camera_size, fill)

    def dense_to_model(self, array: np.ndarray, fill=0) -> np.ndarray:
        """A per-pixel camera label (class ids, depth) at the model side, nearest-neighbour;
        letterbox padding gets `fill` (ignore id, invalid depth) so losses and metrics skip it."""
        x, y, w, h = self.camera_window
        valid = self.valid_region
        content = _nearest(np.asarray(array)[y:y + h, x:x + w], valid[2:])
        return _place(content, valid, self.size, fill)

    def output_to_model(self, array: np.ndarray, fill=0) -> np.ndarray:
        """A dense output read back from its message (the node's `output_resolution`): at the
        model side's size as is, at the camera's size through `dense_to_model` (stretch: any
        size, resized nearest-neighbour)."""
        if (array.shape[1], array.shape[0]) == self.size:
            return array
        if self.mode == "stretch":
            return _nearest(array, self.size)
        if (array.shape[1], array.shape[0]) != tuple(self.camera_size):
            raise ValueError(f"a {array.shape[1]}x{array.shape[0]} output is neither at the model's size "
                             f"{self.size[0]}x{self.size[1]} nor at the camera's {self.camera_size[0]}x"
                             f"{self.camera_size[1]}")
        return self.dense_to_model(array, fill)

    def mask_padding(self, array: np.ndarray, fill) -> np.ndarray:
        """A model-side output with the letterbox padding set to `fill` (a copy; as is without padding)."""
        x, y, w, h = self.valid_region
        if (x, y, w, h) == (0, 0, *self.size):
            return array
        return _place(np.ascontiguousarray(array[y:y + h, x:x + w]), (x, y, w, h), self.size, fill)


@dataclass(frozen=True)
class ModelInput:
    """A camera frame prepared for the model.

    `image` is the model's input (HxWx3 uint8 in its colour order); `resized` the frame at the
    model size in the camera's own `encoding` (what overlays at model resolution are drawn on);
    `camera` the frame itself; `mapping` the way back to camera pixels."""

    image: np.ndarray
    resized: np.ndarray
    camera: np.ndarray
    encoding: str
    mapping: FrameMapping

    def camera_color(self, order: str = "bgr") -> np.ndarray:
        return array_to_color(self.camera, self.encoding, order)

    def resized_color(self, order: str = "bgr") -> np.ndarray:
        return array_to_color(self.resized, self.encoding, order)


def _pad_value(dtype: np.dtype):
    """PAD_VALUE in the frame's own element type (the same grey once converted to 8 bits)."""
    return PAD_VALUE * 257 if np.dtype(dtype).itemsize == 2 and np.dtype(dtype).kind == "u" else PAD_VALUE


def model_input(frame: np.ndarray, encoding: str, size: Tuple[int, int], color_order: str,
                resize: str = "stretch") -> ModelInput:
    """The camera frame (an array in `encoding`, e.g. a view of a sensor_msgs/Image) as the
    model's input of `size` = (w, h) in `color_order`, by the model's `resize` mode: resized
    first (area when shrinking, bicubic when enlarging), then converted, as every runtime
    consumer does. A Bayer or 4:2:2 YUV frame is converted first (its pixels need their
    neighbours), so `camera` and `resized` are then in `color_order`."""
    if color_encoding_info(encoding).needs_neighbours:
        frame, encoding = array_to_color(frame, encoding, color_order), f"{color_order}8"
    height, width = frame.shape[:2]
    mapping = FrameMapping((width, height), (int(size[0]), int(size[1])), resize)
    resized = mapping.image_to_model(frame, _pad_value(frame.dtype))
    image = array_to_color(resized, encoding, color_order)
    return ModelInput(image, resized, frame, encoding, mapping)


def resize_sample(sample, input_size: Tuple[int, int], sr_scale: int, resize: str = "stretch"
                  ) -> Dict[str, np.ndarray]:
    """A dataset sample (RGB image) at the network's sizes, by the same geometry as `model_input`.

    The network input is exactly what `model_input` feeds the model for this image; the
    super-resolution target is the image by the same geometry at input_size * sr_scale; labels
    are resampled nearest-neighbour (letterbox padding: ignore id, NaN depth), boxes mapped to
    input pixels (those left outside a crop dropped).
    """
    src_h, src_w = sample.image.shape[:2]
    mapping = FrameMapping((src_w, src_h), (int(input_size[0]), int(input_size[1])), resize)
    boxes, labels = mapping.labelled_boxes_to_model(sample.boxes.astype(np.float32), sample.labels.astype(np.int64))
    return {
        "image": mapping.image_to_model(sample.image),
        "hr_image": mapping.scaled(sr_scale).image_to_model(sample.image),
        "semantic": mapping.dense_to_model(sample.semantic, IGNORE_ID),
        "depth": mapping.dense_to_model(sample.depth, np.nan),
        "boxes": boxes, "labels": labels.astype(np.int64),
    }
