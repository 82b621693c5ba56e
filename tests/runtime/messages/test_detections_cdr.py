"""Detections written straight to CDR bytes must be, for rclpy, exactly the message that
`detection_array` builds (rclpy is the reference: its deserializer reads our bytes, its
serializer gives the length); and the node's start-up check must refuse a writer that is off."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from mtl_perception.inference.postprocess import Detections  # noqa: E402
from mtl_perception.messages import detections_cdr  # noqa: E402
from mtl_perception.messages.detections_cdr import detection_array_cdr  # noqa: E402
from mtl_perception.messages.outputs import detection_array  # noqa: E402
from mtl_perception.ros.serialized_outputs import detections_bytes_supported  # noqa: E402

CLASSES = ["car", "person", "traffic_light", "bicycle_with_a_long_name", "Straßenbahn"]


@pytest.mark.parametrize("frame_id", ["", "cam", "camera_optical_frame", "front/left_camera"])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 50])
def test_bytes_are_the_message_detection_array_builds(frame_id, count):
    rng = np.random.default_rng(count + len(frame_id))
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = int(rng.integers(0, 2**31)), int(rng.integers(0, 10**9))
    corners = np.sort(rng.random((count, 2, 2)) * 1920, axis=1).reshape(count, 4)[:, [0, 2, 1, 3]]
    detections = Detections(corners.astype(np.float32), rng.random(count).astype(np.float32),
                            rng.integers(0, len(CLASSES) + 2, count))  # two ids without a name
    expected = detection_array(header, detections, CLASSES)
    data = detection_array_cdr(header, detections, CLASSES)
    assert len(data) == len(serialize_message(expected))
    assert deserialize_message(data, Detection2DArray) == expected


def test_start_up_check_accepts_this_layout_and_refuses_a_writer_that_is_off(monkeypatch):
    assert detections_bytes_supported()
    original = detections_cdr.detection_array_cdr
    monkeypatch.setattr(detections_cdr, "detection_array_cdr", lambda *a: original(*a)[:-4])  # torn
    assert not detections_bytes_supported()
    monkeypatch.setattr(detections_cdr, "detection_array_cdr",
                        lambda *a: original(*a).replace(b"car", b"cat"))  # same length, other content
    assert not detections_bytes_supported()
