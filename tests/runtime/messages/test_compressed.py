"""mtl_perception.messages.compressed: real jpeg/png bytes (encoded by OpenCV) in rclpy's and
rosbags' sensor_msgs/CompressedImage, decoded back and compared with the original array (png
exactly, jpeg by PSNR), with the channel-order conventions of compressed_image_transport."""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from mtl_perception.messages.compressed import compressed_data_order, compressed_to_array
from mtl_perception.messages.image import ImageConversionError, to_color

sensor_msgs_msg = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs is not installed")


def smooth_bgr(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth colour image (jpeg-friendly) with distinct channels, so a swap is visible."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    b = 40 + 150 * x / width
    g = 60 + 120 * y / height
    r = 128 + 90 * np.sin(x / 9.0) * np.cos(y / 7.0)
    return np.clip(np.stack([b, g, r], -1), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def encode(image: np.ndarray, fmt: str) -> np.ndarray:
    ext = ".jpg" if fmt == "jpeg" else ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpeg" else []
    ok, data = cv2.imencode(ext, image, params)
    assert ok
    return data.reshape(-1)


def rclpy_msg(data: np.ndarray, fmt: str):
    msg = sensor_msgs_msg.CompressedImage()
    msg.format = fmt
    buf = array.array("B")
    buf.frombytes(data.tobytes())
    msg.data = buf  # as a driver's message arrives: array.array('B') (ROS_PYTHON_CHECK_FIELDS=1 here)
    return msg


def rosbags_msg(data: np.ndarray, fmt: str):
    from mtl_perception.bags.io import make_header, typestore

    store = typestore()
    return store.types["sensor_msgs/msg/CompressedImage"](header=make_header(0, "cam", store), format=fmt,
                                                         data=data.astype(np.uint8))


@pytest.mark.parametrize("make", [rclpy_msg, rosbags_msg], ids=["rclpy", "rosbags"])
@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8"])
def test_png_decodes_exactly(make, fmt):
    bgr = smooth_bgr()
    decoded, encoding = compressed_to_array(make(encode(bgr, "png"), fmt))
    assert encoding == "bgr8"
    np.testing.assert_array_equal(decoded, bgr)
    np.testing.assert_array_equal(to_color(decoded, encoding, "rgb"), bgr[..., ::-1])


@pytest.mark.parametrize("make", [rclpy_msg, rosbags_msg], ids=["rclpy", "rosbags"])
@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8"])
def test_jpeg_decodes_within_35_db(make, fmt):
    bgr = smooth_bgr()
    decoded, encoding = compressed_to_array(make(encode(bgr, "jpeg"), fmt))
    assert encoding == "bgr8" and decoded.shape == bgr.shape
    assert psnr(decoded, bgr) > 35.0
    assert psnr(to_color(decoded, encoding, "rgb"), bgr[..., ::-1]) > 35.0


def test_rgb_ordered_payload_is_labelled_rgb():
    """'rgb8; png compressed' (no target): the encoder compressed the rgb8 buffer as is, so the
    decoded memory is RGB (compressed_image_transport reverts nothing for rgb8)."""
    rgb = smooth_bgr()[..., ::-1].copy()
    decoded, encoding = compressed_to_array(rclpy_msg(encode(rgb, "png"), "rgb8; png compressed"))
    assert encoding == "rgb8"
    np.testing.assert_array_equal(to_color(decoded, encoding, "rgb"), rgb)


def test_mono_alpha_and_16_bit_pngs_keep_their_layout():
    mono = smooth_bgr()[..., 1].copy()
    decoded, encoding = compressed_to_array(rclpy_msg(encode(mono, "png"), "mono8; png compressed mono8"))
    assert encoding == "mono8"
    np.testing.assert_array_equal(decoded, mono)
    bgra = np.concatenate([smooth_bgr(), np.full((48, 64, 1), 200, np.uint8)], -1)
    decoded, encoding = compressed_to_array(rclpy_msg(encode(bgra, "png"), "png"))
    assert encoding == "bgra8"
    np.testing.assert_array_equal(decoded, bgra)
    deep = (smooth_bgr().astype(np.uint16) * 257)
    decoded, encoding = compressed_to_array(rclpy_msg(encode(deep, "png"), "bgr16; png compressed bgr16"))
    assert encoding == "bgr16"
    np.testing.assert_array_equal(decoded, deep)


@pytest.mark.parametrize("payload, fmt, words", [
    (np.zeros(0, np.uint8), "jpeg", "no data"),
    (np.arange(200, dtype=np.uint8), "jpeg", "cannot be decoded"),
    (encode(smooth_bgr(), "jpeg")[:100], "jpeg", "cannot be decoded"),
    (encode(smooth_bgr(), "png"), "16UC1; compressedDepth png", "compressedDepth"),
])
def test_bad_payloads_raise_one_line_errors(payload, fmt, words):
    with pytest.raises(ImageConversionError, match=words) as info:
        compressed_to_array(rclpy_msg(payload, fmt))
    assert "\n" not in str(info.value)


def test_data_order_of_formats():
    assert compressed_data_order("jpeg") == "bgr"
    assert compressed_data_order("png") == "bgr"
    assert compressed_data_order("rgb8; jpeg compressed bgr8") == "bgr"
    assert compressed_data_order("rgb8; png compressed rgb8") == "rgb"
    assert compressed_data_order("rgb8; png compressed ") == "rgb"
