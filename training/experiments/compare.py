"""`mtl-train compare-balancers`: every balancer x several seeds against single-task baselines.

Protocol (one recipe, e.g. config/balancers.yaml):

- a test split is generated next to the validation split (seed `generate.seed + 2`), so the
  reported numbers are never the ones used for selection;
- single-task baselines: the same recipe with one task (fixed weight), for every task and seed;
- multi-task runs: the recipe with each balancer, for every seed;
- every run is evaluated on validation *and* test after every epoch; the reported epoch is
  chosen on validation only: for a single-task run the best validation main metric, for a
  multi-task run the best validation Δm against that seed's single-task baselines (validation
  values); the test metrics of that epoch are reported, and test Δm is against the single-task
  test values of the same seed;
- Δm = `mtl_perception.evaluation.metrics.delta_m` over each task's main metric (segmentation miou, depth
  abs_rel, detection map50, super_resolution psnr): the mean over tasks of the sign-corrected
  relative change, in percent (positive: better than single-task).

Runs go through the job engine (`training.experiments.jobs`: separate processes, `--jobs` at a
time, one torch thread each, each in its own folder; a finished run is not run again, an
interrupted one resumes from its checkpoint). The
results are a JSON file (every run, every epoch), a Markdown table and a PNG.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from mtl_perception.evaluation.metrics import METRIC_DIRECTIONS, delta_m
from training.balancers import BALANCERS
from training.engine.logs import draw_weights, read_csv
from training.experiments.jobs import MAIN_METRIC, main_values, make_jobs, parse_method, prepare_splits, run_all
from training.recipe.config import ConfigError
from training.recipe.core import load_run_recipe, recipe_from_dict


def _better(key: str, a: float, b: float) -> bool:
    direction = METRIC_DIRECTIONS[key.rsplit("/", 1)[-1]]
    return (a - b) * direction > 0


def select_single(epochs: Sequence[dict], task: str) -> dict:
    """The epoch with the best validation main metric (never the test split)."""
    key = f"{task}/{MAIN_METRIC[task]}"
    best = None
    for e in epochs:
        value = main_values(e["val"])[key]
        if best is None or (not math.isnan(value) and _better(key, value, main_values(best["val"])[key])):
            best = e
    return best


def select_multi(epochs: Sequence[dict], single_val: Mapping[str, float]) -> dict:
    """The epoch with the best validation Δm against the single-task validation values."""
    return max(epochs, key=lambda e: delta_m(main_values(e["val"]), single_val))


def summarize(runs: Mapping[str, List[dict]], methods: Sequence[str], seeds: Sequence[int],
              tasks: Sequence[str]) -> dict:
    """Per method: the selected epoch's test metrics and Δm per seed, then mean and std."""
    single_val, single_test = {}, {}
    for seed in seeds:
        single_val[seed], single_test[seed] = {}, {}
        for task in tasks:
            chosen = select_single(runs[f"single/{task}/seed{seed}"], task)
            single_val[seed].update({k: v for k, v in main_values(chosen["val"]).items() if k.startswith(task + "/")})
            single_test[seed].update({k: v for k, v in main_values(chosen["test"]).items() if k.startswith(task + "/")})
    summary = {"single_task": _aggregate([{"metrics": single_test[s], "delta_m": 0.0, "epoch": None} for s in seeds])}
    for method in methods:
        per_seed = []
        for seed in seeds:
            epochs = runs.get(f"{method}/seed{seed}")
            if not epochs:
                continue
            chosen = select_multi(epochs, single_val[seed])
            test = main_values(chosen["test"])
            per_seed.append({"seed": seed, "epoch": chosen["epoch"], "metrics": test,
                             "delta_m": delta_m(test, single_test[seed]),
                             "val_delta_m": delta_m(main_values(chosen["val"]), single_val[seed])})
        if per_seed:
            summary[method] = _aggregate(per_seed)
    return summary


def _aggregate(per_seed: List[dict]) -> dict:
    keys = list(per_seed[0]["metrics"])

    def stats(values):
        values = [v for v in values if v is not None and not math.isnan(v)]
        mean = statistics.fmean(values) if values else math.nan
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": mean, "std": std}

    return {"seeds": len(per_seed), "per_seed": per_seed,
            "metrics": {k: stats([r["metrics"][k] for r in per_seed]) for k in keys},
            "delta_m": stats([r["delta_m"] for r in per_seed])}


def markdown(summary: Mapping, tasks: Sequence[str]) -> str:
    keys = [f"{t}/{MAIN_METRIC[t]}" for t in tasks]
    arrows = {1: "↑", -1: "↓"}
    head = " | ".join(f"{k.replace('super_resolution', 'SR')} {arrows[METRIC_DIRECTIONS[k.split('/')[1]]]}"
                      for k in keys)
    lines = [f"| method | seeds | {head} | Δm % ↑ |", "|---|---:|" + "---:|" * (len(keys) + 1)]
    order = ["single_task"] + sorted((m for m in summary if m != "single_task"),
                                     key=lambda m: -summary[m]["delta_m"]["mean"])
    for method in order:
        s = summary[method]
        cells = []
        for k in keys:
            m = s["metrics"].get(k)
            digits = 2 if k.endswith("psnr") else 4
            cells.append("–" if m is None else f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}")
        dm = "0 (reference)" if method == "single_task" else f"{s['delta_m']['mean']:+.2f} ± {s['delta_m']['std']:.2f}"
        name = "single-task" if method == "single_task" else f"`{method}`"
        lines.append(f"| {name} | {s['seeds']} | " + " | ".join(cells) + f" | {dm} |")
    return "\n".join(lines) + "\n"


def plot(summary: Mapping, runs_dir: Path, methods: Sequence[str], seeds: Sequence[int], path: Path,
         title: str) -> None:
    """Left: Δm (mean ± std over seeds) per method; right: each method's task weights (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted((m for m in summary if m != "single_task"), key=lambda m: summary[m]["delta_m"]["mean"])
    cols = 4
    rows = math.ceil(len(methods) / cols)
    fig = plt.figure(figsize=(4.0 + 2.6 * cols, max(4.0, 2.0 * rows)))
    grid = fig.add_gridspec(rows, cols + 2)
    ax = fig.add_subplot(grid[:, :2])
    means = [summary[m]["delta_m"]["mean"] for m in ranked]
    stds = [summary[m]["delta_m"]["std"] for m in ranked]
    ax.barh(range(len(ranked)), means, xerr=stds, color=["tab:green" if v >= 0 else "tab:red" for v in means],
            alpha=0.8, capsize=3)
    ax.set_yticks(range(len(ranked)), ranked, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Δm vs single-task (%), test split, mean ± std over seeds", fontsize=8)
    ax.tick_params(labelsize=7)
    for i, method in enumerate(methods):
        sub = fig.add_subplot(grid[i // cols, 2 + i % cols])
        steps_file = runs_dir / method / f"seed{seeds[0]}" / "steps.csv"
        if steps_file.exists():
            draw_weights(sub, read_csv(steps_file))
        sub.set_title(method, fontsize=8)
        sub.tick_params(labelsize=6)
        if i == 0:
            sub.legend(fontsize=5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare(recipe_path: str, overrides: Sequence[str] = (), methods: Optional[Sequence[str]] = None,
            seeds: Sequence[int] = (0, 1, 2), out: str = "runs/compare", results: Optional[str] = None,
            workers: int = 2) -> dict:
    recipe, doc = load_run_recipe(recipe_path, overrides)
    methods = list(methods or sorted(BALANCERS))
    for method in methods:  # validate every method and its options before anything runs
        name, options = parse_method(method)
        if name not in BALANCERS:
            raise ConfigError(f"unknown balancer {name!r} (known: {', '.join(sorted(BALANCERS))})")
        recipe_from_dict({**doc, "balancer": {"name": name, "options": options}}, f"{recipe_path} ({method})")
    test_root = prepare_splits(recipe)
    out_dir = Path(out)
    jobs = make_jobs(doc, methods, seeds, out_dir)
    t0 = time.time()
    runs = run_all(jobs, test_root, workers)
    tasks = list(recipe.tasks)
    summary = summarize(runs, methods, seeds, tasks)
    result = {"recipe": recipe_path, "overrides": list(overrides), "seeds": list(seeds), "methods": methods,
              "tasks": tasks, "main_metric": {t: MAIN_METRIC[t] for t in tasks},
              "protocol": "test metrics at the epoch chosen on validation (single-task: best main metric; "
                          "multi-task: best validation Δm vs the same seed's single-task runs); "
                          "Δm = mtl_perception.evaluation.metrics.delta_m over each task's main metric",
              "wall_seconds": round(time.time() - t0), "summary": summary, "runs": runs}
    results_path = Path(results) if results else out_dir / "comparison.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(summary, tasks)
    results_path.with_suffix(".md").write_text(table)
    plot(summary, out_dir, methods, list(seeds), results_path.with_suffix(".png"),
         f"{recipe.name}: balancers vs single-task ({len(seeds)} seeds)")
    print(table)
    print(f"results: {results_path}, {results_path.with_suffix('.md')}, {results_path.with_suffix('.png')}")
    return result
