"""`mtl-train full`: the whole training recipe in one resumable command.

    teachers (one single-task network per task)
      -> student (multi-task; over-parameterised, distilled from the teachers, SAM, SWA over
         its last epochs, then collapsed and fine-tuned: all inside one Trainer run)
      -> export (collapsed, BN folded, verified against torch)
      -> report (Markdown + JSON + PNG)

A plan file names the base recipe and what the student adds:

    recipe: config/quick.yaml        # data, network, tasks, optimizer
    out: runs/full
    teachers: {}                     # changes for every teacher (each is the base with one task)
    student:                         # changes for the student (distill.teachers is filled in)
      overparam: {kind: linear, rate: 2, finetune_epochs: 1}
      sam: {rho: 0.05}
      swa: {start_epoch: 4, lr: 0.001}
      distill: {temperature: 2.0}

Every stage checkpoints (the trainer's epoch checkpoints; exports are written atomically) and a
finished stage is skipped, so killing the command and running it again continues where it
stopped. The report scores the exported student and the four teachers (run together as one
bundle) on a held-out test split, day and night frames apart, and times them in one loop.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import yaml

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.evaluation.evaluate import evaluate_dataset
from mtl_perception.evaluation.metrics import delta_m
from mtl_perception.inference.bundle import write_bundle
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import RuntimeOptions
from mtl_perception.inference.preprocess import model_input
from mtl_perception.kinds.registry import Scoring
from training.engine.checkpoint import load_checkpoint
from training.engine.export import export_checkpoint
from training.engine.network import checkpoint_recipe, network_from_recipe, tasks_from_checkpoint
from training.engine.trainer import LAST, Trainer
from training.experiments.ablation import deep_merge, frames_by_light
from training.experiments.cost import _timed
from training.experiments.jobs import MAIN_METRIC, main_values, prepare_splits
from training.models.collapse import parameter_count
from training.recipe.config import ConfigError
from training.recipe.core import apply_overrides, recipe_from_dict

STAGES = ("teachers", "student", "export", "report")


def load_full_plan(path: str | Path, overrides: Sequence[str] = (), recipe: Optional[str] = None,
                   out: Optional[str] = None) -> dict:
    """Plan -> validated teacher and student recipes (as dicts) before anything runs."""
    path = Path(path)
    try:
        plan = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: plan not found") from None
    unknown = set(plan) - {"recipe", "out", "teachers", "student"}
    if unknown or not (recipe or plan.get("recipe")):
        raise ConfigError(f"{path}: a plan has keys recipe, out, teachers, student"
                          + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    recipe_path = recipe or plan["recipe"]
    base = yaml.safe_load(Path(recipe_path).read_text()) or {}
    apply_overrides(base, overrides, recipe_path)
    base_recipe = recipe_from_dict(base, recipe_path)
    out_dir = Path(out or plan.get("out") or f"runs/{path.stem}")
    teachers = {}
    for task, options in base_recipe.to_dict()["tasks"].items():
        doc = deep_merge(base, plan.get("teachers") or {})
        doc.update(tasks={task: {**(options or {}), "weight": 1.0}}, balancer={"name": "fixed"}, name=f"teacher-{task}")
        for key in ("overparam", "sam", "swa", "distill"):
            doc.pop(key, None)
        teachers[task] = recipe_from_dict(doc, f"{path} (teacher {task})").to_dict()
    student = deep_merge(base, plan.get("student") or {})
    if "distill" in student:
        student["distill"] = {**student["distill"],
                              "teachers": {t: str(out_dir / "teachers" / t / "last.pt") for t in teachers}}
    student.setdefault("name", base_recipe.name)
    recipe_from_dict(student, f"{path} (student)")  # validated now; teachers exist only later
    return {"path": str(path), "recipe": recipe_path, "base": base_recipe, "out": out_dir,
            "teachers": teachers, "student": student}


def _say(stage: int, text: str) -> None:
    print(f"[{stage}/{len(STAGES)}] {text}", flush=True)


def train_stage(doc: dict, out_dir: Path, progress: bool) -> Path:
    """Trains (or resumes, or skips when finished) one recipe; returns its checkpoint."""
    recipe = recipe_from_dict(doc, str(out_dir))
    trainer = Trainer(recipe, out_dir=str(out_dir), progress=progress)
    if trainer.resume_if_possible() and trainer.epoch >= recipe.total_epochs:
        print(f"      {out_dir}: finished earlier ({trainer.epoch} epochs), skipped")
    else:
        trainer.fit()
    return out_dir / LAST


def export_stage(checkpoint: Path, model_path: Path) -> Path:
    """Exports unless an export newer than the checkpoint exists."""
    if model_path.exists() and model_path.stat().st_mtime >= checkpoint.stat().st_mtime:
        print(f"      {model_path}: exported earlier, skipped")
        return model_path
    export_checkpoint(checkpoint, model_path)
    return model_path


def run_full(plan_path: str, overrides: Sequence[str] = (), recipe: Optional[str] = None, out: Optional[str] = None,
             progress: bool = True, timing_frames: int = 40) -> dict:
    plan = load_full_plan(plan_path, overrides, recipe, out)
    out_dir = plan["out"]
    t0 = time.time()
    test_root = prepare_splits(plan["base"])

    _say(1, f"teachers: {', '.join(plan['teachers'])}")
    teacher_models = []
    for task, doc in plan["teachers"].items():
        checkpoint = train_stage(doc, out_dir / "teachers" / task, progress)
        teacher_models.append(export_stage(checkpoint, out_dir / "teachers" / f"{task}.onnx"))
    bundle = out_dir / "teachers" / "bundle.json"
    if not bundle.exists():
        write_bundle(bundle, teacher_models, name="teachers", provenance={"full_recipe": plan["path"]}, link=True)

    _say(2, "student: " + ", ".join(k for k in ("overparam", "distill", "sam", "swa") if k in plan["student"]))
    student_checkpoint = train_stage(plan["student"], out_dir / "student", progress)

    _say(3, "export: collapse, fold BN, verify against torch")
    model_path = export_stage(student_checkpoint, out_dir / "model.onnx")

    _say(4, "report: test split (day and night), latency against the four teachers")
    report = build_report(plan, model_path, bundle, student_checkpoint, test_root, timing_frames)
    report["wall_seconds"] = round(time.time() - t0)
    write_report(report, out_dir)
    print((out_dir / "report.md").read_text())
    print(f"model: {model_path}\nreport: {out_dir / 'report.md'}, {out_dir / 'report.json'}, {out_dir / 'stages.png'}")
    return report


# -- report -----------------------------------------------------------------------------------
class _Subset:
    """The frames of a dataset whose `night` flag equals `night` (evaluate_dataset's interface)."""

    def __init__(self, dataset, night: bool):
        self.dataset = dataset
        self.indices = frames_by_light(dataset, night)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int):
        return self.dataset.load(self.indices[index])


def score_on_test(model_path: Path, test_root: Path) -> Dict[str, Dict[str, float]]:
    """Main metrics of an exported model (or bundle) on the test split: all, day, night frames."""
    model = load_model(model_path, RuntimeOptions(providers=["cpu"]))
    dataset = MultiTaskDataset(test_root)
    scores = {"all": main_values(evaluate_dataset(model, dataset, Scoring.of(model.metadata), progress=False)["tasks"])}
    for name, night in (("day", False), ("night", True)):
        subset = _Subset(dataset, night)
        if len(subset):
            scores[name] = main_values(evaluate_dataset(model, subset, Scoring.of(model.metadata),
                                                        progress=False)["tasks"])
    return scores


def interleaved_latency(paths: Mapping[str, Path], test_root: Path, frames: int) -> Dict[str, dict]:
    """onnxruntime latency of several models on a test frame, timed in interleaved rounds by
    `cost._timed` (a change in machine load hits all alike); medians in ms, ratios to the first."""
    image = MultiTaskDataset(test_root).load(0).image
    runners = []
    for p in paths.values():
        model = load_model(p, RuntimeOptions(providers=["cpu"]))
        frame = model_input(image, "rgb8", model.input_size, model.metadata.input.color_order,
                            model.metadata.input.resize).image
        runners.append({"ms": lambda m=model, x=frame: m.run(x)})
    medians = [t["ms"] for t in _timed(runners, runs=frames, rounds=max(1, frames // 10))]
    return {name: {"p50_ms": ms, "ratio": ms / medians[0]} for name, ms in zip(paths, medians)}


def build_report(plan: Mapping, model_path: Path, bundle: Path, student_checkpoint: Path, test_root: Path,
                 timing_frames: int) -> dict:
    out_dir = plan["out"]
    state = load_checkpoint(student_checkpoint)
    recipe = plan["student"]
    epochs = recipe.get("optim", {}).get("epochs")
    history = state["history"]
    stages: Dict[str, Dict[str, float]] = {}
    for task in plan["teachers"]:
        row = load_checkpoint(out_dir / "teachers" / task / "last.pt")["history"][-1]
        stages.setdefault("teachers", {}).update(_row_main(row, [task]))
    tasks = list(plan["teachers"])
    if "before_swa" in state.get("stage_metrics", {}):
        stages["student"] = main_values(state["stage_metrics"]["before_swa"])
        stages["student + SWA"] = _row_main(next(r for r in history if r["epoch"] == epochs), tasks)
    else:
        stages["student"] = _row_main(next(r for r in history if r["epoch"] == epochs), tasks)
    if state.get("collapsed"):
        stages["collapsed + fine-tuned"] = _row_main(history[-1], tasks)
    test = {"student": score_on_test(model_path, test_root), "teachers": score_on_test(bundle, test_root)}
    delta = {split: delta_m(test["student"][split], test["teachers"][split]) for split in test["student"]}
    student_meta = load_model(model_path).metadata
    trained_size = training_parameters(state)
    teacher_meta = load_model(bundle).metadata
    teacher_params = sum(m["provenance"]["parameters"] for m in teacher_meta.provenance["bundle"]["members"])
    teacher_files = [Path(bundle).parent / m["file"] for m in teacher_meta.provenance["bundle"]["members"]]
    cost = {
        "student": {"parameters": student_meta.provenance["parameters"],
                    "training_parameters": trained_size,
                    "file_mb": model_path.stat().st_size / 2**20},
        "teachers": {"parameters": teacher_params, "file_mb": sum(f.stat().st_size for f in teacher_files) / 2**20},
    }
    latency = interleaved_latency({"student": model_path, "teachers": bundle}, test_root, timing_frames)
    for name in cost:
        cost[name].update(latency[name])
    return {"plan": plan["path"], "recipe": plan["recipe"], "student_recipe": recipe, "stages_val": stages,
            "test": test, "delta_m_vs_teachers": delta, "cost": cost}


def training_parameters(state: Mapping) -> int:
    """Parameters the student trained with: its network as built by the recipe, expanded by
    `overparam` (the checkpoint itself may already hold the collapsed, fine-tuned network)."""
    return parameter_count(network_from_recipe(checkpoint_recipe(state), tasks_from_checkpoint(state)))


def _row_main(row: Mapping[str, float], tasks: Sequence[str]) -> Dict[str, float]:
    return {f"{t}/{MAIN_METRIC[t]}": float(row[f"val/{t}/{MAIN_METRIC[t]}"]) for t in tasks
            if f"val/{t}/{MAIN_METRIC[t]}" in row}


def write_report(report: Mapping, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    keys = list(report["stages_val"]["teachers"])
    short = [k.replace("super_resolution", "SR") for k in keys]
    lines = ["# Full recipe report", "", f"Plan `{report['plan']}` on recipe `{report['recipe']}`.", "",
             "## Validation metrics after each stage", "",
             "| stage | " + " | ".join(short) + " |", "|---|" + "---:|" * len(keys)]
    for stage, values in report["stages_val"].items():
        lines.append(f"| {stage} | " + " | ".join(_fmt(k, values.get(k)) for k in keys) + " |")
    lines += ["", "## Exported student vs the four teachers, test split", "",
              "| model | frames | " + " | ".join(short) + " | Δm % vs teachers |",
              "|---|---|" + "---:|" * (len(keys) + 1)]
    for split in report["test"]["student"]:
        for name in ("teachers", "student"):
            values = report["test"][name].get(split, {})
            dm = "0 (reference)" if name == "teachers" else f"{report['delta_m_vs_teachers'][split]:+.2f}"
            lines.append(f"| {name} | {split} | " + " | ".join(_fmt(k, values.get(k)) for k in keys) + f" | {dm} |")
    c = report["cost"]
    lines += ["", "## Inference cost (onnxruntime, CPU, interleaved rounds on one test frame)", "",
              "| model | parameters | file MB | latency p50 ms | × student |", "|---|---:|---:|---:|---:|"]
    for name in ("student", "teachers"):
        lines.append(f"| {name} | {c[name]['parameters']:,} | {c[name]['file_mb']:.2f} | {c[name]['p50_ms']:.1f} | "
                     f"{c[name]['ratio']:.2f} |")
    lines.append("")
    lines.append(f"The student trained with {c['student']['training_parameters']:,} parameters and exports "
                 f"{c['student']['parameters']:,} (over-parameterised layers collapsed, BN folded).")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    _plot(report, keys, out_dir / "stages.png")


def _fmt(key: str, value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.2f}" if key.endswith("psnr") else f"{value:.4f}"


def _plot(report: Mapping, keys: Sequence[str], path: Path) -> None:
    """One panel per task: its main metric after each stage (validation) and on test (exported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.2 * (len(keys) + 1), 3.4))
    stages = list(report["stages_val"])
    for ax, key in zip(axes, keys):
        values = [report["stages_val"][s].get(key, np.nan) for s in stages]
        ax.bar(range(len(stages)), values, color="tab:blue", alpha=0.75, label="validation")
        test_values = [report["test"]["teachers"]["all"].get(key, np.nan),
                       report["test"]["student"]["all"].get(key, np.nan)]
        ax.plot([0, len(stages) - 1], test_values, "o", color="tab:red", label="test (exported)")
        ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right", fontsize=7)
        ax.set_title(key.replace("super_resolution", "SR"), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6)
    c = report["cost"]
    ax = axes[-1]
    ax.bar([0, 1], [c["student"]["p50_ms"], c["teachers"]["p50_ms"]], color=["tab:green", "tab:gray"])
    ax.set_xticks([0, 1], ["student", "4 teachers"], fontsize=7)
    ax.set_title("onnxruntime latency p50 (ms)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
