"""Model outputs -> ROS messages: detections (vision_msgs 4.x), LabelInfo and the scaled
CameraInfo of an output image (depth, super-resolution).

The message builders import the message packages when called, so this module imports (and is
tested) without ROS.
"""
from __future__ import annotations

from typing import Any, List, Sequence

from mtl_perception.inference.postprocess import Detections
from mtl_perception.messages.image import scale_camera_info

__all__ = ["detection_array", "label_info", "scaled_camera_info", "sr_camera_info"]


def detection_array(header: Any, detections: Detections, class_names: Sequence[str]) -> Any:
    """vision_msgs/Detection2DArray (4.x fields): one Detection2D per box with the input header,
    bbox centre/size in input-image pixels and one hypothesis whose class_id is the class name
    (the class index as a string if the model's metadata has no name for it)."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray()
    msg.header = header
    items: List[Any] = []
    names = list(class_names)
    for (x1, y1, x2, y2), score, cls in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                            detections.classes.tolist()):
        det = Detection2D()
        det.header = header
        det.bbox.center.position.x = (x1 + x2) * 0.5
        det.bbox.center.position.y = (y1 + y2) * 0.5
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = names[cls] if 0 <= cls < len(names) else str(cls)
        hyp.hypothesis.score = score
        det.results = [hyp]
        items.append(det)
    msg.detections = items
    return msg


def label_info(header: Any, class_names: Sequence[str], threshold: float) -> Any:
    """vision_msgs/LabelInfo: class id i -> class_names[i], with the node's score threshold."""
    from vision_msgs.msg import LabelInfo, VisionClass

    msg = LabelInfo()
    msg.header = header
    entries = []
    for i, name in enumerate(class_names):
        entry = VisionClass()
        entry.class_id = i
        entry.class_name = str(name)
        entries.append(entry)
    msg.class_map = entries
    msg.threshold = float(threshold)
    return msg


def scaled_camera_info(info: Any, header: Any, image_width: int, image_height: int,
                       out_width: int, out_height: int) -> Any:
    """The camera's CameraInfo (for the input image's size) scaled to an output image of another
    size (image_proc's resize convention, `scale_camera_info`), carrying `header`: what
    `depth/camera_info` and `super_resolution/camera_info` publish, so that depth_image_proc,
    RViz and the node's own `points` read the intrinsics of the image they go with."""
    out = scale_camera_info(info, out_width / float(image_width), out_height / float(image_height),
                            width=out_width, height=out_height)
    out.header = header
    return out


#: The super-resolution image's CameraInfo (the same scaling; the historical name).
sr_camera_info = scaled_camera_info
