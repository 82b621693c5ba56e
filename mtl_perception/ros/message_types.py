"""rclpy message classes of the type names in `messages.types`, and the publisher QoS of each
output topic class (`kinds.base.Topic.qos`): how the ROS layer turns the kinds' declarations
into publishers and subscriptions."""
from __future__ import annotations

from typing import Dict

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from vision_msgs.msg import Detection2DArray, LabelInfo

from mtl_perception.messages.types import (
    CAMERA_INFO,
    CLOCK,
    COMPRESSED_IMAGE,
    DETECTIONS,
    DIAGNOSTICS,
    IMAGE,
    LABEL_INFO,
    POINTCLOUD2,
)

MESSAGE_CLASSES: Dict[str, type] = {
    IMAGE: Image, COMPRESSED_IMAGE: CompressedImage, CAMERA_INFO: CameraInfo, POINTCLOUD2: PointCloud2,
    DETECTIONS: Detection2DArray,
    LABEL_INFO: LabelInfo, DIAGNOSTICS: DiagnosticArray, CLOCK: Clock,
}


def message_class(type_name: str) -> type:
    """The rclpy class of a message type name ("sensor_msgs/msg/Image")."""
    try:
        return MESSAGE_CLASSES[type_name]
    except KeyError:
        raise ValueError(f"no rclpy class known for message type {type_name!r}") from None


def publisher_qos(qos_class: str) -> QoSProfile:
    """The node's publisher profile of an output topic class: 'image' keeps the newest frame
    only, 'small' ten messages, 'latched' the last one for late subscribers (transient local)."""
    if qos_class == "image":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
    if qos_class == "small":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
    if qos_class == "latched":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    raise ValueError(f"unknown QoS class {qos_class!r} (expected image, small or latched)")
