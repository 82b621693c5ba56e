"""Semantic segmentation: class ids (mono8), their colour overlay and the class names (LabelInfo);
mIoU / pixel accuracy; the majority class everywhere as the baseline."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from mtl_perception.evaluation.evaluate import scalars
from mtl_perception.evaluation.metrics import SegmentationMetric
from mtl_perception.inference.postprocess import overlay_segmentation
from mtl_perception.inference.preprocess import FrameMapping, ModelInput
from mtl_perception.kinds.base import (
    ImageOut,
    Kind,
    LabelsOut,
    Outputs,
    Payload,
    RenderSettings,
    Topic,
)
from mtl_perception.messages.image import image_to_array
from mtl_perception.messages.types import IMAGE, LABEL_INFO


class Segmentation(Kind):
    name = "segmentation"
    topics = (
        Topic("segmentation", IMAGE, "image"),
        Topic("segmentation/color", IMAGE, "image", on_demand=True),
        Topic("label_info", LABEL_INFO, "latched", per_frame=False),
    )
    label = "semantic"
    baseline_label = True
    frame_keys = ("miou", "pixel_acc")
    headline = ("miou", "pixel_acc")

    def metric(self, spec: Any) -> SegmentationMetric:
        return SegmentationMetric(num_classes=len(spec.class_names), ignore_index=spec.ignore_index,
                                  class_names=spec.class_names)

    def score(self, metric: Any, output: Outputs, target: Mapping[str, Any], color_order: str) -> bool:
        if target.get("semantic") is None:
            return False
        metric.update(output["class_map"], target["semantic"])
        return True

    def baseline(self, spec: Any, labels: Sequence[np.ndarray]) -> Optional[Dict[str, Any]]:
        if not labels:
            return None
        stacked = np.stack(labels)
        counts = np.bincount(stacked[stacked != spec.ignore_index].ravel(), minlength=len(spec.class_names))
        majority = int(np.argmax(counts))
        metric = self.metric(spec)
        for gt in labels:
            metric.update(np.full_like(gt, majority), gt)
        return {"name": f"majority class ({spec.class_names[majority]})", **scalars(metric.compute())}

    def render(self, spec: Any, output: Outputs, frame: ModelInput, settings: RenderSettings,
               wanted: Callable[[str], bool]) -> Dict[str, Payload]:
        want_ids, want_color = wanted("segmentation"), wanted("segmentation/color")
        if not (want_ids or want_color):
            return {}
        # letterbox border and camera pixels outside a crop: not image, the ignore id
        class_map = frame.mapping.mask_padding(output["class_map"], spec.ignore_index)
        if settings.at_input:
            class_map = frame.mapping.dense_to_camera(class_map, spec.ignore_index)
        out: Dict[str, Payload] = {}
        if want_ids:
            out["segmentation"] = ImageOut(class_map, "mono8")
        if want_color:
            base = frame.camera_color("bgr") if settings.at_input else frame.resized_color("bgr")
            overlay = overlay_segmentation(base, class_map, settings.overlay_alpha, spec.ignore_index)
            out["segmentation/color"] = ImageOut(overlay, "bgr8")
        return out

    def latched(self, spec: Any, settings: RenderSettings) -> Dict[str, Payload]:
        return {"label_info": LabelsOut(spec.class_names, settings.score_threshold)}

    def decode(self, spec: Any, msgs: Mapping[str, Any], mapping: FrameMapping,
               color_order: str) -> Optional[Dict[str, np.ndarray]]:
        if "segmentation" not in msgs:
            return None
        return {"class_map": mapping.output_to_model(image_to_array(msgs["segmentation"]), spec.ignore_index)}


KIND = Segmentation()
