"""Pixel formats of camera frames (the sensor_msgs/Image encodings) and their conversion to
the HxWx3 uint8 colour image a model takes, on plain arrays: what pre-processing needs, below
the message layer (`mtl_perception.messages.image` adds the messages themselves)."""
from __future__ import annotations

import re
from typing import NamedTuple, Optional

import numpy as np

__all__ = ["ImageConversionError", "EncodingInfo", "encoding_info", "check_array", "array_to_color"]


class ImageConversionError(ValueError):
    """An image message or array cannot be converted; the message names the problem."""


class EncodingInfo(NamedTuple):
    """What one pixel of an encoding is: element type (native byte order), channel count and
    colour order ("rgb", "bgr", "rgba", "bgra", "mono", or None for the generic NxCy types)."""

    dtype: np.dtype
    channels: int
    order: Optional[str]

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


# The colour/mono encodings of sensor_msgs/image_encodings.hpp that this project meets.
_NAMED = {
    "mono8": ("u1", 1, "mono"),
    "mono16": ("u2", 1, "mono"),
    "rgb8": ("u1", 3, "rgb"),
    "bgr8": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgba"),
    "bgra8": ("u1", 4, "bgra"),
    "rgb16": ("u2", 3, "rgb"),
    "bgr16": ("u2", 3, "bgr"),
    "rgba16": ("u2", 4, "rgba"),
    "bgra16": ("u2", 4, "bgra"),
}
# The generic OpenCV-style encodings: 8UC1, 16UC1, 32FC1, 64FC3, ...
_GENERIC = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")
_GENERIC_DTYPES = {"8U": "u1", "8S": "i1", "16U": "u2", "16S": "i2", "32S": "i4", "32F": "f4",
                   "64F": "f8"}


def encoding_info(encoding: str) -> EncodingInfo:
    """Pixel layout of a sensor_msgs/Image encoding; ImageConversionError if unsupported."""
    named = _NAMED.get(encoding)
    if named is not None:
        return EncodingInfo(np.dtype(named[0]), named[1], named[2])
    m = _GENERIC.match(encoding) if isinstance(encoding, str) else None
    if m is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r} (supported: {', '.join(_NAMED)}, "
            "and 8U/8S/16U/16S/32S/32F/64F with C1..C4, e.g. 16UC1, 32FC1)")
    return EncodingInfo(np.dtype(_GENERIC_DTYPES[m.group(1)]), int(m.group(2)), None)


def check_array(arr: np.ndarray, info: EncodingInfo, encoding: str) -> None:
    channels_ok = (arr.ndim == 2 and info.channels == 1) or (
        arr.ndim == 3 and arr.shape[2] == info.channels)
    dtype_ok = arr.dtype.kind == info.dtype.kind and arr.dtype.itemsize == info.dtype.itemsize
    if not (channels_ok and dtype_ok):
        want = "HxW" if info.channels == 1 else f"HxWx{info.channels}"
        raise ImageConversionError(
            f"array of shape {arr.shape} and dtype {arr.dtype} does not fit encoding "
            f"{encoding} ({want} {info.dtype.name})")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageConversionError(f"zero-size image: array shape {arr.shape}")


def array_to_color(arr: np.ndarray, encoding: str, order: str = "rgb") -> np.ndarray:
    """An HxWx3 uint8 C-contiguous image in `order` ("rgb" or "bgr") from an array in `encoding`.

    Alpha is dropped, mono is replicated to three channels and 16-bit data is scaled to 8 bits
    (x * 255 / 65535, rounded), as cv_bridge does. An image already in the requested order and
    without row padding is returned without a copy.
    """
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', not {order!r}")
    arr = np.asarray(arr)
    info = encoding_info(encoding)
    check_array(arr, info, encoding)
    if info.order is None:
        raise ImageConversionError(
            f"encoding {encoding} has no colour order: cannot convert it to {order}")
    if info.dtype.itemsize == 2:
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    # OpenCV's SIMD conversions: about 10x faster than NumPy plane copies, and they read strided
    # rows. Imported here so that the message layer stays importable without OpenCV.
    import cv2

    if info.order == "mono":
        return cv2.cvtColor(arr if arr.ndim == 2 else arr[..., 0], cv2.COLOR_GRAY2BGR)
    if info.order[:3] == order:
        return np.ascontiguousarray(arr[..., :3])
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
