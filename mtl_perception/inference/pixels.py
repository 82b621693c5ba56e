"""Pixel formats of camera frames (the sensor_msgs/Image encodings) and their conversion to
the HxWx3 uint8 colour image a model takes (and back, for test streams and bags), on plain
arrays: what pre-processing needs, below the message layer (`mtl_perception.messages.image`
adds the messages themselves)."""
from __future__ import annotations

import re
from typing import NamedTuple, Optional

import numpy as np

__all__ = ["ImageConversionError", "EncodingInfo", "encoding_info", "color_encoding_info", "check_size",
           "check_array", "array_to_color", "WRITABLE_ENCODINGS", "color_to_array"]


class ImageConversionError(ValueError):
    """An image message or array cannot be converted; the message names the problem."""


class EncodingInfo(NamedTuple):
    """What one pixel of an encoding is: element type (native byte order), channel count and
    colour order ("rgb", "bgr", "rgba", "bgra", "mono", a Bayer pattern such as "bayer_rggb",
    "uyvy" or "yuyv" for 4:2:2 YUV, "nv12" or "nv21" for 4:2:0 YUV, or None for the generic
    NxCy types). For 4:2:0 the pixel is one byte of the luma plane: the interleaved chroma plane
    follows it, `data_rows` tells how many rows of `step` bytes a frame has."""

    dtype: np.dtype
    channels: int
    order: Optional[str]

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels

    @property
    def needs_neighbours(self) -> bool:
        """True when a pixel's colour is made from its neighbours (a Bayer mosaic holds one
        colour per pixel; 4:2:2 YUV shares chroma between two): such a frame is converted to
        colour as a whole, before it is resized or cropped."""
        return self.order in _NEIGHBOUR_CODES

    def data_rows(self, height: int) -> int:
        """Rows of `step` bytes in a frame of `height` pixels: 3/2 x height for 4:2:0 YUV (the
        luma rows, then the chroma plane at half the height), else height."""
        return height * 3 // 2 if self.order in _YUV420 else height

    def frame_size(self, shape: tuple) -> tuple:
        """(height, width) in pixels of an array of `shape` in this encoding (see `data_rows`)."""
        rows = shape[0] * 2 // 3 if self.order in _YUV420 else shape[0]
        return rows, shape[1]


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
    # Raw sensor mosaics (industrial GigE/USB3 cameras), named by their top-left 2x2 cell.
    **{f"bayer_{p}{bits}": (dtype, 1, f"bayer_{p}") for p in ("rggb", "bggr", "gbrg", "grbg")
       for bits, dtype in (("8", "u1"), ("16", "u2"))},
    # 4:2:2 YUV (UVC webcams, usb_cam): two bytes per pixel, U and V shared by two pixels.
    # "yuv422" and "yuv422_yuy2" are the older names of "uyvy" and "yuyv".
    "uyvy": ("u1", 2, "uyvy"),
    "yuv422": ("u1", 2, "uyvy"),
    "yuyv": ("u1", 2, "yuyv"),
    "yuv422_yuy2": ("u1", 2, "yuyv"),
    # 4:2:0 YUV (Jetson and other hardware video pipelines), as RViz's image display reads it:
    # `height` luma rows of `step` bytes, then `height / 2` rows of interleaved chroma (U, V for
    # nv12, V, U for nv21), each pair shared by a 2x2 block of pixels.
    "nv12": ("u1", 1, "nv12"),
    "nv21": ("u1", 1, "nv21"),
}
_YUV422 = ("uyvy", "yuyv")  # the orders whose pixels come in pairs
_YUV420 = ("nv12", "nv21")  # the orders whose chroma plane follows the luma rows
# OpenCV's conversion to BGR / RGB for the encodings whose pixels need their neighbours.
# OpenCV names a Bayer pattern by the second row's second and third pixels, so an RGGB sensor
# is COLOR_BayerBG2*. Demosaicing is bilinear, as cv_bridge and image_proc's default do; YUV is
# BT.601 with video range (Y 16-235), as V4L2 cameras send it.
_NEIGHBOUR_CODES = {
    "bayer_rggb": ("COLOR_BayerBG2BGR", "COLOR_BayerBG2RGB"),
    "bayer_bggr": ("COLOR_BayerRG2BGR", "COLOR_BayerRG2RGB"),
    "bayer_gbrg": ("COLOR_BayerGR2BGR", "COLOR_BayerGR2RGB"),
    "bayer_grbg": ("COLOR_BayerGB2BGR", "COLOR_BayerGB2RGB"),
    "uyvy": ("COLOR_YUV2BGR_UYVY", "COLOR_YUV2RGB_UYVY"),
    "yuyv": ("COLOR_YUV2BGR_YUY2", "COLOR_YUV2RGB_YUY2"),
    "nv12": ("COLOR_YUV2BGR_NV12", "COLOR_YUV2RGB_NV12"),
    "nv21": ("COLOR_YUV2BGR_NV21", "COLOR_YUV2RGB_NV21"),
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


def color_encoding_info(encoding: str) -> EncodingInfo:
    """`encoding_info` for an encoding a camera frame can have (one with a colour order, not a
    generic NxCy type); ImageConversionError naming the encoding otherwise."""
    info = encoding_info(encoding)
    if info.order is None:
        raise ImageConversionError(
            f"image encoding {encoding!r} has no colour order, so it cannot be a camera frame "
            "(use mono8, rgb8, bgr8, rgba8, bgra8, their 16-bit forms, bayer_*, uyvy/yuyv or nv12/nv21)")
    return info


def check_size(info: EncodingInfo, height: int, width: int, encoding: str) -> None:
    """A frame of height x width pixels can hold `encoding`: non-zero, an even width for 4:2:2
    YUV (whose pixels come in pairs) and an even width and height for 4:2:0 (2x2 blocks)."""
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"zero-size image: height={height}, width={width} (encoding {encoding})")
    if info.order in _YUV422 and width % 2:
        raise ImageConversionError(
            f"width {width} is odd, but {encoding} stores pixels in pairs")
    if info.order in _YUV420 and (width % 2 or height % 2):
        raise ImageConversionError(
            f"{width}x{height} has an odd side, but {encoding} shares chroma between 2x2 pixels")


def check_array(arr: np.ndarray, info: EncodingInfo, encoding: str) -> None:
    channels_ok = (arr.ndim == 2 and info.channels == 1) or (
        arr.ndim == 3 and arr.shape[2] == info.channels)
    dtype_ok = arr.dtype.kind == info.dtype.kind and arr.dtype.itemsize == info.dtype.itemsize
    rows_ok = info.order not in _YUV420 or (channels_ok and arr.shape[0] % 3 == 0)  # (H*3/2) rows
    if not (channels_ok and dtype_ok and rows_ok):
        want = "(H*3/2)xW" if info.order in _YUV420 else "HxW" if info.channels == 1 else f"HxWx{info.channels}"
        raise ImageConversionError(
            f"array of shape {arr.shape} and dtype {arr.dtype} does not fit encoding "
            f"{encoding} ({want} {info.dtype.name})")
    check_size(info, *info.frame_size(arr.shape), encoding)


def array_to_color(arr: np.ndarray, encoding: str, order: str = "rgb") -> np.ndarray:
    """An HxWx3 uint8 C-contiguous image in `order` ("rgb" or "bgr") from an array in `encoding`.

    Alpha is dropped, mono is replicated to three channels, Bayer mosaics are demosaiced
    (bilinear) and 4:2:2 and 4:2:0 YUV converted (BT.601), and 16-bit data is scaled to 8 bits
    (x * 255 / 65535, rounded) after demosaicing, as cv_bridge does. An image already in the
    requested order and without row padding is returned without a copy.
    """
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', not {order!r}")
    arr = np.asarray(arr)
    info = color_encoding_info(encoding)
    check_array(arr, info, encoding)
    # OpenCV's SIMD conversions: about 10x faster than NumPy plane copies, and they read strided
    # rows. Imported here so that the message layer stays importable without OpenCV.
    import cv2

    if info.needs_neighbours:
        code = _NEIGHBOUR_CODES[info.order][0 if order == "bgr" else 1]
        arr = cv2.cvtColor(arr, getattr(cv2, code))
        return _to_8_bits(arr) if info.dtype.itemsize == 2 else arr
    if info.dtype.itemsize == 2:
        arr = _to_8_bits(arr)
    if info.order == "mono":
        return cv2.cvtColor(arr if arr.ndim == 2 else arr[..., 0], cv2.COLOR_GRAY2BGR)
    if info.order[:3] == order:
        return np.ascontiguousarray(arr[..., :3])
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGB)


def _to_8_bits(arr: np.ndarray) -> np.ndarray:
    """16-bit values scaled to 8 bits, x * 255 / 65535 rounded (cv_bridge's scaling)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


#: The 8-bit encodings `color_to_array` writes: those common camera drivers send (colour, mono,
#: a Bayer mosaic as industrial cameras send it, 4:2:2 YUV as UVC webcams do, 4:2:0 YUV as
#: hardware video pipelines do).
WRITABLE_ENCODINGS = ("bgr8", "rgb8", "mono8", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
                      "uyvy", "yuyv", "nv12", "nv21")


def color_to_array(image: np.ndarray, encoding: str, order: str = "rgb") -> np.ndarray:
    """An HxWx3 uint8 image in `order` ("rgb" or "bgr") as a camera would send it in `encoding`
    (one of WRITABLE_ENCODINGS, or the older names yuv422 / yuv422_yuy2): the inverse of
    `array_to_color` up to what the encoding drops (a mosaic keeps one colour per pixel, 4:2:2
    one chroma pair per two pixels, mono the luma). For bags and test streams in a real
    camera's format."""
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', not {order!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageConversionError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    info = color_encoding_info(encoding)
    if info.dtype.itemsize != 1 or info.order in ("rgba", "bgra"):
        raise ImageConversionError(
            f"frames are written as {', '.join(WRITABLE_ENCODINGS)}, not {encoding}")
    check_size(info, image.shape[0], image.shape[1], encoding)
    import cv2

    if info.order == order:
        return np.ascontiguousarray(image)
    rgb = image if order == "rgb" else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if info.order == "rgb":
        return np.ascontiguousarray(rgb)
    if info.order == "bgr":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if info.order == "mono":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if info.order in _YUV422:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY if info.order == "uyvy" else cv2.COLOR_RGB2YUV_YUY2)
    if info.order in _YUV420:  # OpenCV writes planar I420 (Y, U, V planes); interleave U and V
        h, w = rgb.shape[:2]
        planes = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
        u = planes[h * w: h * w * 5 // 4].reshape(h // 2, w // 2)
        v = planes[h * w * 5 // 4:].reshape(h // 2, w // 2)
        chroma = np.stack((u, v) if info.order == "nv12" else (v, u), axis=-1).reshape(h // 2, w)
        return np.concatenate([planes[: h * w].reshape(h, w), chroma])
    pattern = info.order[len("bayer_"):]  # the top-left 2x2 cell, row by row
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    for cell, colour in enumerate(pattern):
        row, col = divmod(cell, 2)
        mosaic[row::2, col::2] = rgb[row::2, col::2, "rgb".index(colour)]
    return mosaic
