"""Stamps read straight from serialized bytes must be the ones the serializer wrote: rclpy's bytes
for every message type the node publishes, and rosbags' big-endian CDR as recorded by other
machines; bytes that are not a plain-CDR message give None, not a wrong stamp."""
from __future__ import annotations

import numpy as np
import pytest

from mtl_perception.messages.stamps import raw_stamp, stamp_ns

SEC, NANOSEC = 1_700_000_123, 987_654_321
STAMP = 1_700_000_123_987_654_321


def test_raw_stamp_reads_rclpys_bytes_of_every_output_type():
    pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from vision_msgs.msg import Detection2DArray

    for cls in (Image, CompressedImage, CameraInfo, PointCloud2, Detection2DArray):
        msg = cls()
        msg.header.frame_id = "camera_optical_frame"
        msg.header.stamp.sec, msg.header.stamp.nanosec = SEC, NANOSEC
        assert raw_stamp(serialize_message(msg)) == STAMP == stamp_ns(msg.header.stamp), cls.__name__


@pytest.mark.parametrize("little_endian", [True, False])
def test_raw_stamp_follows_the_cdr_byte_order(little_endian):
    from mtl_perception.bags.io import make_header, typestore

    store = typestore()
    image = store.types["sensor_msgs/msg/Image"](
        header=make_header(STAMP, "camera", store), height=0, width=0, encoding="rgb8", is_bigendian=0, step=0,
        data=np.zeros(0, dtype=np.uint8))
    raw = bytes(store.serialize_cdr(image, "sensor_msgs/msg/Image", little_endian=little_endian))
    assert raw[1] == (1 if little_endian else 0)
    assert raw_stamp(raw) == STAMP


def test_raw_stamp_refuses_what_is_not_a_plain_cdr_message():
    assert raw_stamp(b"") is None
    assert raw_stamp(b"\x00\x01\x00\x00\x01") is None  # shorter than the stamp
    assert raw_stamp(b"\x01\x01" + bytes(14)) is None  # not plain CDR (e.g. parameter-list encoding)
