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

Runs are separate processes (`--jobs` at a time, one torch thread each), each in its own
folder; a finished run is not run again, an interrupted one resumes from its checkpoint. The
results are a JSON file (every run, every epoch), a Markdown table and a PNG.
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from mtl_perception.evaluation.metrics import METRIC_DIRECTIONS, delta_m

from training.recipe.config import ConfigError

MAIN_METRIC = {"segmentation": "miou", "depth": "abs_rel", "detection": "map50", "super_resolution": "psnr"}


@dataclass
class Job:
    key: str  # e.g. "single/depth/seed0", "pcgrad/seed1"
    recipe: dict  # full recipe document
    out_dir: Path
    options: dict = field(default_factory=dict)  # extra keyword arguments of run_job (e.g. losses, tag)

    @property
    def done_file(self) -> Path:
        return self.out_dir / "epochs.json"


def test_split(recipe) -> Path:
    return Path(recipe.data.val).parent / "test"


def prepare_splits(recipe) -> Path:
    """Train/val as the recipe generates them, plus a test split beside val (seed + 2)."""
    from mtl_perception.data.synthetic import Camera, generate_dataset

    from training.engine.trainer import prepare_data

    prepare_data(recipe)
    test = test_split(recipe)
    if not (test / "dataset.json").exists():
        gen = recipe.data.generate
        if gen is None:
            raise ConfigError(f"no test split at {test} and the recipe does not generate data")
        width, height = recipe.data.input_size
        camera = Camera.default(width * recipe.data.sr_scale, height * recipe.data.sr_scale)
        generate_dataset(test, gen.val_frames, seed=gen.seed + 2, night_fraction=gen.night_fraction, camera=camera)
    return test


def parse_method(spec: str):
    """"mgda" or "mgda:normalization=l2[:key=value...]" (values parsed as YAML) -> (name, options)."""
    import yaml

    name, *items = spec.split(":")
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{spec}: options are written name:key=value[:key=value]")
        options[key] = yaml.safe_load(value)
    return name, options


def make_jobs(recipe_doc: dict, methods: Sequence[str], seeds: Sequence[int], out: Path,
              single_task: bool = True, weights: Optional[Sequence[Mapping[str, float]]] = None) -> List[Job]:
    jobs = []
    tasks = recipe_doc.get("tasks") or {}
    for seed in seeds:
        if single_task:
            for task, opts in tasks.items():
                doc = copy.deepcopy(recipe_doc)
                doc.update(seed=seed, tasks={task: opts or {}}, balancer={"name": "fixed"})
                jobs.append(Job(f"single/{task}/seed{seed}", doc, out / "single" / task / f"seed{seed}"))
        for method in methods:
            doc = copy.deepcopy(recipe_doc)
            doc["seed"] = seed
            name, options = parse_method(method)
            if options or doc.get("balancer", {}).get("name") != name:
                doc["balancer"] = {"name": name, "options": options}
            jobs.append(Job(f"{method}/seed{seed}", doc, out / method / f"seed{seed}"))
        for w in weights or ():
            doc = copy.deepcopy(recipe_doc)
            doc.update(seed=seed, balancer={"name": "fixed"})
            doc["tasks"] = {t: {**(opts or {}), "weight": float(w[t])} for t, opts in tasks.items()}
            label = "weights_" + "_".join(f"{w[t]:g}" for t in tasks)
            jobs.append(Job(f"{label}/seed{seed}", doc, out / label / f"seed{seed}"))
    return jobs


def run_job(recipe_doc: dict, out_dir: Path, test_root: Optional[Path], losses: bool = False,
            tag: Optional[dict] = None) -> List[dict]:
    """Trains one recipe epoch by epoch; after each epoch evaluates validation (the trainer) and
    test (unless `test_root` is None); returns and writes epochs.json. Resumes from the run's
    checkpoint. `losses`: also each task's mean validation/test loss per epoch (`val_loss`,
    `test_loss`; task grouping). `tag`: record TAG affinities during training (keyword arguments
    of `training.grouping.affinity.TagRecorder`), saved to affinity.json after every epoch."""
    from torch.utils.data import DataLoader

    from mtl_perception.data.dataset import MultiTaskDataset

    from training.engine.data import TaskDataset
    from training.engine.logs import read_csv, plot_weights
    from training.recipe.core import recipe_from_dict
    from training.engine.trainer import Trainer, evaluate

    recipe = recipe_from_dict(recipe_doc, str(out_dir))
    trainer = Trainer(recipe, out_dir=str(out_dir), progress=False, plots=False)
    test_loader = None
    if test_root is not None:
        test_set = TaskDataset(MultiTaskDataset(test_root), trainer.tasks, recipe.data.input_size, recipe.data.sr_scale)
        test_loader = DataLoader(test_set, batch_size=recipe.optim.batch_size, shuffle=False)
    partial = out_dir / "epochs.partial.json"
    epochs = json.loads(partial.read_text()) if partial.exists() else []
    recorder = None
    if tag is not None:
        from training.grouping.affinity import TagRecorder

        recorder = TagRecorder(**tag).install(trainer)
        saved = out_dir / "affinity.json"
        if epochs and saved.exists() and json.loads(saved.read_text()).get("epoch") == len(epochs):
            recorder.load_dict(json.loads(saved.read_text()))
    t0 = time.time()
    for epoch in range(1, recipe.total_epochs + 1):
        if epoch <= len(epochs):
            continue
        history = trainer.fit(stop_after_epoch=epoch)
        row = history[-1]
        val = {t: {k.split("/", 2)[2]: v for k, v in row.items() if k.startswith(f"val/{t}/")} for t in trainer.tasks}
        test = evaluate(trainer.model, trainer.tasks, test_loader) if test_loader is not None else None
        epochs.append({"epoch": epoch, "seconds": row["seconds"], "val": val, "test": test,
                       "train_loss": {t: row[f"train/{t}"] for t in trainer.tasks}})
        if losses:
            from training.grouping.evaluation import evaluate_losses

            epochs[-1]["val_loss"] = evaluate_losses(trainer.model, trainer.tasks, trainer.val_loader)
            epochs[-1]["test_loss"] = (evaluate_losses(trainer.model, trainer.tasks, test_loader)
                                       if test_loader is not None else None)
        if recorder is not None:
            recorder.save(out_dir / "affinity.json", epoch=epoch)
        partial.write_text(json.dumps(epochs))
    steps = read_csv(out_dir / "steps.csv")
    plot_weights(steps, out_dir / "weights.png", f"{recipe.balancer.name}, seed {recipe.seed}")
    import resource

    from training.models.collapse import parameter_count

    result = {"epochs": epochs, "wall_seconds": round(time.time() - t0, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
              "parameters": parameter_count(trainer.model)}
    (out_dir / "epochs.json").write_text(json.dumps(result))
    return epochs


def _main_values(metrics: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    return {f"{t}/{MAIN_METRIC[t]}": float(m[MAIN_METRIC[t]]) for t, m in metrics.items() if t in MAIN_METRIC}


def _better(key: str, a: float, b: float) -> bool:
    direction = METRIC_DIRECTIONS[key.rsplit("/", 1)[-1]]
    return (a - b) * direction > 0


def select_single(epochs: Sequence[dict], task: str) -> dict:
    """The epoch with the best validation main metric (never the test split)."""
    key = f"{task}/{MAIN_METRIC[task]}"
    best = None
    for e in epochs:
        value = _main_values(e["val"])[key]
        if best is None or (not math.isnan(value) and _better(key, value, _main_values(best["val"])[key])):
            best = e
    return best


def select_multi(epochs: Sequence[dict], single_val: Mapping[str, float]) -> dict:
    """The epoch with the best validation Δm against the single-task validation values."""
    return max(epochs, key=lambda e: delta_m(_main_values(e["val"]), single_val))


def summarize(runs: Mapping[str, List[dict]], methods: Sequence[str], seeds: Sequence[int], tasks: Sequence[str]) -> dict:
    """Per method: the selected epoch's test metrics and Δm per seed, then mean and std."""
    single_val, single_test = {}, {}
    for seed in seeds:
        single_val[seed], single_test[seed] = {}, {}
        for task in tasks:
            chosen = select_single(runs[f"single/{task}/seed{seed}"], task)
            single_val[seed].update({k: v for k, v in _main_values(chosen["val"]).items() if k.startswith(task + "/")})
            single_test[seed].update({k: v for k, v in _main_values(chosen["test"]).items() if k.startswith(task + "/")})
    summary = {"single_task": _aggregate([{"metrics": single_test[s], "delta_m": 0.0, "epoch": None} for s in seeds])}
    for method in methods:
        per_seed = []
        for seed in seeds:
            epochs = runs.get(f"{method}/seed{seed}")
            if not epochs:
                continue
            chosen = select_multi(epochs, single_val[seed])
            test = _main_values(chosen["test"])
            per_seed.append({"seed": seed, "epoch": chosen["epoch"], "metrics": test,
                             "delta_m": delta_m(test, single_test[seed]),
                             "val_delta_m": delta_m(_main_values(chosen["val"]), single_val[seed])})
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
    head = " | ".join(f"{k.replace('super_resolution', 'SR')} {arrows[METRIC_DIRECTIONS[k.split('/')[1]]]}" for k in keys)
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


def plot(summary: Mapping, runs_dir: Path, methods: Sequence[str], seeds: Sequence[int], path: Path, title: str) -> None:
    """Left: Δm (mean ± std over seeds) per method; right: each method's task weights (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.engine.logs import draw_weights, read_csv

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


def run_all(jobs: Sequence[Job], test_root: Optional[Path], workers: int, threads: int = 1, log=print) -> Dict[str, List[dict]]:
    """Runs the jobs that have not finished, `workers` processes at a time."""
    todo = [j for j in jobs if not j.done_file.exists()]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished; running {len(todo)} with {workers} at a time")

    def one(job: Job):
        job.out_dir.mkdir(parents=True, exist_ok=True)
        spec = job.out_dir / "job.json"
        spec.write_text(json.dumps({"recipe": job.recipe, "test": str(test_root) if test_root else None,
                                    "options": job.options}))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.time()
        run = subprocess.run([sys.executable, "-m", "training.experiments.compare", str(spec)], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"{job.key} failed:\n{run.stderr[-3000:]}")
        log(f"  {job.key} done in {time.time() - t0:.0f} s")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(one, j) for j in todo]:
            future.result()
    return {j.key: json.loads(j.done_file.read_text())["epochs"] for j in jobs}


def compare(recipe_path: str, overrides: Sequence[str] = (), methods: Optional[Sequence[str]] = None,
            seeds: Sequence[int] = (0, 1, 2), out: str = "runs/compare", results: Optional[str] = None,
            workers: int = 2) -> dict:
    from training.balancers import BALANCERS
    from training.recipe.core import load_run_recipe, recipe_from_dict

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


def main(argv: Optional[List[str]] = None) -> int:
    """Child process: `python -m training.experiments.compare <job.json>` trains and evaluates one run."""
    import fcntl

    argv = sys.argv[1:] if argv is None else argv
    out_dir = Path(argv[0]).parent
    # one process per run folder: two commands sharing runs (e.g. ablation plans with common
    # variants) wait for each other instead of training into the same folder
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / "epochs.json").exists():
            return 0
        spec = json.loads(Path(argv[0]).read_text())
        run_job(spec["recipe"], out_dir, Path(spec["test"]) if spec["test"] else None, **spec.get("options", {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
