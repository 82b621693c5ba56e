"""sensor_msgs/CompressedImage (jpeg / png, image_transport's `compressed` transport) -> NumPy.

`compressed_to_array(msg)` decodes `msg.data` with OpenCV and returns the pixels together with
the sensor_msgs/Image encoding that describes them ("bgr8", "rgb8", "bgra8", "mono8", "mono16",
...), so a caller converts them exactly as it converts a raw Image (`image.to_color`).

The channel order follows compressed_image_transport's decoder: a `format` without ';' ("jpeg",
"png", as older drivers and rosbags' writers send) holds BGR (or mono) data; "ENC; FMT compressed
bgr8" holds BGR whatever the original encoding ENC was; "ENC; FMT compressed" or "ENC; FMT
compressed rgb8" holds data in RGB order. The bytes are read zero-copy (`np.frombuffer` of an
rclpy `array.array('B')`, or a rosbags uint8 ndarray). Data that does not decode raises
`ImageConversionError` with a one-line message.
"""
from __future__ import annotations

from typing import Any, Tuple

import cv2
import numpy as np

from mtl_perception.messages.image import ImageConversionError, _byte_buffer

__all__ = ["compressed_to_array", "compressed_data_order", "check_compressed"]

_DEPTH_FORMAT = "compresseddepth"


def compressed_data_order(fmt: str) -> str:
    """'bgr' or 'rgb': the channel order of the decoded pixels of a CompressedImage `format`."""
    text = str(fmt).lower()
    if ";" not in text:
        return "bgr"
    return "bgr" if "compressed bgr" in text else "rgb"


def check_compressed(msg: Any) -> None:
    """Cheap checks a subscription callback can afford (no decoding): a camera image format and
    some data. Raises ImageConversionError."""
    fmt = str(msg.format)
    if _DEPTH_FORMAT in fmt.lower().replace(" ", ""):
        raise ImageConversionError(
            f"compressed format {fmt!r} is a compressedDepth image, not a camera image (use the compressed "
            "transport: jpeg or png)")
    if len(msg.data) == 0:
        raise ImageConversionError(f"compressed image ({fmt or 'no format'}) has no data")


def compressed_to_array(msg: Any) -> Tuple[np.ndarray, str]:
    """(pixels, encoding) of a CompressedImage: HxW or HxWxC uint8/uint16 as decoded by OpenCV
    (alpha and 16-bit PNGs kept), and the Image encoding naming their layout and order."""
    check_compressed(msg)
    data = _byte_buffer(msg.data)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageConversionError(
            f"compressed image ({msg.format or 'no format'}, {data.size} bytes) cannot be decoded as jpeg or png")
    return decoded, _decoded_encoding(decoded, compressed_data_order(msg.format))


def _decoded_encoding(decoded: np.ndarray, order: str) -> str:
    """The Image encoding of a decoded array: mono8/16, or `order` (+a) with 8/16 bits."""
    if decoded.dtype == np.uint8:
        bits = "8"
    elif decoded.dtype == np.uint16:
        bits = "16"
    else:
        raise ImageConversionError(f"compressed image decodes to unsupported {decoded.dtype} data")
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if channels == 1:
        return f"mono{bits}"
    if channels == 3:
        return f"{order}{bits}"
    if channels == 4:
        return f"{order}a{bits}"
    raise ImageConversionError(f"compressed image decodes to {channels} channels (expected 1, 3 or 4)")
