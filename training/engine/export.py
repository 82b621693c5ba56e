"""Export a trained checkpoint as the self-describing ONNX model of the contract.

The graph takes one uint8 NHWC RGB image and returns decoded outputs (class map, depth in
metres, top-K boxes, uint8 SR image), so the vehicle side does almost nothing in Python. The
export verifies itself: onnxruntime (through the runtime's own loader) must reproduce torch on
real frames within the tolerances below, or no file is written.
"""
from __future__ import annotations

import datetime
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mtl_perception import __version__
from mtl_perception.contract import (
    METADATA_KEY,
    RESIZE_MODES,
    TASK_KINDS,
    InputSpec,
    ModelMetadata,
    graph_input_note,
)
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import RuntimeOptions
from mtl_perception.inference.preprocess import resize_sample
from training.engine.checkpoint import load_checkpoint
from training.engine.data import open_sources
from training.engine.network import checkpoint_recipe, network_from_checkpoint, tasks_from_checkpoint
from training.models.collapse import compact_copy, parameter_count
from training.recipe.core import Recipe
from training.tasks import Task

INPUT_NAME = "image"
#: ONNX IR version written; onnxruntime releases lag behind the newest onnx IR.
IR_VERSION = 10


class ExportError(RuntimeError):
    """The exported graph does not reproduce torch; nothing was written."""


@dataclass(frozen=True)
class Tolerances:
    segmentation_mismatch: float = 1e-3  # fraction of pixels whose class differs (argmax ties)
    depth_rel: float = 1e-3  # max relative depth difference
    detection_score: float = 1e-4  # max score difference
    detection_box_px: float = 0.05  # max box corner difference for confident detections
    sr_levels: int = 1  # max uint8 difference (rounding)


def output_names(tasks: Mapping[str, Task]) -> Dict[str, Dict[str, str]]:
    """Tensor names: the task name for single-output tasks, `<task>_<role>` otherwise."""
    names = {}
    for name, task in tasks.items():
        roles = list(TASK_KINDS[task.kind])
        names[name] = {role: name if len(roles) == 1 else f"{name}_{role}" for role in roles}
    return names


class DeployModule(nn.Module):
    """uint8 [1, H, W, 3] RGB in; every task's decoded outputs out, in `output_names` order.

    A task whose `export_head` gives a faster form of head + decode is exported in that form;
    `forward(image, fused=False)` is head + decode throughout, the reference `verify` holds the
    exported graph to."""

    def __init__(self, model: nn.Module, tasks: Mapping[str, Task]):
        super().__init__()
        self.model = model
        self.tasks = dict(tasks)
        self.roles = {name: list(TASK_KINDS[task.kind]) for name, task in tasks.items()}
        fused = {name: task.export_head(model.heads[name]) for name, task in tasks.items()}
        self.fused = nn.ModuleDict({name: head for name, head in fused.items() if head is not None})

    def forward(self, image: torch.Tensor, fused: bool = True):
        image01 = image.permute(0, 3, 1, 2).float() / 255.0
        inputs = self.model.head_inputs(self.model.features(image01))
        outputs: List[torch.Tensor] = []
        for name, task in self.tasks.items():
            if fused and name in self.fused:
                decoded = self.fused[name](inputs[name], image01)
            else:
                decoded = task.decode(self.model.heads[name](inputs[name], image01), image01)
            outputs.extend(decoded[role] for role in self.roles[name])
        return tuple(outputs)


def export_onnx(module: DeployModule, example: torch.Tensor, path: Path, opset: int, names: Sequence[str]) -> None:
    """torch.export-based exporter; its notes about optional torchvision ops are silenced."""
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=list(names),
                              opset_version=opset, dynamo=True, verbose=False)
    finally:
        quiet.setLevel(level)


def attach_metadata(path: Path, metadata: ModelMetadata) -> None:
    import onnx

    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, IR_VERSION)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    model.graph.doc_string = graph_input_note(metadata.input)  # what the loader checks the colour order by
    model.producer_name = "mtl_perception"
    model.producer_version = __version__
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def verify(path: Path, module: DeployModule, frames: Sequence[np.ndarray],
           tol: Tolerances = Tolerances()) -> Dict[str, float]:
    """Compares onnxruntime (via the runtime loader) with torch's head + decode (the unfused
    reference, so a task's `export_head` is checked too); returns the worst differences."""
    runtime = load_model(path, RuntimeOptions(providers=["cpu"]))
    worst: Dict[str, float] = {}

    def note(key: str, value: float, limit: float) -> None:
        worst[key] = max(worst.get(key, 0.0), float(value))
        if value > limit:
            tied = int(worst.get(key.split(".")[0] + ".tie_order_boxes", 0))
            because = (f" (besides {tied} boxes that differ only in the order of tied scores at the top-K cut-off)"
                       if tied else "")
            raise ExportError(f"onnxruntime differs from torch: {key} = {value:.3g} > {limit:g}{because}")

    for frame in frames:
        with torch.no_grad():
            reference = module(torch.from_numpy(frame[None]), fused=False)
        flat = iter(t[0].numpy() for t in reference)
        expected = {name: {role: next(flat) for role in roles} for name, roles in module.roles.items()}
        got = runtime.run(frame)
        for name, task in module.tasks.items():
            e, g = expected[name], got[name]
            if task.kind == "segmentation":
                note(f"{name}.mismatch_fraction", np.mean(e["class_map"] != g["class_map"]), tol.segmentation_mismatch)
            elif task.kind == "depth":
                note(f"{name}.max_rel", np.max(np.abs(e["depth"] - g["depth"]) / e["depth"]), tol.depth_rel)
            elif task.kind == "super_resolution":
                diff = np.abs(e["image"].astype(np.int16) - g["image"].astype(np.int16)).max()
                note(f"{name}.max_levels", diff, tol.sr_levels)
            elif task.kind == "detection":
                note(f"{name}.max_score", _score_difference(e["scores"], g["scores"]), tol.detection_score)
                box_px, tied = _box_difference(e, g, tol.detection_box_px)
                worst[f"{name}.tie_order_boxes"] = max(worst.get(f"{name}.tie_order_boxes", 0.0), float(tied))
                note(f"{name}.max_box_px", box_px, tol.detection_box_px)
    return worst


def _score_difference(expected: np.ndarray, got: np.ndarray, min_score: float = 0.05) -> float:
    """Largest gap between a confident score on either side and the nearest score on the other.
    Not the sorted lists compared index by index: a faint peak (two neighbouring pixels within
    rounding of each other) can be a local maximum on one side only, which shifts the tail of the
    top-K list without any confident output differing."""
    worst = 0.0
    for a, b in ((expected, got), (got, expected)):
        for score in a[a >= min_score]:
            worst = max(worst, float(np.min(np.abs(b - score))) if b.size else float(score))
    return worst


def _box_difference(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], box_tol: float,
                    min_score: float = 0.05, score_tol: float = 1e-4) -> tuple:
    """(worst box difference, boxes that differ only by tie order): each confident torch box vs
    the nearest onnxruntime box of the same class among those with the same score, so equal
    scores may come in any order. Where more peaks tie at the top-K cut-off score than fit in
    the list (a saturated heatmap: many scores exactly 1.0), each side keeps its own subset of
    the tied peaks; a box of that cut-off group without a partner is counted as tie order,
    not as a difference (its score is checked by `_score_difference`)."""
    scores = expected["scores"]
    cutoff = float(scores.min()) if scores.size else 0.0
    worst, tied = 0.0, 0
    for box, score, cls in zip(expected["boxes"], scores, expected["classes"]):
        if score < min_score:
            continue
        same = np.flatnonzero((got["classes"] == cls) & (np.abs(got["scores"] - score) <= score_tol))
        distance = float(np.abs(got["boxes"][same] - box).max(axis=1).min()) if same.size else float("inf")
        if abs(float(score) - cutoff) <= score_tol and distance > box_tol:  # may have been cut by the tie order
            tied += 1
            continue
        worst = max(worst, distance)
    return worst, tied


def export_checkpoint(checkpoint: str | os.PathLike, out_path: str | os.PathLike,
                      frames: Optional[Sequence[np.ndarray]] = None, name: Optional[str] = None,
                      opset: Optional[int] = None) -> Dict[str, float]:
    """Checkpoint -> verified ONNX at out_path (atomic). `frames` are HxWx3 uint8 RGB images at
    the model's input size used for verification; without them, the recipe's validation set is
    used. Returns the verification's worst differences."""
    state = load_checkpoint(checkpoint)
    tasks = tasks_from_checkpoint(state)
    recipe = state["recipe"]
    trained = network_from_checkpoint(state, tasks, source=str(checkpoint))
    width, height = state["data_info"]["input_size"]
    typed = checkpoint_recipe(state)
    resize = typed.data.resize  # checkpoints from before data.resize read as stretch
    if frames is None:
        frames = validation_frames(typed, (width, height), int(state["data_info"]["sr_scale"]),
                                   typed.export.verify_frames)
    model = compact_copy(trained)  # over-parameterised layers collapsed, BN folded
    collapse_error = check_compact(trained, model, frames)
    module = DeployModule(model, tasks).eval()
    names = output_names(tasks)
    metadata = ModelMetadata(
        name=name or recipe["name"],
        input=InputSpec(name=INPUT_NAME, height=height, width=width, color_order="rgb", resize=resize,
                        dense_outputs=RESIZE_MODES[resize]),
        tasks={t: task.spec(names[t]) for t, task in tasks.items()},
        provenance={
            "recipe": recipe, "seed": recipe["seed"], "data": {"train": recipe["data"]["train"]},
            "epoch": state["epoch"], "metrics": _last_validation(state["history"]),
            "init_fingerprint": state["init_fingerprint"], "torch": torch.__version__,
            "parameters": parameter_count(model), "training_parameters": parameter_count(trained),
            "mtl_perception": __version__, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        },
    )
    metadata.validate()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # a private folder beside the target: the exporter may write side files there (external
    # weights, `<name>.data`, which attach_metadata folds into the one file); all of it goes
    # away, and the model appears at out_path in one atomic rename, or not at all
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent) as work:
        tmp = Path(work) / out_path.name
        example = torch.from_numpy(np.ascontiguousarray(frames[0][None]))
        export_onnx(module, example, tmp, opset or recipe["export"]["opset"], metadata.output_names())
        attach_metadata(tmp, metadata)
        worst = verify(tmp, module, frames)
        os.replace(tmp, out_path)
    for key, count in worst.items():
        if key.endswith(".tie_order_boxes") and count:
            task = key.split(".")[0]
            warnings.warn(f"{out_path.name}: up to {int(count)} {task} boxes per frame differ between torch and "
                          f"onnxruntime only in which of the peaks tied at the top-K cut-off score they keep "
                          f"(a saturated heatmap); every other box matches", UserWarning, stacklevel=2)
    return {"collapse.max_rel": collapse_error, **worst}


def check_compact(trained: nn.Module, compact: nn.Module, frames: Sequence[np.ndarray],
                  tolerance: float = 1e-4) -> float:
    """Raw predictions of the collapsed, BN-folded network vs the trained one on real frames;
    returns the worst difference relative to each output's scale, ExportError above `tolerance`."""
    worst = 0.0
    with torch.no_grad():
        for frame in frames:
            image01 = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0
            for a, b in zip(_flatten(trained(image01)), _flatten(compact(image01))):
                worst = max(worst, float((a - b).abs().max() / (a.abs().max() + 1e-6)))
    if worst > tolerance:
        raise ExportError(f"the collapsed network differs from the trained one: max relative difference "
                          f"{worst:.3g} > {tolerance:g}")
    return worst


def _flatten(preds) -> List[torch.Tensor]:
    if torch.is_tensor(preds):
        return [preds]
    if isinstance(preds, dict):
        return [t for key in sorted(preds) for t in _flatten(preds[key])]
    return [t for value in preds for t in _flatten(value)]


def validation_frames(recipe: Recipe, input_size, sr_scale: int, count: int) -> List[np.ndarray]:
    """Network-input frames from the recipe's validation set (the same resize as training): a
    folder, or a list of sources (public datasets read in place)."""
    source = open_sources(recipe.data.val, where="data.val")
    picks = np.linspace(0, len(source) - 1, num=min(count, len(source))).astype(int)
    return [resize_sample(source.load(int(i)), input_size, sr_scale, recipe.data.resize)["image"] for i in picks]


def _last_validation(history: Sequence[Mapping[str, float]]) -> Dict[str, float]:
    if not history:
        return {}
    return {k: v for k, v in history[-1].items() if k.startswith("val/")}
