"""Inference cost of a model: parameters, multiply-accumulates, torch and onnxruntime latency.

`model_cost(recipe_or_model, input_size)` measures one network; `compare_architectures(recipe,
architectures)` builds the recipe's model once per trunk architecture (shared, cross_stitch,
nddr, mtan), exports each to ONNX on the fly (untrained weights: cost does not depend on them)
and reports every number beside the shared trunk's, so the price of soft sharing is visible.

Everything is measured on the network as it would be exported: over-parameterised layers
collapsed, and for latency BN folded (`compact_copy`). Latencies are medians over `runs` timed
single-image runs after a warm-up, one thread (torch: `torch.set_num_threads(1)`;
onnxruntime: one intra-op thread, CPU provider). The comparison times the models in interleaved
rounds, so a change of load on the machine hits all of them alike: the ratios are the numbers
to read; absolute values depend on the machine. MACs count convolutions and linear layers
(`conv_flops`), not element-wise products (cross-stitch mixing, attention masks: a few
multiplies per feature value).
"""
from __future__ import annotations

import copy
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from mtl_perception.contract import InputSpec, ModelMetadata
from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.data.synthetic.world import DETECTION_CLASSES, SEMANTIC_CLASSES
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import RuntimeOptions
from training.engine.export import DeployModule, attach_metadata, export_onnx, output_names
from training.engine.network import make_tasks, network_from_recipe
from training.experiments.timing import time_interleaved
from training.models.collapse import KINDS, apply_overparam, collapse, compact_copy, conv_flops, parameter_count
from training.models.registry import TRUNKS
from training.recipe.core import Recipe, recipe_from_dict
from training.recipe.overparam import OverparamConfig
from training.tasks import DataInfo

#: the built-in trunks, the default set compared
ARCHITECTURES = ("shared", "cross_stitch", "nddr", "mtan")

WARMUP_RUNS = 3  # untimed calls per model before the timed rounds


def recipe_tasks(recipe) -> dict:
    """The recipe's tasks, with class lists from its training set's dataset.json when it exists
    and the synthetic world's otherwise (cost hardly depends on them)."""
    semantic, detection = SEMANTIC_CLASSES, DETECTION_CLASSES
    if (Path(recipe.data.train) / "dataset.json").exists():
        source = MultiTaskDataset(recipe.data.train)
        semantic, detection = tuple(source.semantic_classes), tuple(source.detection_classes)
    info = DataInfo(semantic_classes=tuple(semantic), detection_classes=tuple(detection),
                    sr_scale=recipe.data.sr_scale, input_size=tuple(recipe.data.input_size))
    return make_tasks(recipe, info)


def build_recipe_model(recipe, architecture: Optional[str] = None, expanded: bool = True) -> Tuple[nn.Module, dict]:
    """(untrained model, tasks) of a recipe (the one builder, `network_from_recipe`), optionally
    with another trunk architecture; over-parameterised as the recipe says unless `expanded` is False."""
    if architecture is not None:
        # architecture only: a balancer that needs the shared trunk's representation must not refuse it
        recipe = variant(recipe, model={**recipe.to_dict()["model"], "architecture": architecture},
                         balancer={"name": "fixed"})
    tasks = recipe_tasks(recipe)
    torch.manual_seed(recipe.seed)
    return network_from_recipe(recipe, tasks, expanded=expanded).eval(), tasks


def _prepare(model: nn.Module, input_size: Sequence[int], tasks: Optional[Mapping], onnx: bool,
             folder: Optional[Path]) -> Tuple[Dict[str, float], Dict[str, Callable[[], object]]]:
    """({"params", "flops"}, {latency key: a function running one image}) for one model."""
    width, height = int(input_size[0]), int(input_size[1])
    counted = collapse(copy.deepcopy(model)).eval()  # the compact layers, BN not yet folded
    deployed = compact_copy(model)  # collapsed and BN folded: what is exported
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    static = {"params": parameter_count(counted), "flops": conv_flops(counted, example)}

    def run_torch():
        with torch.no_grad():
            return deployed(example)

    runners: Dict[str, Callable[[], object]] = {"latency_ms": run_torch}
    if onnx:
        if tasks is None:
            raise ValueError("onnx latency needs the model's tasks")
        runners["onnx_latency_ms"] = onnx_runner(export_contract_model(deployed, tasks, (width, height), folder)[0],
                                                  (width, height))
    return static, runners


def _timed(runners: Sequence[Dict[str, Callable[[], object]]], runs: int, rounds: int) -> List[Dict[str, float]]:
    """Median ms of every runner of every entry (`timing.time_interleaved`, all in the same
    rounds); torch with one thread."""
    flat = {(i, key): fn for i, entry in enumerate(runners) for key, fn in entry.items()}
    timed = time_interleaved(flat, runs, rounds, warmup=WARMUP_RUNS)
    return [{key: timed[(i, key)]["ms"] for key in entry} for i, entry in enumerate(runners)]


def model_cost(recipe_or_model: Union[nn.Module, object], input_size: Optional[Sequence[int]] = None,
               runs: int = 20, tasks: Optional[Mapping] = None, onnx: bool = False) -> Dict[str, float]:
    """{"params", "flops" (conv/linear multiply-accumulates per image), "latency_ms" (torch, one
    thread, eval, no_grad, median of `runs`)} of a model, or of a recipe's model.

    input_size: (width, height); default: the recipe's `data.input_size`. With `onnx=True` (needs
    `tasks`, given or from the recipe) the model is also exported to a temporary ONNX file and
    timed through the runtime's loader: "onnx_latency_ms".
    """
    if isinstance(recipe_or_model, nn.Module):
        model = recipe_or_model
    else:
        model, recipe_tasks_ = build_recipe_model(recipe_or_model, expanded=False)  # measured collapsed
        tasks = tasks if tasks is not None else recipe_tasks_
        input_size = input_size or recipe_or_model.data.input_size
    if input_size is None:
        raise ValueError("input_size (width, height) is needed with a model")
    with tempfile.TemporaryDirectory(prefix="mtl-cost-") as tmp:
        static, runners = _prepare(model, input_size, tasks, onnx, Path(tmp))
        return {**static, **_timed([runners], runs, rounds=1)[0]}


def export_contract_model(model: nn.Module, tasks: Mapping, input_size: Sequence[int],
                          folder: Path) -> Tuple[Path, ModelMetadata]:
    """Exports `model` (eval mode) into `folder` as the contract's ONNX graph (uint8 image in,
    decoded outputs, metadata attached): (path, metadata)."""
    width, height = int(input_size[0]), int(input_size[1])
    module = DeployModule(model, tasks).eval()
    names = output_names(tasks)
    metadata = ModelMetadata(name="cost", input=InputSpec(name="image", height=height, width=width),
                             tasks={t: task.spec(names[t]) for t, task in tasks.items()}, provenance={"cost": True})
    fd, name = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    path = Path(name)
    export_onnx(module, torch.from_numpy(cost_image(width, height)[None]), path, 18, metadata.output_names())
    attach_metadata(path, metadata)
    return path, metadata


def cost_image(width: int, height: int) -> np.ndarray:
    """The fixed random HxWx3 uint8 frame every latency here is measured on."""
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def onnx_runner(path: Path, input_size: Sequence[int]) -> Callable[[], object]:
    """A function that runs `cost_image` through the runtime's loader on a contract model (CPU
    provider, one intra-op thread)."""
    image = cost_image(int(input_size[0]), int(input_size[1]))
    runtime = load_model(path, RuntimeOptions(providers=["cpu"], intra_op_threads=1))
    return lambda: runtime.run(image)


def parse_variant(spec: str) -> Tuple[str, str, int]:
    """"mtan" or "shared+linear:2" (architecture, optionally over-parameterised: kind and rate)
    -> (architecture, kind, rate)."""
    arch, _, over = spec.partition("+")
    kind, _, rate = over.partition(":")
    if arch not in TRUNKS:
        raise ValueError(f"unknown architecture {arch!r} in {spec!r} (known: {', '.join(sorted(TRUNKS))})")
    if over and (kind not in KINDS or not rate.isdigit()):
        raise ValueError(f"{spec!r}: write architecture+kind:rate with kind one of {', '.join(KINDS)}")
    return arch, kind or "none", int(rate or 2)


def variant(recipe: Recipe, **sections) -> Recipe:
    """The recipe with whole sections replaced (plain data, validated like a recipe file)."""
    return recipe_from_dict({**recipe.to_dict(), **sections}, f"{recipe.name} variant")


def _overparameterised(model: nn.Module, overparam: OverparamConfig, seed: int = 0) -> nn.Module:
    """The model expanded as a recipe's `overparam` section says, factors moved away from their
    initialisation (so the collapse has real work to do)."""
    apply_overparam(model, overparam)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return model.eval()


def compare_architectures(recipe, architectures: Sequence[str] = ARCHITECTURES, runs: int = 20,
                          onnx: bool = True, rounds: int = 5) -> dict:
    """Cost of the recipe's model with each trunk architecture (each optionally trained
    over-parameterised and collapsed: "shared+linear:2"), and ratios to "shared" (or to the first
    one when "shared" is not listed). Latencies: `rounds` interleaved rounds."""
    variants = [parse_variant(a) for a in architectures]
    if not architectures:
        raise ValueError("name at least one architecture")
    statics, runners = [], []
    with tempfile.TemporaryDirectory(prefix="mtl-cost-") as tmp:
        for arch, kind, rate in variants:
            model, tasks = build_recipe_model(recipe, arch, expanded=False)
            training_params = None
            if kind != "none":  # the section's defaults with this kind and rate
                model = _overparameterised(model, variant(recipe, overparam={"kind": kind, "rate": rate}).overparam)
                training_params = parameter_count(model)
            static, runner = _prepare(model, recipe.data.input_size, tasks, onnx, Path(tmp))
            static["training_params"] = training_params or static["params"]
            statics.append(static)
            runners.append(runner)
        latencies = _timed(runners, runs, rounds)
    rows = [{"architecture": a, **s, **t} for a, s, t in zip(architectures, statics, latencies)]
    base = next((r for r in rows if r["architecture"] == "shared"), rows[0])
    for row in rows:
        for key in ("params", "flops", "latency_ms", "onnx_latency_ms"):
            if key in row:
                row[f"{key}_ratio"] = row[key] / base[key]
    width, height = recipe.data.input_size
    return {"recipe": recipe.name, "input_size": [width, height], "tasks": list(recipe.tasks),
            "baseline": base["architecture"], "runs": max(1, -(-runs // rounds)) * rounds, "rounds": rounds,
            "threads": 1, "torch": torch.__version__, "machine": machine_summary(), "rows": rows}


def machine_summary() -> str:
    return f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}"


def markdown(result: Mapping) -> str:
    """The comparison as a Markdown table."""
    width, height = result["input_size"]
    onnx = any("onnx_latency_ms" in r for r in result["rows"])
    lines = [f"Model of recipe `{result['recipe']}` ({len(result['tasks'])} tasks: {', '.join(result['tasks'])}), "
             f"one {width}x{height} image, untrained weights, CPU ({result.get('machine', '?')}), one thread; "
             f"latency = median of {result['runs']} runs in {result.get('rounds', 1)} interleaved rounds. "
             f"MACs: convolutions and linear layers. Ratios (×) are to `{result['baseline']}`.", ""]
    trained = any(r.get("training_params", r["params"]) != r["params"] for r in result["rows"])
    header = "| architecture |" + (" trained parameters |" if trained else "") + " parameters | MACs | torch ms |" + \
        (" onnxruntime ms |" if onnx else "") + " parameters × | MACs × | torch ms × |" + \
        (" onnxruntime ms × |" if onnx else "")
    lines += [header, "|---|" + "---:|" * (header.count("|") - 2)]
    for r in result["rows"]:
        cells = [f"`{r['architecture']}`"] + ([f"{r.get('training_params', r['params']) / 1e6:.2f} M"]
                                              if trained else [])
        cells += [f"{r['params'] / 1e6:.2f} M", f"{r['flops'] / 1e9:.2f} G", f"{r['latency_ms']:.1f}"]
        if onnx:
            cells.append(f"{r['onnx_latency_ms']:.1f}")
        cells += [f"{r['params_ratio']:.2f}", f"{r['flops_ratio']:.2f}", f"{r['latency_ms_ratio']:.2f}"]
        if onnx:
            cells.append(f"{r['onnx_latency_ms_ratio']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
