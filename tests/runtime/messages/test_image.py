"""mtl_perception.messages.image against real sensor_msgs messages (the installed message package).

References: arrays built independently with NumPy (byte order, padding written by hand),
serialisation through rclpy's CDR serializer, and a CameraInfo scaled by hand following
image_proc's resize node.
"""
from __future__ import annotations

import array
import subprocess
import sys

import numpy as np
import pytest

sensor_msgs_msg = pytest.importorskip(
    "sensor_msgs.msg", reason="sensor_msgs is not installed (see scripts/setup_ros.sh)")
Image = sensor_msgs_msg.Image
CameraInfo = sensor_msgs_msg.CameraInfo

from mtl_perception.messages.image import (  # noqa: E402
    ImageConversionError,
    array_to_image,
    encoding_info,
    image_to_array,
    scale_camera_info,
    to_color,
    to_model_rgb,
)

RNG = np.random.default_rng(0)

# encoding -> (dtype, channels)
ENCODINGS = {
    "bgr8": (np.uint8, 3), "rgb8": (np.uint8, 3), "bgra8": (np.uint8, 4),
    "rgba8": (np.uint8, 4), "mono8": (np.uint8, 1), "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1), "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3), "16SC1": (np.int16, 1), "32SC1": (np.int32, 1),
    "64FC1": (np.float64, 1), "rgb16": (np.uint16, 3), "bgra16": (np.uint16, 4),
    "32FC3": (np.float32, 3), "bayer_rggb8": (np.uint8, 1), "bayer_grbg16": (np.uint16, 1),
}


def random_image(dtype, channels, height=5, width=7):
    shape = (height, width) if channels == 1 else (height, width, channels)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def make_msg(encoding, height, width, step, payload: bytes, bigendian=0):
    msg = Image()
    msg.encoding = encoding
    msg.height, msg.width, msg.step = height, width, step
    msg.is_bigendian = bigendian
    msg.data = array.array("B", payload)
    return msg


def padded_payload(arr: np.ndarray, pad: int, fill=0xAB, byteorder="<") -> bytes:
    """Rows of `arr` in `byteorder`, each followed by `pad` bytes of `fill` (written by hand)."""
    rows = []
    for row in arr:
        rows.append(np.ascontiguousarray(row, dtype=arr.dtype.newbyteorder(byteorder)).tobytes())
        rows.append(bytes([fill]) * pad)
    return b"".join(rows)


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip_every_encoding(encoding):
    dtype, channels = ENCODINGS[encoding]
    arr = random_image(dtype, channels)
    header = sensor_msgs_msg.Image().header
    header.frame_id = "cam"
    header.stamp.sec = 42
    msg = array_to_image(arr, encoding, header=header)

    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 7, encoding, 0)
    assert msg.step == 7 * channels * np.dtype(dtype).itemsize
    assert len(msg.data) == msg.height * msg.step
    assert (msg.header.frame_id, msg.header.stamp.sec) == ("cam", 42)
    # The bytes are the array's, little-endian, rows packed.
    assert bytes(msg.data) == arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()

    back = image_to_array(msg)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_round_trip_through_cdr_serialisation():
    serialization = pytest.importorskip("rclpy.serialization")
    arr = random_image(np.uint8, 3, 6, 9)
    wire = serialization.serialize_message(array_to_image(arr, "bgr8"))
    msg = serialization.deserialize_message(wire, Image)
    out = image_to_array(msg)
    np.testing.assert_array_equal(out, arr)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_single_channel_accepts_hxwx1_and_returns_hxw():
    arr = random_image(np.uint16, 1)
    msg = array_to_image(arr[..., None], "16UC1")
    assert image_to_array(msg).shape == arr.shape


def test_array_to_image_copies_the_array():
    arr = random_image(np.uint8, 3)
    msg = array_to_image(arr, "rgb8")
    arr[:] = 0
    assert any(msg.data)


# ----------------------------------------------------------------------------- zero copy

@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "mono16", "32FC1", "rgba8"])
def test_image_to_array_is_a_view_of_msg_data(encoding):
    dtype, channels = ENCODINGS[encoding]
    msg = array_to_image(random_image(dtype, channels), encoding)
    out = image_to_array(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    # Writes go through to the message (it is a view, as cv_bridge's toCvShare).
    out[0, 0] = 0
    first = np.frombuffer(msg.data, np.uint8)[: np.dtype(dtype).itemsize * channels]
    assert not first.any()


def test_to_model_rgb_of_unpadded_rgb8_is_the_same_memory():
    msg = array_to_image(random_image(np.uint8, 3), "rgb8")
    out = to_model_rgb(msg)
    assert out.flags.c_contiguous
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


# ----------------------------------------------------------------------------- row padding

@pytest.mark.parametrize("encoding,pad", [("bgr8", 5), ("mono8", 3), ("mono16", 6),
                                          ("32FC1", 4), ("rgba8", 1), ("16UC1", 1)])
def test_step_padding_is_skipped(encoding, pad):
    dtype, channels = ENCODINGS[encoding]
    arr = random_image(dtype, channels, height=4, width=6)
    row_bytes = 6 * channels * np.dtype(dtype).itemsize
    msg = make_msg(encoding, 4, 6, row_bytes + pad, padded_payload(arr, pad))
    out = image_to_array(msg)
    np.testing.assert_array_equal(out, arr)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    assert out.strides[0] == row_bytes + pad


def test_padded_bgr8_to_rgb_ignores_padding_garbage():
    arr = random_image(np.uint8, 3, 3, 4)
    msg = make_msg("bgr8", 3, 4, 4 * 3 + 8, padded_payload(arr, 8, fill=0xFF))
    rgb = to_model_rgb(msg)
    assert rgb.shape == (3, 4, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, arr[..., ::-1])


def test_data_longer_than_needed_is_accepted():
    arr = random_image(np.uint8, 1, 2, 3)
    msg = make_msg("mono8", 2, 3, 3, arr.tobytes() + b"extra")
    np.testing.assert_array_equal(image_to_array(msg), arr)


# ----------------------------------------------------------------------------- byte order

@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1", "16SC1"])
def test_big_endian_data_is_read_in_its_byte_order(encoding):
    dtype, _ = ENCODINGS[encoding]
    arr = random_image(dtype, 1, 3, 5)
    itemsize = np.dtype(dtype).itemsize
    msg = make_msg(encoding, 3, 5, 5 * itemsize + 2, padded_payload(arr, 2, byteorder=">"),
                   bigendian=1)
    out = image_to_array(msg)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_big_endian_mono16_known_values():
    msg = make_msg("mono16", 1, 3, 6, bytes([0x01, 0x02, 0x00, 0xFF, 0xFF, 0x00]), bigendian=1)
    assert image_to_array(msg).tolist() == [[0x0102, 0x00FF, 0xFF00]]
    msg.is_bigendian = 0
    assert image_to_array(msg).tolist() == [[0x0201, 0xFF00, 0x00FF]]


# ----------------------------------------------------------------------------- colour

def test_to_color_orders_and_channels():
    bgr = random_image(np.uint8, 3)
    rgb = bgr[..., ::-1]
    np.testing.assert_array_equal(to_model_rgb(array_to_image(bgr, "bgr8")), rgb)
    np.testing.assert_array_equal(to_color(array_to_image(bgr, "bgr8"), order="bgr"), bgr)
    np.testing.assert_array_equal(to_color(array_to_image(rgb, "rgb8"), order="bgr"), bgr)

    alpha = random_image(np.uint8, 1)[..., None]
    np.testing.assert_array_equal(
        to_model_rgb(array_to_image(np.concatenate([bgr, alpha], -1), "bgra8")), rgb)
    np.testing.assert_array_equal(
        to_color(array_to_image(np.concatenate([rgb, alpha], -1), "rgba8"), order="bgr"), bgr)

    mono = random_image(np.uint8, 1)
    out = to_model_rgb(array_to_image(mono, "mono8"))
    assert out.shape == mono.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], mono)


def test_to_color_on_arrays_and_encoding_override():
    bgr = random_image(np.uint8, 3)
    np.testing.assert_array_equal(to_model_rgb(bgr, "bgr8"), bgr[..., ::-1])
    # An 8UC3 message has no colour order of its own; the caller may declare one.
    msg = array_to_image(bgr, "8UC3")
    with pytest.raises(ImageConversionError, match="'8UC3' has no colour order"):
        to_model_rgb(msg)
    np.testing.assert_array_equal(to_model_rgb(msg, "bgr8"), bgr[..., ::-1])


def test_sixteen_bit_to_eight_bit_scaling():
    values = np.array([[0, 128, 129, 257, 32768, 65535]], np.uint16)
    # x * 255 / 65535 rounded: 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 257 -> 1, 32768 -> 127.5019
    expected = [0, 0, 1, 1, 128, 255]
    out = to_model_rgb(array_to_image(values, "mono16"))
    assert out.dtype == np.uint8
    assert out[..., 0].tolist() == [expected]
    bgr16 = np.stack([values, values * 0, values * 0], -1)
    assert to_model_rgb(bgr16, "bgr16")[0, :, 2].tolist() == expected


# ----------------------------------------------------------------------------- errors

def test_unsupported_encoding_is_named():
    msg = make_msg("nv24", 2, 2, 4, bytes(8))
    with pytest.raises(ImageConversionError, match=r"unsupported image encoding 'nv24'"):
        image_to_array(msg)
    with pytest.raises(ImageConversionError, match="'nv42'"):
        array_to_image(np.zeros((3, 2), np.uint8), "nv42")
    with pytest.raises(ImageConversionError, match="'BGR8'"):
        encoding_info("BGR8")


def test_nv12_is_the_luma_rows_then_half_as_many_chroma_rows_each_step_bytes_apart():
    h, w, step = 4, 6, 8  # 2 bytes of padding per row, in both planes
    data = np.arange(step * h * 3 // 2, dtype=np.uint8)
    view = image_to_array(make_msg("nv12", h, w, step, data.tobytes()))
    np.testing.assert_array_equal(view, data.reshape(6, 8)[:, :6])  # a view, padding skipped
    with pytest.raises(ImageConversionError, match=r"fewer than height\*3/2\*step = 6\*8 = 48"):
        image_to_array(make_msg("nv12", h, w, step, bytes(step * h)))
    msg = array_to_image(view, "nv12")
    assert (msg.height, msg.width, msg.step, len(msg.data)) == (4, 6, 6, 36)
    np.testing.assert_array_equal(image_to_array(msg), view)


def test_data_shorter_than_height_times_step():
    msg = make_msg("bgr8", 4, 3, 9, bytes(35))
    with pytest.raises(ImageConversionError,
                       match=r"image data has 35 bytes, fewer than height\*step = 4\*9 = 36"):
        image_to_array(msg)
    empty = make_msg("mono8", 2, 2, 2, b"")
    with pytest.raises(ImageConversionError, match="image data has 0 bytes"):
        image_to_array(empty)


@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (0, 0)])
def test_zero_size_image(height, width):
    msg = make_msg("mono8", height, width, width, b"")
    with pytest.raises(ImageConversionError, match="zero-size image"):
        image_to_array(msg)
    with pytest.raises(ImageConversionError, match="zero-size image"):
        array_to_image(np.zeros((height, width), np.uint8), "mono8")


def test_step_smaller_than_a_row():
    msg = make_msg("bgr8", 2, 4, 11, bytes(22))
    with pytest.raises(ImageConversionError,
                       match=r"step 11 is smaller than width\*bytes_per_pixel = 4\*3 = 12"):
        image_to_array(msg)
    msg16 = make_msg("mono16", 2, 4, 7, bytes(14))
    with pytest.raises(ImageConversionError, match=r"step 7 .* = 4\*2 = 8"):
        image_to_array(msg16)


def test_array_that_does_not_fit_the_encoding():
    with pytest.raises(ImageConversionError, match=r"dtype float64 does not fit encoding 32FC1"):
        array_to_image(np.zeros((2, 2)), "32FC1")
    with pytest.raises(ImageConversionError, match=r"shape \(2, 2\) .* encoding bgr8"):
        array_to_image(np.zeros((2, 2), np.uint8), "bgr8")
    with pytest.raises(ImageConversionError, match="'32FC1' has no colour order"):
        to_model_rgb(array_to_image(np.zeros((2, 2), np.float32), "32FC1"))


def test_errors_are_value_errors_with_one_line():
    msg = make_msg("bgr8", 4, 3, 9, bytes(10))
    with pytest.raises(ValueError) as info:
        image_to_array(msg)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- CameraInfo

def make_camera_info():
    info = CameraInfo()
    info.header.frame_id = "cam"
    info.width, info.height = 640, 480
    info.distortion_model = "plumb_bob"
    info.d = [0.1, -0.2, 0.001, 0.002, 0.0]
    info.k = [525.0, 0.5, 319.5,
              0.0, 520.0, 239.5,
              0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [530.0, 0.0, 320.0, -37.8,
              0.0, 528.0, 240.0, 4.2,
              0.0, 0.0, 1.0, 0.0]
    info.binning_x = info.binning_y = 1
    info.roi.x_offset, info.roi.y_offset = 101, 33
    info.roi.width, info.roi.height = 301, 203
    info.roi.do_rectify = True
    return info


def test_scale_camera_info_against_hand_computed_values():
    info = make_camera_info()
    out = scale_camera_info(info, 0.5, 0.25)
    assert isinstance(out, CameraInfo)
    # By hand, image_proc's resize convention: fx, cx, P[0], P[2], Tx times sx; fy, cy,
    # P[5], P[6] times sy; skew, D, R, P[7] untouched; sizes and ROI truncated to integers.
    assert (out.width, out.height) == (320, 120)
    np.testing.assert_allclose(out.k, [262.5, 0.5, 159.75,
                                       0.0, 130.0, 59.875,
                                       0.0, 0.0, 1.0])
    np.testing.assert_allclose(out.p, [265.0, 0.0, 160.0, -18.9,
                                       0.0, 132.0, 60.0, 4.2,
                                       0.0, 0.0, 1.0, 0.0])
    assert (out.roi.x_offset, out.roi.y_offset, out.roi.width, out.roi.height) == (50, 8, 150, 50)
    assert out.roi.do_rectify
    assert list(out.d) == [0.1, -0.2, 0.001, 0.002, 0.0]
    np.testing.assert_array_equal(out.r, info.r)
    assert out.distortion_model == "plumb_bob" and out.header.frame_id == "cam"
    # The input is left alone.
    assert info.k[0] == 525.0 and info.width == 640 and info.roi.x_offset == 101


def test_scale_camera_info_super_resolution_and_explicit_size():
    info = make_camera_info()
    up = scale_camera_info(info, 2.0, 2.0)
    assert (up.width, up.height) == (1280, 960)
    assert (up.k[0], up.k[2], up.k[4], up.k[5]) == (1050.0, 639.0, 1040.0, 479.0)
    sized = scale_camera_info(info, 0.3, 0.3, width=192, height=144)
    assert (sized.width, sized.height) == (192, 144)
    assert sized.k[0] == pytest.approx(157.5)
    with pytest.raises(ValueError, match="positive"):
        scale_camera_info(info, 0.0, 1.0)


# ----------------------------------------------------------------------------- other classes

def test_rosbags_message_class():
    typesys = pytest.importorskip("rosbags.typesys")
    store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    BagImage = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    arr = random_image(np.uint16, 1)
    msg = array_to_image(arr, "16UC1", header=Header(stamp=Time(sec=1, nanosec=2), frame_id="c"),
                         msg_cls=BagImage)
    assert isinstance(msg.data, np.ndarray) and msg.data.dtype == np.uint8
    out = image_to_array(msg)
    np.testing.assert_array_equal(out, arr)
    assert np.shares_memory(out, msg.data)
    raw = store.serialize_cdr(msg, "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(
        image_to_array(store.deserialize_cdr(raw, "sensor_msgs/msg/Image")), arr)


def test_module_imports_neither_rclpy_nor_torch():
    code = ("import sys, mtl_perception.messages.image as m; "
            "bad = [n for n in ('rclpy', 'torch', 'sensor_msgs', 'cv2') if n in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
