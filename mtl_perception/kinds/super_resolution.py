"""Super-resolution: the enlarged image (bgr8) and the camera's CameraInfo scaled to it; PSNR
against bicubic upsampling, which is also the baseline."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from mtl_perception.evaluation.metrics import SuperResolutionMetric
from mtl_perception.inference.pixels import array_to_color
from mtl_perception.inference.preprocess import FrameMapping, ModelInput, resize_image
from mtl_perception.kinds.base import (
    ImageOut,
    Kind,
    Outputs,
    Payload,
    RenderSettings,
    ScaledCameraInfo,
    Topic,
)
from mtl_perception.messages.image import to_color
from mtl_perception.messages.types import CAMERA_INFO, IMAGE


class SuperResolution(Kind):
    name = "super_resolution"
    topics = (
        Topic("super_resolution", IMAGE, "image"),
        Topic("super_resolution/camera_info", CAMERA_INFO, "small"),
    )
    label = "hr_image"
    frame_keys = ("psnr", "psnr_bicubic")
    headline = ("psnr", "psnr_gain")
    needs_camera_info = True

    def metric(self, spec: Any) -> SuperResolutionMetric:
        return SuperResolutionMetric()

    def score(self, metric: Any, output: Outputs, target: Mapping[str, Any], color_order: str) -> bool:
        if target.get("hr_image") is None:
            return False
        sr = output["image"] if color_order == "rgb" else output["image"][..., ::-1]
        metric.update(sr, target["hr_image"], lowres=target.get("image"))
        return True

    def baseline(self, spec: Any, labels: Sequence[np.ndarray]) -> Optional[Dict[str, Any]]:
        return {"name": "bicubic upsampling (psnr_bicubic above)"}

    def render(self, spec: Any, output: Outputs, frame: ModelInput, settings: RenderSettings,
               wanted: Callable[[str], bool]) -> Dict[str, Payload]:
        image = output["image"]
        out: Dict[str, Payload] = {}
        if wanted("super_resolution"):
            out["super_resolution"] = ImageOut(array_to_color(image, settings.color_order + "8", "bgr"), "bgr8")
        if wanted("super_resolution/camera_info"):
            out["super_resolution/camera_info"] = ScaledCameraInfo(frame.mapping.scaled(spec.scale))
        return out

    def decode(self, spec: Any, msgs: Mapping[str, Any], mapping: FrameMapping,
               color_order: str) -> Optional[Dict[str, np.ndarray]]:
        if "super_resolution" not in msgs:
            return None
        sr = to_color(msgs["super_resolution"], order=color_order)
        want = mapping.scaled(spec.scale).size
        if (sr.shape[1], sr.shape[0]) != want:
            sr = resize_image(sr, want)
        return {"image": sr}


KIND = SuperResolution()
