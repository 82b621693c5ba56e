"""The parameters of `perception_node`, declared once: name, default, description, range or
choices, and whether they may change while the node is configured.

The node declares and validates from this table, `config/perception.yaml` documents the same
defaults (a test checks it), and the tools that start a node build its `-p` arguments through
`node_arguments`, which rejects unknown names and invalid values before a process is started.
The run-time adjustable ones (`Settings`) take their defaults from `kinds.base.RenderSettings`,
which output bags use too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from mtl_perception.inference.model import (
    ModelError,
    RuntimeOptions,
    normalise_provider_names,
)
from mtl_perception.kinds.base import RenderSettings

__all__ = ["Param", "PARAMETERS", "BY_NAME", "ROS_PARAMETERS", "Settings", "validate", "defaults",
           "node_arguments", "format_value", "runtime_options", "IMAGE_QOS_MODES"]


@dataclass(frozen=True)
class Settings:
    """The run-time adjustable parameters, swapped atomically by the node when one changes."""

    score_threshold: float = RenderSettings.score_threshold
    max_detections: int = RenderSettings.max_detections
    output_resolution: str = RenderSettings.output_resolution
    overlay_alpha: float = RenderSettings.overlay_alpha
    input_timeout: float = 5.0

    def render(self, color_order: str) -> RenderSettings:
        """How the node turns outputs into messages with these settings."""
        return RenderSettings(output_resolution=self.output_resolution, score_threshold=self.score_threshold,
                              max_detections=self.max_detections, overlay_alpha=self.overlay_alpha,
                              color_order=color_order)


_RUNTIME = {f.name: f.default for f in fields(Settings)}
#: image_qos values (`ros.qos.decide_image_qos` turns them into a subscription profile).
IMAGE_QOS_MODES = ("auto", "reliable", "best_effort")


@dataclass(frozen=True)
class Param:
    """One node parameter. `float_range` / `int_range` / `choices` are both the ROS descriptor
    and the validation; `check(value)` says what else is wrong ('' when fine)."""

    name: str
    default: Any
    description: str
    float_range: Optional[Tuple[float, float]] = None
    int_range: Optional[Tuple[int, int]] = None
    choices: Optional[Tuple[str, ...]] = None
    check: Optional[Callable[[Any], str]] = None

    @property
    def runtime(self) -> bool:
        """Adjustable while the node is configured (else only while unconfigured: the model or
        the subscriptions would have to be made again)."""
        return self.name in _RUNTIME


def _check_providers(value: Any) -> str:
    try:
        normalise_provider_names([p for p in value if p.strip()])
    except ModelError as exc:
        return str(exc)
    return ""


def _runtime(name: str, description: str, **kwargs: Any) -> Param:
    return Param(name, _RUNTIME[name], description, **kwargs)


PARAMETERS: Tuple[Param, ...] = (
    Param("model_path", "", "exported ONNX model, or a model bundle's manifest / folder (the runtime reads "
          "everything else from their metadata)"),
    Param("providers", ["tensorrt", "cuda", "cpu"], "execution providers in order of preference (tensorrt, cuda, "
          "cpu or onnxruntime names); unavailable ones are skipped, CPU is always the last resort",
          check=_check_providers),
    Param("fp16", False, "TensorRT FP16 kernels"),
    Param("trt_engine_cache_dir", "~/.cache/mtl_perception/tensorrt",
          "where TensorRT engines are cached so they are not rebuilt on every start ('' disables)"),
    Param("intra_op_threads", 0, "onnxruntime intra-op threads (0: its default)", int_range=(0, 256)),
    Param("thread_spinning", False, "let onnxruntime's intra-op threads busy-wait between inferences (they then "
          "burn CPU that publishing and other processes need; off measured faster end to end on a 2-core CPU)"),
    Param("image_qos", "auto", "reliability of the image subscription, KEEP_LAST 1: 'auto' (default: best effort "
          "while any publisher on the topic is best effort, else reliable; re-decided when publishers come and go), "
          "'reliable' (loses no large frames across processes; does not match best-effort cameras) or 'best_effort'",
          choices=IMAGE_QOS_MODES),
    Param("input_transport", "raw", "'raw': sensor_msgs/Image on image; 'compressed': sensor_msgs/CompressedImage "
          "(jpeg/png) on image/compressed, i.e. the image topic's name + /compressed as image_transport names it",
          choices=("raw", "compressed")),
    _runtime("score_threshold", "minimum detection score published (run-time adjustable)", float_range=(0.0, 1.0)),
    _runtime("max_detections", "most detections published per frame (run-time adjustable)", int_range=(1, 10000)),
    _runtime("output_resolution", "size of segmentation and depth outputs: 'model' (network size) or 'input' "
             "(camera image size)", choices=("model", "input")),
    _runtime("overlay_alpha", "weight of the class colours in segmentation/color", float_range=(0.0, 1.0)),
    _runtime("input_timeout", "seconds without a frame, while a publisher is matched, before diagnostics warn",
             float_range=(0.1, 3600.0)),
    Param("diagnostics_period", 1.0, "seconds between /diagnostics messages", float_range=(0.05, 60.0)),
    Param("autostart", True, "configure and activate at start (no lifecycle manager needed)"),
)
BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMETERS}
#: Parameters every ROS node has, which `node_arguments` lets through.
ROS_PARAMETERS = ("use_sim_time",)


def defaults() -> Dict[str, Any]:
    """Every parameter's default, by name."""
    return {p.name: p.default for p in PARAMETERS}


def validate(name: str, value: Any) -> str:
    """Why `value` is invalid for parameter `name` ('' when it is fine or the name is not ours)."""
    param = BY_NAME.get(name)
    if param is None:
        return ""
    if param.float_range is not None:
        lo, hi = param.float_range
        if not (isinstance(value, float) and lo <= value <= hi):
            return f"must be a number in [{lo:g}, {hi:g}], got {value!r}"
    if param.int_range is not None:
        lo, hi = param.int_range
        if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
            return f"must be an integer in [{lo}, {hi}], got {value!r}"
    if param.choices is not None and value not in param.choices:
        return f"must be one of {', '.join(param.choices)}, got {value!r}"
    return param.check(value) if param.check is not None else ""


def format_value(value: Any) -> str:
    """A value as `--ros-args -p NAME:=VALUE` spells it (YAML); strings are passed as given."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def node_arguments(params: Mapping[str, Any]) -> List[str]:
    """`-p NAME:=VALUE` arguments for a node started with `params`. Typed values are validated
    here (an int for a float parameter is passed as a float); strings are passed as given (the
    node parses them as YAML and validates them). An unknown name or an invalid value is a
    ValueError naming it."""
    args: List[str] = []
    for name, value in params.items():
        param = BY_NAME.get(name)
        if param is None and name not in ROS_PARAMETERS:
            raise ValueError(f"unknown perception_node parameter {name!r} (known: {', '.join(BY_NAME)})")
        if param is not None and not isinstance(value, str):
            if isinstance(param.default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            reason = validate(name, value)
            if reason:
                raise ValueError(f"perception_node parameter {name}: {reason}")
        args += ["-p", f"{name}:={format_value(value)}"]
    return args


def runtime_options(values: Mapping[str, Any]) -> RuntimeOptions:
    """The loader's RuntimeOptions from node parameter values (missing ones: the defaults), for
    the node and the benchmark, which must run the model the same way. Thread spinning is off by
    default: busy-waiting onnxruntime threads take the CPU the node needs to publish (measured:
    stamp-to-published 24 -> 17.5 ms at 10 Hz on 2 cores)."""
    v = {**defaults(), **values}
    cache = str(v["trt_engine_cache_dir"])
    return RuntimeOptions(providers=[p for p in v["providers"] if p.strip()] or None, fp16=bool(v["fp16"]),
                          trt_engine_cache_dir=os.path.expanduser(cache) if cache else None,
                          intra_op_threads=int(v["intra_op_threads"]), allow_spinning=bool(v["thread_spinning"]))
