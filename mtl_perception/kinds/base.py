"""What a task kind provides to the runtime, and the values its pieces exchange.

A kind (one module beside this one, mirroring `training/tasks/`) declares its output topics and
turns one task's model outputs into the inputs of the message builders (`ImageOut`,
`DetectionsOut`, `ScaledCameraInfo`, `PointsOut`, `LabelsOut`): the node publishes them, output bags write
them, so both publish the same thing by construction. It also reads its outputs back from
recorded messages, owns its metric (from `mtl_perception.evaluation.metrics`), how a frame is
scored with it, and its trivial baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from mtl_perception.inference.postprocess import Detections
from mtl_perception.inference.preprocess import FrameMapping, ModelInput

__all__ = ["Topic", "RenderSettings", "ImageOut", "DetectionsOut", "ScaledCameraInfo", "PointsOut", "LabelsOut",
           "Payload", "Kind"]

#: QoS classes of output topics (the node maps them to profiles): camera-sized images keep the
#: newest only, small messages a few, latched ones are transient-local for late joiners.
QOS_CLASSES = ("image", "small", "latched")


@dataclass(frozen=True)
class Topic:
    """One output topic of a kind, relative to the node's namespace.

    Every per-frame topic is built only while somebody subscribes to it. `on_demand` marks a
    view rendered from other outputs (an overlay): recorders leave it out, since recording it
    would make the node do work nobody else asked for. A topic that is not `per_frame` is
    published once on activation and when a setting it shows changes (latched). `live_only`
    marks what only the live node publishes (it needs the live CameraInfo, or is a view for
    people): `topics()` lists it only when asked for `live` topics, and `render` builds it only
    when `wanted` names it, so output bags, the benchmark and the demo leave it out."""

    name: str
    msgtype: str
    qos: str
    per_frame: bool = True
    on_demand: bool = False
    live_only: bool = False


@dataclass(frozen=True)
class RenderSettings:
    """How outputs are turned into messages: the node's run-time parameters, an output bag's options."""

    output_resolution: str = "model"  # "model" or "input" (camera) size of dense outputs
    score_threshold: float = 0.3
    max_detections: int = 100
    overlay_alpha: float = 0.5
    color_order: str = "rgb"  # the model's colour order

    @property
    def at_input(self) -> bool:
        return self.output_resolution == "input"


@dataclass(frozen=True)
class ImageOut:
    """A sensor_msgs/Image to build: pixels and encoding (the frame's header is added)."""

    array: np.ndarray
    encoding: str


@dataclass(frozen=True)
class DetectionsOut:
    """A vision_msgs/Detection2DArray to build from detections in camera pixels."""

    detections: Detections
    class_names: Sequence[str]


@dataclass(frozen=True)
class ScaledCameraInfo:
    """The camera's CameraInfo carried through `mapping` (camera -> an output image of
    `mapping.size`: scale and offset, so letterbox and crop move the principal point too);
    built only where the camera's CameraInfo is known."""

    mapping: FrameMapping

    @property
    def size(self) -> Tuple[int, int]:
        return self.mapping.size


@dataclass(frozen=True)
class PointsOut:
    """A sensor_msgs/PointCloud2 to build from `depth` (HxW metres, NaN invalid) through the
    camera's CameraInfo carried through `mapping` to the depth map (of `mapping.size`), each
    point coloured by `rgb` (HxWx3 uint8 at the depth map's size); built only where the
    CameraInfo is known."""

    depth: np.ndarray
    mapping: FrameMapping
    rgb: Optional[np.ndarray]


@dataclass(frozen=True)
class LabelsOut:
    """A vision_msgs/LabelInfo: class id -> name, with the score threshold."""

    class_names: Sequence[str]
    threshold: float


Payload = Any  # one of ImageOut, DetectionsOut, ScaledCameraInfo, PointsOut, LabelsOut
Outputs = Mapping[str, np.ndarray]  # one task's outputs by role (PerceptionModel.run)


class Kind:
    """Base of the kind modules; subclasses set the class attributes and override what they have."""

    name: str = ""
    topics: Tuple[Topic, ...] = ()
    label: Optional[str] = None  # key of this kind's ground truth in a frame's target dict
    baseline_label: bool = False  # the baseline needs this kind's labels (collected while scoring)
    frame_keys: Tuple[str, ...] = ()  # metric values reported per frame (plots, frames.csv)
    headline: Tuple[str, ...] = ()  # metric values of the one-line summaries
    needs_camera_info: bool = False  # subscribes to the camera's CameraInfo

    @property
    def primary(self) -> str:
        """The topic holding the kind's result (what recorded predictions are read from)."""
        return self.topics[0].name

    def metric(self, spec: Any) -> Any:
        """A fresh metric for one task (`contract.TaskSpec`) of this kind."""
        raise NotImplementedError

    def score(self, metric: Any, output: Outputs, target: Mapping[str, Any], color_order: str) -> bool:
        """Adds one frame to `metric`; False (nothing added) when the target has no label of this kind."""
        raise NotImplementedError

    def baseline(self, spec: Any, labels: Sequence[np.ndarray]) -> Optional[Dict[str, Any]]:
        """The trivial predictor's scores ({"name": ..., metric values}), None without labels."""
        raise NotImplementedError

    def frame_extras(self, output: Outputs, target: Mapping[str, Any]) -> Dict[str, float]:
        """Per-frame numbers besides `frame_keys` (e.g. detection counts)."""
        return {}

    def render(self, spec: Any, output: Outputs, frame: ModelInput, settings: RenderSettings,
               wanted: Callable[[str], bool]) -> Dict[str, Payload]:
        """Message builders' inputs of the per-frame topics `wanted(topic)` asks for."""
        raise NotImplementedError

    def latched(self, spec: Any, settings: RenderSettings) -> Dict[str, Payload]:
        """Builders' inputs of the topics that are not per frame."""
        return {}

    def decode(self, spec: Any, msgs: Mapping[str, Any], mapping: FrameMapping,
               color_order: str) -> Optional[Dict[str, np.ndarray]]:
        """The task's outputs, at the model's resolution, from recorded messages by relative
        topic (None when its topic is absent): what the node published, read back."""
        raise NotImplementedError
