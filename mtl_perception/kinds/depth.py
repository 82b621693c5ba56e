"""Monocular depth: metres as 32FC1 (NaN outside the model's range, REP 118), the camera's
CameraInfo scaled to the depth image and the point cloud through it (live node only); the Eigen
et al. errors; the median depth everywhere as the baseline."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from mtl_perception.evaluation.evaluate import scalars
from mtl_perception.evaluation.metrics import DepthMetric
from mtl_perception.inference.postprocess import valid_depth
from mtl_perception.inference.preprocess import FrameMapping, ModelInput
from mtl_perception.kinds.base import (
    ImageOut,
    Kind,
    Outputs,
    Payload,
    PointsOut,
    RenderSettings,
    ScaledCameraInfo,
    Topic,
)
from mtl_perception.messages.image import image_to_array
from mtl_perception.messages.types import CAMERA_INFO, IMAGE, POINTCLOUD2


class Depth(Kind):
    name = "depth"
    topics = (
        Topic("depth", IMAGE, "image"),
        Topic("depth/camera_info", CAMERA_INFO, "small", live_only=True),
        Topic("points", POINTCLOUD2, "image", on_demand=True, live_only=True),
    )
    label = "depth"
    baseline_label = True
    frame_keys = ("abs_rel", "delta1")
    needs_camera_info = True  # depth/camera_info and points
    headline = ("abs_rel", "delta1")

    def metric(self, spec: Any) -> DepthMetric:
        return DepthMetric(min_depth=spec.min_depth, max_depth=spec.max_depth)

    def score(self, metric: Any, output: Outputs, target: Mapping[str, Any], color_order: str) -> bool:
        if target.get("depth") is None:
            return False
        metric.update(output["depth"], target["depth"])
        return True

    def baseline(self, spec: Any, labels: Sequence[np.ndarray]) -> Optional[Dict[str, Any]]:
        if not labels:
            return None
        values = np.stack(labels)
        valid = np.isfinite(values) & (values > spec.min_depth) & (values <= spec.max_depth)
        median = float(np.median(values[valid])) if valid.any() else spec.max_depth
        metric = self.metric(spec)
        for gt in labels:
            metric.update(np.full(gt.shape, median, np.float32), gt)
        return {"name": f"constant median depth ({median:.1f} m)", **scalars(metric.compute())}

    def render(self, spec: Any, output: Outputs, frame: ModelInput, settings: RenderSettings,
               wanted: Callable[[str], bool]) -> Dict[str, Payload]:
        want = {topic: wanted(topic) for topic in ("depth", "depth/camera_info", "points")}
        if not any(want.values()):
            return {}
        # A copy: the model's output stays as it was for whoever scores or shows it.
        depth = valid_depth(np.array(output["depth"], np.float32), spec.min_depth, spec.max_depth)
        depth = frame.mapping.mask_padding(depth, np.nan)  # letterbox border: not image, invalid
        if settings.at_input:  # camera pixels outside a crop: invalid
            depth = frame.mapping.dense_to_camera(depth, np.nan)
        mapping = frame.mapping.at_camera() if settings.at_input else frame.mapping
        out: Dict[str, Payload] = {}
        if want["depth"]:
            out["depth"] = ImageOut(depth, "32FC1")
        if want["depth/camera_info"]:
            out["depth/camera_info"] = ScaledCameraInfo(mapping)
        if want["points"]:
            rgb = frame.camera_color("rgb") if settings.at_input else frame.resized_color("rgb")
            out["points"] = PointsOut(depth, mapping, rgb)
        return out

    def decode(self, spec: Any, msgs: Mapping[str, Any], mapping: FrameMapping,
               color_order: str) -> Optional[Dict[str, np.ndarray]]:
        if "depth" not in msgs:
            return None
        return {"depth": mapping.output_to_model(image_to_array(msgs["depth"]).astype(np.float32), np.nan)}


KIND = Depth()
