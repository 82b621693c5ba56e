"""`mtl-train ablate`: named recipe variants x seeds, scored like the balancer comparison.

An ablation plan is a small YAML file:

    recipe: config/balancers.yaml      # the base recipe
    seeds: [0, 1, 2]
    out: runs/ablation                 # run folders; single-task baselines go to <out>/single
    variants:                          # name -> changes deep-merged into the base recipe
      compact: {}
      linear_r2: {overparam: {kind: linear, rate: 2}}

Every variant and seed is one run of the job engine, `training.experiments.jobs` (separate processes,
finished runs skipped, interrupted ones resumed), scored with the same protocol: test metrics at
the epoch chosen on validation, Δm against single-task runs of the same recipe and seed. On top
of the comparison's numbers it reports each variant's training time per epoch and peak memory
(resident set size of the run's process), and the trained parameter count.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import yaml
from torch.utils.data import DataLoader, Subset

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.evaluation.metrics import delta_m
from training.engine.checkpoint import load_checkpoint
from training.engine.data import TaskDataset
from training.engine.network import checkpoint_recipe, network_from_checkpoint, tasks_from_checkpoint
from training.engine.trainer import LAST, evaluate
from training.experiments.compare import markdown, summarize
from training.experiments.jobs import MAIN_METRIC, Job, main_values, make_jobs, prepare_splits, run_all
from training.recipe.config import ConfigError
from training.recipe.core import apply_overrides, recipe_from_dict


def deep_merge(base: dict, changes: Mapping) -> dict:
    """A copy of `base` with `changes` merged in; nested mappings merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (changes or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_plan(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Reads and validates a plan: every variant must make a valid recipe before anything runs."""
    path = Path(path)
    try:
        plan = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: ablation plan not found") from None
    unknown = set(plan) - {"recipe", "seeds", "out", "variants", "title", "conditions"}
    if unknown or "recipe" not in plan or not plan.get("variants"):
        raise ConfigError(f"{path}: a plan has keys recipe, variants (and optionally seeds, out, title)"
                          + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    base = yaml.safe_load(Path(plan["recipe"]).read_text()) or {}
    apply_overrides(base, overrides, plan["recipe"])
    base["threads"] = 1
    recipes = {}
    for name, changes in plan["variants"].items():
        if "/" in name or name == "single":
            raise ConfigError(f"{path}: variant name {name!r} may not contain '/' or be 'single'")
        doc = deep_merge(base, changes)
        recipe_from_dict(with_seed(doc, 0), f"{path} (variant {name})")
        recipes[name] = doc
    return {"path": str(path), "title": plan.get("title") or path.stem, "recipe": plan["recipe"],
            "seeds": [int(s) for s in plan.get("seeds", [0, 1, 2])], "out": Path(plan.get("out", f"runs/{path.stem}")),
            "base": recipe_from_dict(base, plan["recipe"]), "variants": recipes,
            "conditions": bool(plan.get("conditions", False))}


def with_seed(doc: dict, seed: int) -> dict:
    """The recipe for one seed: "{seed}" in any string value (e.g. a teacher checkpoint path
    runs/ablation/single/depth/seed{seed}/last.pt) becomes the seed."""
    return json.loads(json.dumps({**doc, "seed": seed}).replace("{seed}", str(seed)))


def variant_jobs(plan: Mapping, seeds: Sequence[int]) -> List[Job]:
    """Single-task baselines of the base recipe, then every variant for every seed."""
    base_doc = plan["base"].to_dict()
    jobs = make_jobs(base_doc, [], seeds, plan["out"])
    for seed in seeds:
        for name, doc in plan["variants"].items():
            jobs.append(Job(f"{name}/seed{seed}", with_seed(doc, seed), plan["out"] / name / f"seed{seed}"))
    return jobs


def frames_by_light(dataset, night: bool) -> List[int]:
    """Indices of a dataset's night (or day) frames, by the `night` flag of dataset.json."""
    return [i for i in range(len(dataset)) if bool(dataset.image_info(i).get("night", False)) == night]


def condition_scores(job: Job, test_root: Path) -> Dict[str, Dict[str, float]]:
    """Main metrics of a run's final weights on the day and the night frames of the test split
    (cached in the run folder as conditions.json)."""
    cached = job.out_dir / "conditions.json"
    if cached.exists():
        return json.loads(cached.read_text())
    state = load_checkpoint(job.out_dir / LAST)
    tasks = tasks_from_checkpoint(state)
    model = network_from_checkpoint(state, tasks)
    source = MultiTaskDataset(test_root)
    info = state["data_info"]
    dataset = TaskDataset(source, tasks, tuple(info["input_size"]), int(info["sr_scale"]),
                          resize=checkpoint_recipe(state).data.resize)
    scores = {}
    for name, night in (("day", False), ("night", True)):
        loader = DataLoader(Subset(dataset, frames_by_light(source, night)), batch_size=16, shuffle=False)
        scores[name] = main_values(evaluate(model, tasks, loader))
    cached.write_text(json.dumps(scores))
    return scores


def condition_summary(jobs: Sequence[Job], names: Sequence[str], seeds: Sequence[int], tasks: Sequence[str],
                      test_root: Path) -> Dict[str, Dict[str, dict]]:
    """Per variant and condition (day, night): mean ± std over seeds of each task's main metric
    and of Δm against the single-task runs of the same seed, all at their final epoch."""
    by_key = {j.key: j for j in jobs}
    single = {seed: {"day": {}, "night": {}} for seed in seeds}
    for seed in seeds:
        for task in tasks:
            scores = condition_scores(by_key[f"single/{task}/seed{seed}"], test_root)
            for cond in ("day", "night"):
                single[seed][cond].update({k: v for k, v in scores[cond].items() if k.startswith(task + "/")})
    out = {}
    for name in names:
        out[name] = {}
        for cond in ("day", "night"):
            rows = [condition_scores(by_key[f"{name}/seed{seed}"], test_root)[cond] for seed in seeds]
            deltas = [delta_m(r, single[seed][cond]) for r, seed in zip(rows, seeds)]
            out[name][cond] = {"metrics": {k: _mean_std([r[k] for r in rows]) for k in rows[0]},
                               "delta_m": _mean_std(deltas)}
    out["single_task"] = {cond: {"metrics": {k: _mean_std([single[s][cond][k] for s in seeds])
                                             for k in single[seeds[0]][cond]}}
                          for cond in ("day", "night")}
    return out


def _mean_std(values: Sequence[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def condition_markdown(conditions: Mapping, names: Sequence[str], tasks: Sequence[str]) -> str:
    keys = [f"{t}/{MAIN_METRIC[t]}" for t in tasks]
    head = " | ".join(k.replace("super_resolution", "SR") for k in keys)
    lines = [f"| variant | frames | {head} | Δm % vs single-task |", "|---|---|" + "---:|" * (len(keys) + 1)]
    for name in ["single_task", *names]:
        for cond in ("day", "night"):
            c = conditions[name][cond]
            cells = [f"{c['metrics'][k]['mean']:.{2 if k.endswith('psnr') else 4}f}" for k in keys]
            dm = ("0 (reference)" if name == "single_task"
                  else f"{c['delta_m']['mean']:+.2f} ± {c['delta_m']['std']:.2f}")
            lines.append(f"| `{name}` | {cond} | " + " | ".join(cells) + f" | {dm} |")
    return "\n".join(lines) + "\n"


def cost_summary(jobs: Sequence[Job], names: Sequence[str]) -> Dict[str, dict]:
    """Per variant: mean seconds per epoch, peak memory and trained parameter count over seeds."""
    out = {}
    for name in names:
        rows = [json.loads(j.done_file.read_text()) for j in jobs if j.key.startswith(name + "/")]
        per_epoch = [statistics.fmean(e["seconds"] for e in r["epochs"]) for r in rows]
        memory = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb")]
        params = [r["parameters"] for r in rows if r.get("parameters")]
        out[name] = {"seconds_per_epoch": statistics.fmean(per_epoch) if per_epoch else math.nan,
                     "peak_rss_mb": max(memory) if memory else math.nan,
                     "parameters": params[0] if params else None}
    return out


def cost_markdown(costs: Mapping[str, dict], reference: str) -> str:
    ref = costs[reference]
    lines = ["| variant | trained parameters | s / epoch | × time | peak memory MB | × memory |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, c in costs.items():
        lines.append(f"| `{name}` | {c['parameters'] or '–':,} | {c['seconds_per_epoch']:.1f} | "
                     f"{c['seconds_per_epoch'] / ref['seconds_per_epoch']:.2f} | {c['peak_rss_mb']:.0f} | "
                     f"{c['peak_rss_mb'] / ref['peak_rss_mb']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(summary: Mapping, costs: Mapping[str, dict], names: Sequence[str], path: Path, title: str) -> None:
    """Δm (mean ± std over seeds) and training time per epoch, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 1.8), sharey=True)
    ys = range(len(names))
    means = [summary[n]["delta_m"]["mean"] for n in names]
    left.barh(ys, means, xerr=[summary[n]["delta_m"]["std"] for n in names], capsize=3, alpha=0.8,
              color=["tab:green" if v >= 0 else "tab:red" for v in means])
    left.axvline(0, color="k", lw=0.8)
    left.set_yticks(list(ys), list(names), fontsize=8)
    left.set_xlabel("Δm vs single-task (%), test split, mean ± std over seeds", fontsize=8)
    right.barh(ys, [costs[n]["seconds_per_epoch"] for n in names], color="tab:blue", alpha=0.7)
    right.set_xlabel("training seconds per epoch (1 thread)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ablate(plan_path: str, overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
           out: Optional[str] = None, results: Optional[str] = None, workers: int = 2) -> dict:
    plan = load_plan(plan_path, overrides)
    if out:
        plan["out"] = Path(out)
    seeds = list(seeds or plan["seeds"])
    names = list(plan["variants"])
    test_root = prepare_splits(plan["base"])
    jobs = variant_jobs(plan, seeds)
    t0 = time.time()
    # single-task runs first: variants may distil from them (teacher paths with {seed})
    singles = [j for j in jobs if j.key.startswith("single/")]
    runs = run_all(singles, test_root, workers)
    runs.update(run_all([j for j in jobs if j not in singles], test_root, workers))
    tasks = list(plan["base"].tasks)
    summary = summarize(runs, names, seeds, tasks)
    costs = cost_summary(jobs, names)
    conditions = condition_summary(jobs, names, seeds, tasks, test_root) if plan["conditions"] else None
    result = {"plan": plan["path"], "recipe": plan["recipe"], "overrides": list(overrides), "seeds": seeds,
              "variants": {n: plan["variants"][n] for n in names}, "tasks": tasks,
              "protocol": "as mtl-train compare-balancers: test metrics at the epoch chosen on validation, "
                          "Δm vs the same seed's single-task runs",
              "wall_seconds": round(time.time() - t0), "summary": summary, "cost": costs, "conditions": conditions,
              "runs": runs}
    results_path = Path(results) if results else plan["out"] / f"{Path(plan_path).stem}.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(summary, tasks) + "\n" + cost_markdown(costs, names[0])
    if conditions:
        table += ("\nDay and night test frames, final epoch of each run:\n\n"
                  + condition_markdown(conditions, names, tasks))
    results_path.with_suffix(".md").write_text(table)
    plot(summary, costs, names, results_path.with_suffix(".png"), f"{plan['title']} ({len(seeds)} seeds)")
    print(table)
    print(f"results: {results_path}, {results_path.with_suffix('.md')}, {results_path.with_suffix('.png')}")
    return result
