"""Outputs the node publishes as bytes it writes itself (`messages.detections_cdr`), used only
where this ROS installation's own serialization agrees: checked once, on a sample, at start-up."""
from __future__ import annotations

import numpy as np

from mtl_perception.inference.postprocess import Detections
from mtl_perception.messages import detections_cdr
from mtl_perception.messages.outputs import detection_array


def detections_bytes_supported() -> bool:
    """Whether `detection_array_cdr`'s bytes are, for this installation's vision_msgs and
    middleware, the message `detection_array` builds: same length as rclpy's serialization and
    deserialized by rclpy into an equal message (padding bytes aside, which rclpy leaves as they
    happen to be in memory)."""
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2DArray

    header = Header(frame_id="camera_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123_456_789
    sample = Detections(np.array([[1.5, 2.25, 30.0, 40.5], [0.0, 0.0, 1.0, 1.0]], np.float32),
                        np.array([0.9, 0.25], np.float32), np.array([0, 7]))
    reference = detection_array(header, sample, ["car", "person"])
    try:
        data = detections_cdr.detection_array_cdr(header, sample, ["car", "person"])
        same_length = len(data) == len(serialize_message(reference))
        return same_length and deserialize_message(data, Detection2DArray) == reference
    except Exception:  # any other layout: the messages are built instead
        return False
