"""The model contract: the metadata an exported ONNX file carries about itself.

One JSON document, stored in the ONNX `metadata_props` under `METADATA_KEY`, tells the runtime
everything it needs: the input (size, colour order), the tasks with their output tensor names
and meaning, and where the model came from. The exporter writes it with `ModelMetadata.to_json`
and the loader reads it with `ModelMetadata.from_json`, so both sides share this one definition.
"""
from __future__ import annotations

import json
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


@dataclass(frozen=True)
class TaskSpec:
    """One task served by the model: its kind, output tensor names by role, and its meaning."""

    kind: str
    outputs: Dict[str, str]
    class_names: Tuple[str, ...] = ()
    ignore_index: int = 255  # segmentation
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
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"metadata is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ContractError("metadata is not a JSON object")
        if doc.get("schema") != SCHEMA:
            raise ContractError(f"metadata schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ContractError(
                f"metadata schema_version is {version!r}; this runtime reads version {SCHEMA_VERSION}"
            )
        try:
            meta = cls(
                name=str(doc["name"]),
                input=InputSpec(**doc["input"]),
                tasks={name: _task_from_dict(t) for name, t in doc["tasks"].items()},
                provenance=dict(doc.get("provenance", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ContractError(f"metadata is missing or has a malformed field ({exc})") from None
        meta.validate()
        return meta

    def validate(self) -> None:
        """Checks the semantic rules a well-formed document must also follow."""
        if self.input.color_order not in COLOR_ORDERS:
            raise ContractError(f"input colour order {self.input.color_order!r} not in {COLOR_ORDERS}")
        if self.input.height <= 0 or self.input.width <= 0:
            raise ContractError(f"input size {self.input.width}x{self.input.height} is not positive")
        if not self.tasks:
            raise ContractError("metadata lists no tasks")
        seen: Dict[str, str] = {}
        for name, task in self.tasks.items():
            roles = TASK_KINDS.get(task.kind)
            if roles is None:
                raise ContractError(f"task {name!r} has unknown kind {task.kind!r} (known: {sorted(TASK_KINDS)})")
            missing = set(roles) - set(task.outputs)
            if missing:
                raise ContractError(f"task {name!r} lacks output roles {sorted(missing)}")
            for role, tensor in task.outputs.items():
                if tensor in seen:
                    raise ContractError(f"output tensor {tensor!r} is claimed by two tasks")
                seen[tensor] = name
            if task.kind in ("segmentation", "detection") and not task.class_names:
                raise ContractError(f"task {name!r} has no class_names")
            if task.kind == "depth" and not 0 <= task.min_depth < task.max_depth:
                raise ContractError(f"task {name!r} has an invalid depth range")
            if task.kind == "detection" and task.top_k <= 0:
                raise ContractError(f"task {name!r} has no positive top_k")
            if task.kind == "super_resolution" and task.scale < 1:
                raise ContractError(f"task {name!r} has no valid scale")

    def output_names(self) -> List[str]:
        return [tensor for task in self.tasks.values() for tensor in task.outputs.values()]


def _task_from_dict(doc: Mapping[str, Any]) -> TaskSpec:
    doc = dict(doc)
    doc["class_names"] = tuple(doc.get("class_names", ()))
    doc["outputs"] = dict(doc["outputs"])
    return TaskSpec(**doc)
