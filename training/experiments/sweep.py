"""`mtl-train sweep`: grid search over static task weights (the usual baseline for balancers).

Every combination of `--weights` values for the swept tasks (by default all but the first:
with Adam-type optimizers only the ratios of the weights matter, so one task stays at its
recipe weight) is trained with the `fixed` balancer, alongside the recipe's own weights as the
reference. Each run's epoch is chosen on validation, and runs are ranked by validation Δm
against the reference run (`mtl_perception.evaluation.metrics.delta_m` over each task's main metric).
The test split is not touched: evaluate the chosen weights with `compare-balancers`.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from mtl_perception.evaluation.metrics import delta_m
from training.engine.trainer import prepare_data
from training.experiments.jobs import main_values, make_jobs, run_all
from training.recipe.config import ConfigError
from training.recipe.core import load_run_recipe


def sweep(recipe_path: str, values: Sequence[float], tasks: Optional[Sequence[str]] = None,
          overrides: Sequence[str] = (), seeds: Sequence[int] = (0,), out: str = "runs/sweep",
          workers: int = 2, max_runs: int = 64) -> dict:
    recipe, doc = load_run_recipe(recipe_path, overrides)
    all_tasks = list(recipe.tasks)
    swept = list(tasks) if tasks else all_tasks[1:]
    unknown = [t for t in swept if t not in all_tasks]
    if unknown:
        raise ConfigError(f"--tasks: {unknown[0]!r} is not a task of the recipe ({', '.join(all_tasks)})")
    base = {t: float((recipe.tasks[t] or {}).get("weight", 1.0)) for t in all_tasks}
    grid = weight_grid(base, swept, values)
    if len(grid) * len(seeds) > max_runs:
        raise ConfigError(f"{len(grid) * len(seeds)} runs exceed --max-runs {max_runs}: fewer values or tasks")
    out_dir = Path(out)
    prepare_data(recipe)
    jobs = make_jobs(doc, [], seeds, out_dir, single_task=False, weights=grid)
    t0 = time.time()
    runs = run_all(jobs, None, workers)  # validation only
    rows = []
    for weights, group in zip(grid, _by_weights(jobs, len(seeds))):
        per_seed = []
        for job, seed in zip(group, seeds):
            reference = main_values(runs[_key(base, all_tasks, seed)][-1]["val"])
            chosen = max(runs[job.key], key=lambda e: delta_m(main_values(e["val"]), reference))
            per_seed.append({"seed": seed, "epoch": chosen["epoch"], "val": main_values(chosen["val"]),
                             "val_delta_m": delta_m(main_values(chosen["val"]), reference)})
        rows.append({"weights": weights, "val_delta_m": sum(r["val_delta_m"] for r in per_seed) / len(per_seed),
                     "per_seed": per_seed})
    rows.sort(key=lambda r: -r["val_delta_m"])
    result = {"recipe": recipe_path, "swept_tasks": swept, "values": list(values), "seeds": list(seeds),
              "reference_weights": base, "wall_seconds": round(time.time() - t0), "ranking": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result, all_tasks)
    (out_dir / "sweep.md").write_text(table)
    print(table)
    print(f"results: {out_dir / 'sweep.json'}, {out_dir / 'sweep.md'}")
    return result


def weight_grid(base: Mapping[str, float], swept: Sequence[str], values: Sequence[float]) -> List[Dict[str, float]]:
    """Every combination of `values` for the swept tasks (the others at their `base` weight),
    the reference (`base`) first."""
    grid = [dict(base, **dict(zip(swept, combo))) for combo in itertools.product(values, repeat=len(swept))]
    if dict(base) in grid:
        grid.remove(dict(base))
    return [dict(base)] + grid


def _key(weights, tasks, seed) -> str:
    return "weights_" + "_".join(f"{weights[t]:g}" for t in tasks) + f"/seed{seed}"


def _by_weights(jobs, n_seeds):
    """make_jobs orders by seed, then weights: regroup per weights combination."""
    per_seed = len(jobs) // n_seeds
    return [[jobs[s * per_seed + i] for s in range(n_seeds)] for i in range(per_seed)]


def markdown(result: dict, tasks: Sequence[str]) -> str:
    lines = ["| rank | " + " | ".join(f"w {t}" for t in tasks) + " | validation Δm % vs reference |",
             "|---:|" + "---:|" * (len(tasks) + 1)]
    for i, row in enumerate(result["ranking"], 1):
        ref = " (reference)" if row["weights"] == result["reference_weights"] else ""
        lines.append(f"| {i} | " + " | ".join(f"{row['weights'][t]:g}" for t in tasks)
                     + f" | {row['val_delta_m']:+.2f}{ref} |")
    return "\n".join(lines) + "\n"
