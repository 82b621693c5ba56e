"""sensor_msgs/Image <-> NumPy without cv_bridge, and CameraInfo scaling.

cv_bridge is not needed on the vehicle and breaks on NumPy 2; this module needs only NumPy.
It imports neither rclpy nor torch, and works on anything shaped like a sensor_msgs/Image
(rclpy messages, whose `data` is an `array.array('B')`; rosbags messages, whose `data` is a
uint8 ndarray; bytes or memoryviews).

- `image_to_array(msg)` returns a view of the message's bytes (no copy) shaped HxW for one
  channel and HxWxC otherwise ((H*3/2)xW for 4:2:0 YUV: the luma rows, then the chroma plane),
  honouring row padding (`step`); 16/32/64-bit data whose byte
  order (`is_bigendian`) is not the machine's is returned as a native-order copy.
- `to_color(msg_or_array, encoding, order)` gives the HxWx3 uint8 image a model wants, in "rgb"
  or "bgr" order (`to_model_rgb` is the "rgb" case).
- `array_to_image(array, encoding, header)` builds a sensor_msgs/Image (little-endian, no row
  padding).
- `scale_camera_info(info, sx, sy)` scales intrinsics the way image_proc's resize node does.

Every malformed input raises `ImageConversionError` (a `ValueError`) with a one-line message.
"""
from __future__ import annotations

import array
import copy
from typing import Any, Optional, Tuple

import numpy as np

from mtl_perception.inference.pixels import (
    EncodingInfo,
    ImageConversionError,
    array_to_color,
    check_array,
    check_size,
    color_encoding_info,
    encoding_info,
)

__all__ = [
    "ImageConversionError",
    "EncodingInfo",
    "encoding_info",
    "color_encoding_info",
    "image_to_array",
    "to_color",
    "to_model_rgb",
    "array_to_image",
    "scale_camera_info",
]


def _byte_buffer(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's `data` (a copy only for plain Python sequences)."""
    if isinstance(data, np.ndarray):
        flat = data.reshape(-1) if data.flags.c_contiguous else np.ascontiguousarray(data).ravel()
        return flat.view(np.uint8)
    try:
        view = memoryview(data)
    except TypeError:  # a list of ints
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    if view.nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    return np.frombuffer(view.cast("B") if view.format != "B" else view, dtype=np.uint8)


def image_to_array(msg: Any) -> np.ndarray:
    """The pixels of a sensor_msgs/Image as an HxW (one channel) or HxWxC array ((H*3/2)xW for
    4:2:0 YUV, `EncodingInfo.data_rows`).

    The result is a view of `msg.data` whenever the data's byte order is the machine's (always
    for 8-bit encodings); it keeps `msg.data` alive and writes through to it. Rows are read
    `step` bytes apart, so padding at the end of each row is skipped, not copied.
    """
    encoding = msg.encoding
    info = encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_size(info, height, width, encoding)
    bpp = info.bytes_per_pixel
    if step < width * bpp:
        raise ImageConversionError(
            f"step {step} is smaller than width*bytes_per_pixel = {width}*{bpp} = "
            f"{width * bpp} (encoding {encoding})")
    buf = _byte_buffer(msg.data)
    rows = info.data_rows(height)
    if buf.size < rows * step:
        what = "height*step" if rows == height else "height*3/2*step"
        raise ImageConversionError(
            f"image data has {buf.size} bytes, fewer than {what} = {rows}*{step} = {rows * step}")
    dtype = info.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    if info.channels == 1:
        shape, strides = (rows, width), (step, bpp)
    else:
        shape, strides = (height, width, info.channels), (step, bpp, info.dtype.itemsize)
    out = np.ndarray(shape, dtype=dtype, buffer=buf, offset=0, strides=strides)
    if not out.dtype.isnative:
        out = out.astype(out.dtype.newbyteorder("="))
    return out


def _is_image_message(obj: Any) -> bool:
    return hasattr(obj, "encoding") and hasattr(obj, "data") and hasattr(obj, "step")


def to_color(image: Any, encoding: Optional[str] = None, order: str = "rgb") -> np.ndarray:
    """An HxWx3 uint8 C-contiguous image in `order` ("rgb" or "bgr").

    `image` is a sensor_msgs/Image (its own encoding is used unless `encoding` names another of
    the same layout, e.g. "bgr8" for an "8UC3" message) or an array in `encoding`; the
    conversion is `inference.pixels.array_to_color`'s (alpha dropped, mono replicated, 16-bit
    scaled to 8 bits as cv_bridge does, no copy when nothing changes).
    """
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', not {order!r}")
    if _is_image_message(image):
        arr = image_to_array(image)
        encoding = image.encoding if encoding is None else encoding
    else:
        if encoding is None:
            raise ImageConversionError("an array needs its encoding (e.g. 'bgr8')")
        arr = image
    return array_to_color(arr, encoding, order)


def to_model_rgb(image: Any, encoding: Optional[str] = None) -> np.ndarray:
    """`to_color(image, encoding, "rgb")`: the HxWx3 uint8 RGB image a model takes."""
    return to_color(image, encoding, "rgb")


def array_to_image(array_: Any, encoding: str, header: Any = None, msg_cls: Any = None) -> Any:
    """A sensor_msgs/Image holding a copy of `array_` (HxW or HxWxC, (H*3/2)xW for 4:2:0 YUV)
    in `encoding`.

    The message is little-endian (`is_bigendian` 0) with rows packed (`step` = width * bytes
    per pixel). `msg_cls` defaults to rclpy's sensor_msgs.msg.Image; a class whose constructor
    needs every field (rosbags' message dataclasses) gets them as keywords, `header` included,
    with `data` as a uint8 ndarray.
    """
    info = encoding_info(encoding)
    arr = np.asarray(array_)
    check_array(arr, info, encoding)
    height, width = (int(n) for n in info.frame_size(arr.shape))
    packed = np.ascontiguousarray(arr, dtype=info.dtype.newbyteorder("<"))
    raw = packed.reshape(-1).view(np.uint8)
    fields = dict(height=height, width=width, encoding=encoding, is_bigendian=0,
                  step=width * info.bytes_per_pixel)
    if msg_cls is None:
        from sensor_msgs.msg import Image as msg_cls  # the distro's (or dev wheels') messages
    try:
        msg = msg_cls()
    except TypeError:
        if header is None:
            raise
        return msg_cls(header=header, data=raw.copy(), **fields)
    if header is not None:
        msg.header = header
    for name, value in fields.items():
        setattr(msg, name, value)
    current = getattr(msg, "data", None)
    if isinstance(current, np.ndarray):
        msg.data = raw.copy()
    elif isinstance(current, (bytes, bytearray)):
        msg.data = raw.tobytes()
    else:  # rclpy: array.array('B') is taken as is, without a per-element check
        data = array.array("B")
        data.frombytes(raw)
        msg.data = data
    return msg


def scale_camera_info(info: Any, scale_x: float, scale_y: float, *,
                      width: Optional[int] = None, height: Optional[int] = None,
                      offset_x: float = 0.0, offset_y: float = 0.0) -> Any:
    """A copy of a sensor_msgs/CameraInfo for the image resized by (scale_x, scale_y) and then
    shifted by (offset_x, offset_y) pixels (letterbox padding, a crop: u' = u * scale_x + offset_x).

    Same convention as image_proc's resize node: fx, cx (K[0], K[2]) and P[0], P[2], P[3] (Tx)
    are multiplied by scale_x; fy, cy (K[4], K[5]) and P[5], P[6] by scale_y; width, height and
    the ROI are scaled and truncated to integers, a set ROI also shifted by the offset and clipped
    to the image. D, R, binning and P[7] are unchanged. The
    principal point is scaled without a half-pixel shift, as there, then moved by the offset
    (K[2], P[2] by offset_x; K[5], P[6] by offset_y). `width`/`height`, when given, replace
    int(width * scale_x) / int(height * scale_y) (the node's explicit-size mode).
    """
    if not (scale_x > 0 and scale_y > 0):
        raise ValueError(f"scale factors must be positive, got ({scale_x}, {scale_y})")
    out = copy.copy(info)  # shallow (a deep copy costs ~10x more per frame): K, P and the ROI are replaced below
    out.roi = copy.copy(info.roi)
    out.width = int(width) if width is not None else int(info.width * scale_x)
    out.height = int(height) if height is not None else int(info.height * scale_y)

    out.k = scale_intrinsics(info.k, scale_x, scale_y, offset_x, offset_y)
    p = np.array(info.p, dtype=np.float64).reshape(-1)
    p[[0, 2, 3]] *= scale_x
    p[[5, 6]] *= scale_y
    p[2] += offset_x
    p[6] += offset_y
    out.p = p

    roi = out.roi
    if info.roi.width or info.roi.height:  # all zero means the full image, and stays so
        roi.x_offset, roi.width = _roi_span(info.roi.x_offset, info.roi.width, scale_x, offset_x, out.width)
        roi.y_offset, roi.height = _roi_span(info.roi.y_offset, info.roi.height, scale_y, offset_y, out.height)
    return out


def scale_intrinsics(k: Any, scale_x: float, scale_y: float, offset_x: float = 0.0,
                     offset_y: float = 0.0) -> np.ndarray:
    """A CameraInfo's K (9 values, row-major) for the image resized and shifted as in
    `scale_camera_info` (which uses this): fx, cx times scale_x, fy, cy times scale_y, then the
    principal point moved by the offset."""
    k = np.array(k, dtype=np.float64).reshape(-1)
    k[[0, 2]] *= scale_x
    k[[4, 5]] *= scale_y
    k[2] += offset_x
    k[5] += offset_y
    return k


def _roi_span(start: int, size: int, scale: float, offset: float, limit: int) -> Tuple[int, int]:
    """One axis of a CameraInfo ROI through u' = u * scale + offset: start and size truncated to
    integers (image_proc's rule), then clipped to [0, limit) (a crop cuts it, a letterbox shifts it)."""
    first, length = int(start * scale + offset), int(size * scale)
    if first < 0:
        first, length = 0, length + first
    return first, max(0, min(length, limit - first))
