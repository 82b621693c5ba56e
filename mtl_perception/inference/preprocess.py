"""Resizing between camera/dataset images and the model's fixed input: one implementation
for training, evaluation and the node (OpenCV, no torch)."""
from __future__ import annotations

from typing import Dict, Tuple

import cv2
import numpy as np


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bicubic when enlarging; size = (w, h)."""
    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    interp = cv2.INTER_AREA if w >= size[0] and h >= size[1] else cv2.INTER_CUBIC
    return cv2.resize(image, tuple(size), interpolation=interp)


def resize_sample(sample, input_size: Tuple[int, int], sr_scale: int) -> Dict[str, np.ndarray]:
    """A dataset sample at the network's sizes.

    The super-resolution target is the image at input_size * sr_scale; the network input is that
    target downscaled by sr_scale (area); labels are resampled nearest-neighbour to input_size
    and boxes scaled to input pixels.
    """
    width, height = input_size
    src_h, src_w = sample.image.shape[:2]
    hr = resize_image(sample.image, (width * sr_scale, height * sr_scale))
    image = resize_image(hr, (width, height))
    semantic = cv2.resize(sample.semantic, (width, height), interpolation=cv2.INTER_NEAREST)
    depth = cv2.resize(sample.depth, (width, height), interpolation=cv2.INTER_NEAREST)
    scale = np.array([width / src_w, height / src_h, width / src_w, height / src_h], np.float32)
    return {
        "image": image, "hr_image": hr, "semantic": semantic, "depth": depth,
        "boxes": sample.boxes.astype(np.float32).reshape(-1, 4) * scale,
        "labels": sample.labels.astype(np.int64).reshape(-1),
    }
