"""2-D detection: vision_msgs/Detection2DArray in camera pixels (score threshold and cap from
the settings) and the boxes drawn on the camera image (live node, on demand); COCO mAP; "no
detections" as the baseline."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from mtl_perception.evaluation.metrics import DetectionMetric
from mtl_perception.inference.postprocess import draw_detections, select_detections
from mtl_perception.inference.preprocess import FrameMapping, ModelInput
from mtl_perception.kinds.base import (
    DetectionsOut,
    ImageOut,
    Kind,
    Outputs,
    Payload,
    RenderSettings,
    Topic,
)
from mtl_perception.messages.outputs import detections_from_msg
from mtl_perception.messages.types import DETECTIONS, IMAGE

#: Score above which a detection counts in the per-frame "detections@" column of bag reports.
FRAME_COUNT_THRESHOLD = 0.3


class Detection(Kind):
    name = "detection"
    topics = (
        Topic("detections", DETECTIONS, "small"),
        Topic("detections/image", IMAGE, "image", on_demand=True, live_only=True),
    )
    label = "boxes"
    headline = ("map50", "map50_95")

    def metric(self, spec: Any) -> DetectionMetric:
        return DetectionMetric(class_names=spec.class_names)

    def score(self, metric: Any, output: Outputs, target: Mapping[str, Any], color_order: str) -> bool:
        if target.get("boxes") is None or target.get("labels") is None:
            return False
        metric.update(output["boxes"], output["scores"], output["classes"], target["boxes"], target["labels"])
        return True

    def baseline(self, spec: Any, labels: Sequence[np.ndarray]) -> Optional[Dict[str, Any]]:
        return {"name": "no detections", "map50": 0.0, "map50_95": 0.0}

    def frame_extras(self, output: Outputs, target: Mapping[str, Any]) -> Dict[str, float]:
        return {f"detections@{FRAME_COUNT_THRESHOLD:g}":
                float(np.sum(np.asarray(output["scores"]) >= FRAME_COUNT_THRESHOLD)),
                "ground_truth_boxes": float(len(target["boxes"]))}

    def render(self, spec: Any, output: Outputs, frame: ModelInput, settings: RenderSettings,
               wanted: Callable[[str], bool]) -> Dict[str, Payload]:
        want_boxes, want_image = wanted("detections"), wanted("detections/image")
        if not (want_boxes or want_image):
            return {}
        dets = select_detections(output["boxes"], output["scores"], output["classes"], mapping=frame.mapping,
                                 threshold=settings.score_threshold, max_detections=settings.max_detections)
        out: Dict[str, Payload] = {}
        if want_boxes:
            out["detections"] = DetectionsOut(dets, spec.class_names)
        if want_image:
            out["detections/image"] = ImageOut(draw_detections(frame.camera_color("bgr"), dets, spec.class_names),
                                               "bgr8")
        return out

    def decode(self, spec: Any, msgs: Mapping[str, Any], mapping: FrameMapping,
               color_order: str) -> Optional[Dict[str, np.ndarray]]:
        if "detections" not in msgs:
            return None
        boxes, scores, labels, _ = detections_from_msg(msgs["detections"], spec.class_names)
        return {"boxes": mapping.boxes_to_model(boxes), "scores": scores, "classes": labels}


KIND = Detection()
