"""Does sharing pay? One N-task model against N single-task models of the same backbone and
heads, and what each head costs next to the encoder (`mtl-train cost --sharing`).

For each head style (`standard`: 3x3 ConvBNAct heads; `depthwise`: depthwise-separable,
`training/models/light_heads.py`) the recipe's model is built once with all its tasks and once
per task, each exported as the contract's ONNX graph (uint8 in, decoded outputs) and timed
through the runtime's loader (onnxruntime, CPU provider, one intra-op thread); the trunk alone
(encoder + pyramid, float input) is timed beside them, so a head's latency is its single-task
model's minus the trunk's, and inside the N-task model from onnxruntime's own profile of it
(`onnx_profile`: a node belongs to the task whose outputs alone depend on it). Every model runs
in the same interleaved rounds (`timing.time_interleaved`), so a change of load on the machine
hits all of them alike: the ratio of the N-task model to the sum of the singles is the number to
read; absolute milliseconds depend on the machine and its load.
Weights are random (latency does not depend on them). Parameters and multiply-accumulates
(convolutions and linear layers, `conv_flops`) are counted per component on the exported form
(BN folded).
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence

import torch
from torch import nn

from training.experiments.cost import (
    WARMUP_RUNS,
    cost_image,
    export_contract_model,
    machine_summary,
    onnx_runner,
    recipe_tasks,
)
from training.experiments.onnx_profile import SHARED, profile_by_group
from training.experiments.timing import time_interleaved
from training.models.collapse import compact_copy, conv_flops, parameter_count
from training.models.multitask import build_model

HEAD_STYLES = ("standard", "depthwise")


def component_costs(model: nn.Module, example: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """{"encoder" | "pyramid" | "trunk" | "head:<task>": {"params", "flops"}} of a built
    MultiTaskNet; "encoder" is a timm encoder (absent for the compact trunk), "pyramid" the rest
    of the trunk (laterals, smoothing, an own stride-2 stem)."""
    forward = lambda x: model(x)  # noqa: E731  (hooks on a part, forward through the whole)
    trunk = model.trunk
    parts: Dict[str, nn.Module] = {"trunk": trunk}
    encoder = getattr(trunk, "encoder", None)
    if encoder is not None:
        parts["encoder"] = encoder
    parts.update({f"head:{name}": head for name, head in model.heads.items()})
    out = {key: {"params": float(parameter_count(part)), "flops": float(conv_flops(part, example, forward))}
           for key, part in parts.items()}
    if encoder is not None:
        out["pyramid"] = {k: out["trunk"][k] - out["encoder"][k] for k in ("params", "flops")}
    return out


def _trunk_runner(model: nn.Module, example: torch.Tensor, folder: Path) -> Callable[[], object]:
    """The trunk alone (normalised float input -> its features) as ONNX, one onnxruntime thread."""
    import onnxruntime as ort

    path = folder / "trunk.onnx"
    torch.onnx.export(model.trunk.eval(), (example,), str(path), input_names=["x"], opset_version=18, dynamo=True,
                      verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": example.numpy()}
    return lambda: session.run(None, feed)


def sharing_cost(recipe, heads: Sequence[str] = HEAD_STYLES, runs: int = 20, rounds: int = 5) -> dict:
    """Per head style: the N-task model, each single-task model and the trunk alone, timed in
    one interleaved run; rows with parameters, MACs, onnxruntime ms; the ratio N-task / sum of
    singles and each head's cost."""
    width, height = recipe.data.input_size
    all_tasks = recipe_tasks(recipe)
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    entries: List[dict] = []
    runners: List[Callable[[], object]] = []
    profiled = []  # (entry, path, metadata) of each N-task model
    with tempfile.TemporaryDirectory(prefix="mtl-sharing-") as tmp:
        for style in heads:
            config = dataclasses.replace(recipe.model, head=style)
            config.check()
            groups = [("all", dict(all_tasks))] + [(name, {name: task}) for name, task in all_tasks.items()]
            for label, tasks in groups:
                torch.manual_seed(recipe.seed)
                model = compact_copy(build_model(config, tasks))  # BN folded: what is exported
                entries.append({"head": style, "model": label, "tasks": list(tasks),
                                "components": component_costs(model, example),
                                "params": float(parameter_count(model)), "flops": float(conv_flops(model, example))})
                path, metadata = export_contract_model(model, tasks, (width, height), Path(tmp))
                if label == "all":
                    profiled.append((entries[-1], path, metadata))
                runners.append(onnx_runner(path, (width, height)))
            entries.append({"head": style, "model": "trunk", "tasks": [],
                            "components": {}, "params": entries[-1]["components"]["trunk"]["params"],
                            "flops": entries[-1]["components"]["trunk"]["flops"]})
            runners.append(_trunk_runner(model, example, Path(tmp)))
        timed = time_interleaved(dict(enumerate(runners)), runs, rounds, warmup=WARMUP_RUNS)
        for entry, path, metadata in profiled:
            entry["profile_ms"] = task_profile(path, metadata, runs)
    for i, entry in enumerate(entries):
        entry["onnx_latency_ms"] = timed[i]["ms"]
        entry["onnx_latency_ms_rounds"] = timed[i]["rounds"]
    return {"recipe": recipe.name, "backbone": recipe.model.backbone, "input_size": [width, height],
            "tasks": list(all_tasks), "fpn_channels": recipe.model.fpn_channels,
            "runs": max(1, -(-runs // rounds)) * rounds, "rounds": rounds, "threads": 1, "weights": "random",
            "torch": torch.__version__, "onnxruntime": _ort_version(), "machine": machine_summary(),
            "rows": entries,
            "summary": {style: summarise([e for e in entries if e["head"] == style]) for style in heads}}


def task_profile(path: Path, metadata, runs: int) -> Dict[str, float]:
    """{task or SHARED: ms} of a contract model: onnxruntime's profile of `runs` runs on the cost
    image, each node given to the task whose outputs alone depend on it (`onnx_profile`)."""
    groups = {output: task for task, spec in metadata.tasks.items() for output in spec.outputs.values()}
    image = cost_image(metadata.input.width, metadata.input.height)[None]
    return profile_by_group(path, {metadata.input.name: image}, groups, runs)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def summarise(rows: Sequence[Mapping]) -> dict:
    """One head style: N-task latency / sum of single-task latencies (and the same for MACs and
    parameters), and each head's latency (its single model minus the trunk) and MACs.

    The latency ratio twice: of the medians over all runs, and per round (the N-task model's time
    in a round over the singles' in the same round; median and quartiles over rounds). A round
    takes a second or so, the virtual machines these run on change speed over minutes, so the
    per-round ratio is the steadier of the two (`timing.round_ratios` for the same reason)."""
    by = {r["model"]: r for r in rows}
    singles = [r for r in rows if r["model"] not in ("all", "trunk")]
    out = {f"{key}_ratio": by["all"][key] / sum(r[key] for r in singles)
           for key in ("onnx_latency_ms", "flops", "params")}
    if "onnx_latency_ms_rounds" in by["all"]:
        per_round = [n / sum(s) for n, *s in zip(by["all"]["onnx_latency_ms_rounds"],
                                                 *(r["onnx_latency_ms_rounds"] for r in singles))]
        out["onnx_latency_ms_round_ratio"] = float(statistics.median(per_round))
        out["onnx_latency_ms_round_ratio_quartiles"] = (
            [float(q) for q in statistics.quantiles(per_round, n=4)[::2]] if len(per_round) > 1 else [per_round[0]] * 2)
    trunk_ms = by["trunk"]["onnx_latency_ms"]
    out["trunk_ms"] = trunk_ms
    out["heads"] = {r["model"]: {"ms": r["onnx_latency_ms"] - trunk_ms,
                                 "flops": r["components"][f"head:{r['model']}"]["flops"],
                                 "params": r["components"][f"head:{r['model']}"]["params"]} for r in singles}
    profile = by["all"].get("profile_ms")
    if profile:
        out["shared_profile_ms"] = profile.get(SHARED, 0.0)
        for name, head in out["heads"].items():
            head["profile_ms"] = profile.get(name, 0.0)
    return out


def markdown(result: Mapping) -> str:
    """The run as Markdown: one table of models, one of heads, per head style."""
    width, height = result["input_size"]
    lines = [f"`{result['backbone']}` + pyramid ({result['fpn_channels']} channels), {width}x{height}, tasks: "
             f"{', '.join(result['tasks'])}; random weights; onnxruntime CPU, one thread ({result['machine']}); "
             f"median of {result['runs']} runs per model in {result['rounds']} interleaved rounds (all models of "
             f"the table in the same rounds: the ratios are robust to other load on the machine, the "
             f"milliseconds are not). MACs: convolutions and linear layers, BN folded.", ""]
    lines += ["| heads | model | parameters | MACs | onnxruntime ms |", "|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['head']} | {r['model']} | {r['params'] / 1e6:.2f} M | {r['flops'] / 1e9:.2f} G | "
                     f"{r['onnx_latency_ms']:.1f} |")
    lines += ["", "| heads | N-task / sum of singles: latency per round (quartiles) | latency, of the medians | "
              "MACs | parameters |", "|---|---:|---:|---:|---:|"]
    for style, s in result["summary"].items():
        q1, q3 = s.get("onnx_latency_ms_round_ratio_quartiles", (float("nan"),) * 2)
        per_round = s.get("onnx_latency_ms_round_ratio", float("nan"))
        lines.append(f"| {style} | **{per_round:.3f}** ({q1:.3f}-{q3:.3f}) | {s['onnx_latency_ms_ratio']:.3f} | "
                     f"{s['flops_ratio']:.3f} | {s['params_ratio']:.3f} |")
    lines += ["", "| heads | head | parameters | MACs | MACs / trunk | ms (single − trunk) | ms / trunk | "
              "ms in the N-task model (profile) | / shared (profile) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for style, s in result["summary"].items():
        trunk = next(r for r in result["rows"] if r["head"] == style and r["model"] == "trunk")
        shared = s.get("shared_profile_ms", float("nan"))
        for name, h in s["heads"].items():
            inside = h.get("profile_ms", float("nan"))
            lines.append(f"| {style} | {name} | {h['params'] / 1e6:.3f} M | {h['flops'] / 1e9:.3f} G | "
                         f"{h['flops'] / trunk['flops']:.2f} | {h['ms']:.1f} | {h['ms'] / s['trunk_ms']:.2f} | "
                         f"{inside:.1f} | {inside / shared:.2f} |")
        lines.append(f"| {style} | (shared: encoder, pyramid, input) | | | | | | {shared:.1f} | 1.00 |")
    lines += ["", "Profile: onnxruntime's own profile of the N-task model, each node's time given to the task "
              "whose outputs alone depend on it, nodes that several tasks' outputs depend on shared "
              "(`training/experiments/onnx_profile.py`): one session, no difference of two medians."]
    return "\n".join(lines) + "\n"
