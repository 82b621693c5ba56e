"""Camera encodings that need a pixel's neighbours (Bayer mosaics, 4:2:2 YUV) against closed
forms written here: mosaics built by hand from their ROS names (top-left 2x2 cell, row by row),
BT.601 video-range YUV computed in NumPy, and bilinear demosaicing being exact on a constant
and on a linear ramp."""
from __future__ import annotations

import numpy as np
import pytest

from mtl_perception.inference.pixels import (
    WRITABLE_ENCODINGS,
    ImageConversionError,
    array_to_color,
    color_to_array,
    encoding_info,
)
from mtl_perception.inference.preprocess import model_input

PATTERNS = ("rggb", "bggr", "gbrg", "grbg")
COLOUR = {"r": 200, "g": 100, "b": 30}


def hand_mosaic(pattern: str, height: int = 6, width: int = 8) -> np.ndarray:
    """A mosaic of the constant colour COLOUR, written cell by cell from the pattern's name."""
    cell = np.array([[COLOUR[pattern[0]], COLOUR[pattern[1]]], [COLOUR[pattern[2]], COLOUR[pattern[3]]]], np.uint8)
    return np.tile(cell, (height // 2, width // 2))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_bayer_pattern_demosaics_to_its_colour(pattern):
    """A wrong OpenCV code for a pattern swaps red and blue or takes green from a red site."""
    mosaic = hand_mosaic(pattern)
    rgb = array_to_color(mosaic, f"bayer_{pattern}8", "rgb")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.broadcast_to([200, 100, 30], rgb.shape))
    np.testing.assert_array_equal(array_to_color(mosaic, f"bayer_{pattern}8", "bgr"), rgb[..., ::-1])
    # 16 bits: demosaiced, then scaled to 8 bits as cv_bridge does (x * 257 -> x).
    wide = mosaic.astype(np.uint16) * 257
    np.testing.assert_array_equal(array_to_color(wide, f"bayer_{pattern}16", "rgb"), rgb)
    np.testing.assert_array_equal(color_to_array(rgb, f"bayer_{pattern}8"), mosaic)


def test_bilinear_demosaicing_is_exact_on_a_linear_ramp():
    """Each channel a linear function of x and y: bilinear interpolation reproduces it away
    from the border (to within rounding), for every pattern."""
    y, x = np.mgrid[0:16, 0:24]
    rgb = np.stack([40 + 6 * x, 20 + 5 * y + 2 * x, 200 - 4 * x - 3 * y], axis=-1).astype(np.uint8)
    for pattern in PATTERNS:
        out = array_to_color(color_to_array(rgb, f"bayer_{pattern}8"), f"bayer_{pattern}8", "rgb")
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(out[inner].astype(int) - rgb[inner]).max() <= 1, pattern


def bt601_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 video range (Y 16-235, chroma 16-240) to RGB, each chroma shared by a pixel pair."""
    luma = 1.164 * (y - 16.0)
    cb, cr = np.repeat(u, 2, axis=1) - 128.0, np.repeat(v, 2, axis=1) - 128.0
    rgb = np.stack([luma + 1.596 * cr, luma - 0.813 * cr - 0.391 * cb, luma + 2.018 * cb], axis=-1)
    return np.clip(np.round(rgb), 0, 255)


@pytest.mark.parametrize("encoding", ["uyvy", "yuv422", "yuyv", "yuv422_yuy2"])
def test_yuv422_converts_by_bt601(encoding):
    rng = np.random.default_rng(0)
    h, w = 6, 16
    y = rng.integers(16, 236, (h, w))
    u, v = rng.integers(16, 241, (h, w // 2)), rng.integers(16, 241, (h, w // 2))
    packed = np.zeros((h, w, 2), np.uint8)  # uyvy: U Y0 V Y1
    packed[..., 1] = y
    packed[:, 0::2, 0], packed[:, 1::2, 0] = u, v
    if encoding in ("yuyv", "yuv422_yuy2"):  # Y0 U Y1 V
        packed = np.ascontiguousarray(packed[..., ::-1])
    rgb = array_to_color(packed, encoding, "rgb")
    assert np.abs(rgb.astype(int) - bt601_rgb(y, u, v)).max() <= 1
    np.testing.assert_array_equal(array_to_color(packed, encoding, "bgr"), rgb[..., ::-1])
    # Written back: a pixel pair of one colour keeps its colour to within the rounding of two steps.
    flat = np.repeat(rgb[:, 0::2], 2, axis=1)
    again = array_to_color(color_to_array(flat, encoding), encoding, "rgb")
    assert np.abs(again.astype(int) - flat).max() <= 3


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
def test_yuv420_semi_planar_converts_by_bt601(encoding):
    """The layout RViz reads: H luma rows, then H/2 rows of interleaved chroma (U V for nv12,
    V U for nv21), each pair shared by a 2x2 block."""
    rng = np.random.default_rng(3)
    h, w = 6, 16
    y = rng.integers(16, 236, (h, w))
    u, v = rng.integers(16, 241, (h // 2, w // 2)), rng.integers(16, 241, (h // 2, w // 2))
    chroma = np.zeros((h // 2, w // 2, 2), np.int64)
    chroma[..., 0], chroma[..., 1] = (u, v) if encoding == "nv12" else (v, u)
    frame = np.concatenate([y, chroma.reshape(h // 2, w)]).astype(np.uint8)
    assert frame.shape == (h * 3 // 2, w)
    rgb = array_to_color(frame, encoding, "rgb")
    assert rgb.shape == (h, w, 3)
    rows_u, rows_v = np.repeat(u, 2, axis=0), np.repeat(v, 2, axis=0)  # each chroma row serves two rows
    assert np.abs(rgb.astype(int) - bt601_rgb(y, rows_u, rows_v)).max() <= 1
    np.testing.assert_array_equal(array_to_color(frame, encoding, "bgr"), rgb[..., ::-1])
    # Written back: a 2x2 block of one colour keeps its colour to within the rounding of two steps.
    flat = np.repeat(np.repeat(rgb[0::2, 0::2], 2, axis=0), 2, axis=1)
    again = array_to_color(color_to_array(flat, encoding), encoding, "rgb")
    assert np.abs(again.astype(int) - flat).max() <= 3
    info = encoding_info(encoding)
    assert info.needs_neighbours and info.data_rows(h) == 9 and info.frame_size(frame.shape) == (h, w)


def test_yuv420_needs_even_sides_and_three_halves_rows():
    with pytest.raises(ImageConversionError, match="5x4 has an odd side, but nv12 shares chroma"):
        array_to_color(np.zeros((6, 5), np.uint8), "nv12")
    with pytest.raises(ImageConversionError, match="6x5 has an odd side, but nv21"):
        color_to_array(np.zeros((6, 6, 3), np.uint8)[:5], "nv21")
    with pytest.raises(ImageConversionError, match=r"does not fit encoding nv12 \(\(H\*3/2\)xW uint8\)"):
        array_to_color(np.zeros((5, 4), np.uint8), "nv12")  # 5 rows are no H * 3/2


def test_yuv422_needs_an_even_width_and_bayer_is_one_channel():
    with pytest.raises(ImageConversionError, match="width 5 is odd, but uyvy stores pixels in pairs"):
        array_to_color(np.zeros((2, 5, 2), np.uint8), "uyvy")
    with pytest.raises(ImageConversionError, match="does not fit encoding bayer_rggb8"):
        array_to_color(np.zeros((4, 4, 3), np.uint8), "bayer_rggb8")
    assert encoding_info("bayer_bggr16").bytes_per_pixel == 2 and encoding_info("yuyv").bytes_per_pixel == 2
    assert encoding_info("bayer_rggb8").needs_neighbours and not encoding_info("bgr8").needs_neighbours


def test_color_to_array_writes_every_listed_encoding_and_refuses_the_rest():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    for encoding in WRITABLE_ENCODINGS:
        back = array_to_color(color_to_array(rgb, encoding), encoding, "rgb")
        assert back.shape == rgb.shape
    np.testing.assert_array_equal(color_to_array(rgb, "bgr8"), rgb[..., ::-1])
    np.testing.assert_array_equal(color_to_array(rgb[..., ::-1], "rgb8", "bgr"), rgb)
    for encoding in ("bgra8", "rgb16", "32FC1"):
        with pytest.raises(ImageConversionError, match=encoding):
            color_to_array(rgb, encoding)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_model_input_converts_a_mosaic_before_resizing(resize):
    """Resizing a mosaic would mix its colours: the model sees the demosaiced frame resized,
    and the frame's `camera` and `resized` are colour images."""
    rng = np.random.default_rng(2)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), 4, 0), 4, 1)  # 120x160
    for encoding in ("bayer_grbg8", "yuyv"):
        raw = color_to_array(rgb, encoding)
        frame = model_input(raw, encoding, (40, 24), "bgr", resize)
        colour = array_to_color(raw, encoding, "bgr")
        expected = model_input(colour, "bgr8", (40, 24), "bgr", resize)
        np.testing.assert_array_equal(frame.image, expected.image)
        np.testing.assert_array_equal(frame.camera, colour)
        assert frame.encoding == "bgr8" and frame.resized.shape == (24, 40, 3)
        np.testing.assert_array_equal(frame.camera_color("rgb"), colour[..., ::-1])
