"""Model outputs <-> ROS messages: detections (vision_msgs 4.x) both ways, LabelInfo and the
scaled CameraInfo of an output image (depth, super-resolution).

The message builders import the message packages when called, so this module imports (and is
tested) without ROS.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

from mtl_perception.inference.postprocess import Detections
from mtl_perception.messages.image import scale_camera_info, scale_intrinsics

__all__ = ["detection_array", "class_ids", "detections_from_msg", "label_info", "mapped_camera_info",
           "mapped_intrinsics"]


def detection_array(header: Any, detections: Detections, class_names: Sequence[str]) -> Any:
    """vision_msgs/Detection2DArray (4.x fields): one Detection2D per box with the input header,
    bbox centre/size in input-image pixels and one hypothesis whose class_id is the class name
    (the class index as a string if the model's metadata has no name for it)."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    msg = Detection2DArray()
    msg.header = header
    items: List[Any] = []
    for (x1, y1, x2, y2), score, class_id in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                                 class_ids(detections, class_names)):
        det = Detection2D()
        det.header = header
        det.bbox.center.position.x = (x1 + x2) * 0.5
        det.bbox.center.position.y = (y1 + y2) * 0.5
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = class_id
        hyp.hypothesis.score = score
        det.results = [hyp]
        items.append(det)
    msg.detections = items
    return msg


def class_ids(detections: Detections, class_names: Sequence[str]) -> List[str]:
    """The hypothesis class_id of each detection: its class name, or the class index as a string
    where the model's metadata has no name for it."""
    names = list(class_names)
    return [names[c] if 0 <= c < len(names) else str(c) for c in detections.classes.tolist()]


def detections_from_msg(msg: Any, class_names: Sequence[str]
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[str]]:
    """(boxes [N, 4] xyxy, scores [N], labels [N] 0-based, unknown) from a Detection2DArray.

    A detection's class is its best hypothesis' class_id: a class name, or the class index as a
    decimal string. Detections of classes not in `class_names` are left out; `unknown` lists
    their class ids ('' for a detection without hypotheses).
    """
    index = {str(name): i for i, name in enumerate(class_names)}
    boxes, scores, labels, unknown = [], [], [], []
    for det in msg.detections:
        if not det.results:
            unknown.append("")
            continue
        best = max(det.results, key=lambda r: r.hypothesis.score)
        cls = str(best.hypothesis.class_id)
        label = index.get(cls)
        if label is None and cls.isdigit() and int(cls) < len(class_names):
            label = int(cls)
        if label is None:
            unknown.append(cls)
            continue
        center = det.bbox.center
        position = getattr(center, "position", center)  # vision_msgs 4.x; 3.x had center.x / center.y
        cx, cy = position.x, position.y
        w, h = det.bbox.size_x, det.bbox.size_y
        boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        scores.append(float(best.hypothesis.score))
        labels.append(label)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
            np.asarray(labels, np.int64), unknown)


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


def mapped_camera_info(info: Any, header: Any, mapping: Any) -> Any:
    """The camera's CameraInfo for an output image made through `mapping` (a
    `preprocess.FrameMapping`: camera -> an image of `mapping.size`, scale then offset; image_proc's
    resize convention, `scale_camera_info`), carrying `header`: what `depth/camera_info` and
    `super_resolution/camera_info` publish, so that depth_image_proc, RViz and the node's own
    `points` read the intrinsics of the image they go with, also through a letterbox or a crop."""
    (sx, sy), (ox, oy), (width, height) = mapping.scale, mapping.offset, mapping.size
    out = scale_camera_info(info, sx, sy, width=width, height=height, offset_x=ox, offset_y=oy)
    out.header = header
    return out


def mapped_intrinsics(info: Any, mapping: Any) -> np.ndarray:
    """Only the K of `mapped_camera_info` (what `points` back-projects through), without copying
    the whole CameraInfo."""
    (sx, sy), (ox, oy) = mapping.scale, mapping.offset
    return scale_intrinsics(info.k, sx, sy, ox, oy)
