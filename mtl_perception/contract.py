"""The model contract: the metadata an exported ONNX file carries about itself.

One JSON document, stored in the ONNX `metadata_props` under `METADATA_KEY`, tells the runtime
everything it needs: the input (size, colour order), the tasks with their output tensor names
and meaning, and where the model came from. The exporter writes it with `ModelMetadata.to_json`
and the loader reads it with `ModelMetadata.from_json`, so both sides share this one definition.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

METADATA_KEY = "mtl_perception"
SCHEMA = "mtl_perception.inference.model"
SCHEMA_VERSION = 1

#: Task kinds the runtime knows how to publish, with the output roles each one must provide
#: (role -> (ONNX element type, shape without the batch dimension as a description)).
TASK_KINDS: Dict[str, Dict[str, str]] = {
    "segmentation": {"class_map": "uint8 [H, W] class ids, 255 = unlabelled"},
    "depth": {"depth": "float32 [H, W] metres, NaN where invalid"},
    "detection": {
        "boxes": "float32 [K, 4] x1, y1, x2, y2 in input pixels",
        "scores": "float32 [K] descending",
        "classes": "int32 [K] index into class_names",
    },
    "super_resolution": {"image": "uint8 [H*s, W*s, 3] in the input colour order"},
}

COLOR_ORDERS = ("rgb", "bgr")

#: How a camera frame of another aspect ratio becomes the model's fixed input (`input.resize`;
#: `mtl_perception.inference.preprocess.FrameMapping` implements it), with what that means for
#: the dense outputs (class map, depth, SR image), which always cover the model input pixel for
#: pixel (at `scale` times its size for SR). Metadata without the field reads as "stretch".
RESIZE_MODES: Dict[str, str] = {
    "stretch": "the whole camera frame scaled to the input, each axis on its own (the aspect ratio is not "
               "kept); dense outputs cover the whole frame",
    "letterbox": "the whole camera frame scaled by one factor to fit inside the input, centred, the rest "
                 "padded with grey 114; dense outputs cover the input, their padded border is not image",
    "crop": "the camera frame scaled by one factor to fill the input, centred, the overhang cut off; dense "
            "outputs cover only that centre crop of the camera frame",
}

#: The segmentation id of "no label / not image" (ground truth, and the class map outside the image).
IGNORE_ID = 255


class ContractError(ValueError):
    """The metadata does not follow the contract; the message says what is wrong."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    height: int
    width: int
    color_order: str = "rgb"
    layout: str = "NHWC"
    dtype: str = "uint8"
    resize: str = "stretch"  # a key of RESIZE_MODES
    #: what the dense outputs cover (RESIZE_MODES[resize], written by the exporter; for people)
    dense_outputs: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """One task served by the model: its kind, output tensor names by role, and its meaning."""

    kind: str
    outputs: Dict[str, str]
    class_names: Tuple[str, ...] = ()
    ignore_index: int = IGNORE_ID  # segmentation
    min_depth: float = 0.0  # depth, metres
    max_depth: float = 0.0  # depth, metres
    top_k: int = 0  # detection
    scale: int = 0  # super-resolution factor


@dataclass
class ModelMetadata:
    name: str
    input: InputSpec
    tasks: Dict[str, TaskSpec]
    provenance: Dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        doc = asdict(self)
        for task in doc["tasks"].values():
            task["class_names"] = list(task["class_names"])
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        """Parses and checks a document: every field's type and value; a problem is one
        `ContractError` line naming the field by its dotted path (e.g. `tasks.detection.top_k`)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"metadata is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ContractError("metadata is not a JSON object")
        if doc.get("schema") != SCHEMA:
            raise ContractError(f"metadata field schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
        version = doc.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:  # true and 1.0 are not version 1
            raise ContractError(f"metadata field schema_version is {version!r} ({_type_name(version)}); this "
                                f"runtime reads version {SCHEMA_VERSION}, an integer")
        _no_unknown_keys(doc, {"name", "input", "tasks", "provenance", "schema", "schema_version"}, "")
        tasks = _required(doc, "tasks", "", dict)
        meta = cls(
            name=_required(doc, "name", "", str),
            input=_build(InputSpec, _required(doc, "input", "", dict), "input"),
            tasks={name: _build(TaskSpec, _object(spec, f"tasks.{name}"), f"tasks.{name}")
                   for name, spec in tasks.items()},
            provenance=_object(doc.get("provenance", {}), "provenance"),
        )
        meta.validate()
        return meta

    def validate(self) -> None:
        """Checks the semantic rules a well-formed document must also follow (field types are
        `from_json`'s; this also runs on metadata built in Python, e.g. by the exporter)."""
        _validate_input(self.input)
        if not self.name:
            raise ContractError("metadata field name is empty")
        if not self.tasks:
            raise ContractError("metadata field tasks lists no tasks")
        seen: Dict[str, str] = {}
        for name, task in self.tasks.items():
            _validate_task(name, task)
            for role, tensor in task.outputs.items():
                if tensor in seen:
                    raise ContractError(f"metadata field tasks.{name}.outputs.{role}: output tensor {tensor!r} "
                                        f"is claimed by tasks {seen[tensor]!r} and {name!r}")
                seen[tensor] = name

    def output_names(self) -> List[str]:
        return [tensor for task in self.tasks.values() for tensor in task.outputs.values()]


#: Input conventions the contract defines (the graph takes exactly this; see the module doc).
INPUT_LAYOUTS = ("NHWC",)
INPUT_DTYPES = ("uint8",)


#: How the exporter states the graph's own input convention in the ONNX graph's doc string, apart
#: from the metadata: the colour order cannot be seen in a tensor's type, so the loader compares
#: the metadata's claim with this statement (`input image: uint8 NHWC rgb`).
GRAPH_INPUT_NOTE = "input {name}: {dtype} {layout} {color_order}"
_GRAPH_INPUT_NOTE_RE = re.compile(r"input (?P<name>\S+): (?P<dtype>\w+) (?P<layout>\w+) (?P<color_order>\w+)")


def graph_input_note(spec: InputSpec) -> str:
    """The graph doc string the exporter writes for an input (see `GRAPH_INPUT_NOTE`)."""
    return GRAPH_INPUT_NOTE.format(**asdict(spec))


def read_graph_input_note(text: str) -> Dict[str, str]:
    """The input convention stated in a graph doc string ({} when it states none)."""
    match = _GRAPH_INPUT_NOTE_RE.search(text or "")
    return match.groupdict() if match else {}


def _validate_input(spec: InputSpec) -> None:
    if not spec.name:
        raise ContractError("metadata field input.name is empty")
    if spec.color_order not in COLOR_ORDERS:
        raise ContractError(f"metadata field input.color_order is {spec.color_order!r}, not one of {COLOR_ORDERS}")
    if spec.layout not in INPUT_LAYOUTS:
        raise ContractError(f"metadata field input.layout is {spec.layout!r}; the contract's input is "
                            f"{INPUT_LAYOUTS[0]}")
    if spec.dtype not in INPUT_DTYPES:
        raise ContractError(f"metadata field input.dtype is {spec.dtype!r}; the contract's input is {INPUT_DTYPES[0]}")
    if spec.resize not in RESIZE_MODES:
        raise ContractError(f"metadata field input.resize is {spec.resize!r}, not one of {tuple(RESIZE_MODES)}")
    for key in ("height", "width"):
        if getattr(spec, key) <= 0:
            raise ContractError(f"metadata field input.{key} is {getattr(spec, key)}, not positive")


def _validate_task(name: str, task: TaskSpec) -> None:
    """The rules of one task's kind: its output roles and the fields that kind uses."""
    where = f"metadata field tasks.{name}"
    roles = TASK_KINDS.get(task.kind)
    if roles is None:
        raise ContractError(f"{where}.kind is {task.kind!r}, not a known kind ({sorted(TASK_KINDS)})")
    missing = sorted(set(roles) - set(task.outputs))
    extra = sorted(set(task.outputs) - set(roles))
    if missing or extra:
        raise ContractError(f"{where}.outputs has roles {sorted(task.outputs)}; a {task.kind} task has "
                            f"exactly {sorted(roles)}")
    if task.kind in ("segmentation", "detection"):
        if not task.class_names:
            raise ContractError(f"{where}.class_names is empty")
        if len(set(task.class_names)) != len(task.class_names) or not all(task.class_names):
            raise ContractError(f"{where}.class_names has empty or repeated names")
    if task.kind == "segmentation":
        if not 0 <= task.ignore_index <= 255:
            raise ContractError(f"{where}.ignore_index is {task.ignore_index}, not a uint8 value")
        if len(task.class_names) > task.ignore_index:
            raise ContractError(f"{where}.class_names has {len(task.class_names)} classes; class ids must stay "
                                f"below ignore_index {task.ignore_index}")
    if task.kind == "depth" and not 0 <= task.min_depth < task.max_depth:
        raise ContractError(f"{where}: min_depth {task.min_depth} and max_depth {task.max_depth} are not a "
                            f"valid range (0 <= min_depth < max_depth)")
    if task.kind == "detection" and task.top_k <= 0:
        raise ContractError(f"{where}.top_k is {task.top_k}, not positive")
    if task.kind == "super_resolution" and task.scale < 1:
        raise ContractError(f"{where}.scale is {task.scale}, not a positive integer factor")


# ----------------------------------------------------------------------------- typed parsing
def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _object(value: Any, path: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ContractError(f"metadata field {path} is {_type_name(value)} ({value!r:.40}), expected an object")
    return dict(value)


def _required(doc: Mapping[str, Any], key: str, path: str, kind: type) -> Any:
    where = f"{path}.{key}" if path else key
    if key not in doc:
        raise ContractError(f"metadata field {where} is missing")
    return _object(doc[key], where) if kind is dict else _typed(doc[key], "str", where)


def _no_unknown_keys(doc: Mapping[str, Any], known, path: str) -> None:
    unknown = sorted(set(doc) - set(known))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ContractError(f"metadata field {where} is not part of the contract (known: {sorted(known)})")


def _typed(value: Any, annotation: str, path: str) -> Any:
    """`value` checked against a dataclass field's annotation (as written in this module)."""
    def wrong(expected: str) -> ContractError:
        return ContractError(f"metadata field {path} is {_type_name(value)} ({value!r:.40}), expected {expected}")

    if annotation == "str":
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if annotation == "int":
        if type(value) is not int:  # bool is an int in Python, "50" and 50.0 are not integers here
            raise wrong("an integer")
        return value
    if annotation == "float":
        if type(value) not in (int, float) or not math.isfinite(value):
            raise wrong("a finite number")
        return float(value)
    if annotation == "Tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return tuple(value)
    if annotation == "Dict[str, str]":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise wrong("an object of strings")
        return dict(value)
    return value  # a field type this parser does not know is passed through as read


def _build(spec_type: type, doc: Dict[str, Any], path: str):
    """One dataclass from its JSON object: unknown keys refused, required ones present, every
    value of its field's type."""
    fields_ = {f.name: f for f in dataclasses.fields(spec_type)}
    _no_unknown_keys(doc, fields_, path)
    values = {}
    for name, f in fields_.items():
        if name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ContractError(f"metadata field {path}.{name} is missing")
            continue
        values[name] = _typed(doc[name], str(f.type), f"{path}.{name}")
    return spec_type(**values)
