"""The job engine: many short training runs, each in its own process and folder, resumable.

Balancer comparison (`compare.py`), sweeps, ablations, the full recipe and task grouping are
built on it: they make a list of `Job`s (a key, a full recipe document, a run folder, optional
hooks), `run_all` trains those that have not finished, `--jobs` processes at a time with one
torch thread each, and returns every run's per-epoch record.

One run (`run_job`, in the child process `python -m training.experiments.jobs <job.json>`) trains
epoch by epoch; after each epoch it evaluates validation (the trainer) and, when given, a test
split; the record of every epoch goes to `epochs.json` when the run finishes (a finished run is
not run again, an interrupted one resumes from its checkpoint and `epochs.partial.json`).

Hooks let a caller record more without the engine knowing it: a job names hook classes as
`"package.module:Class"` with keyword arguments (they cross into the child process in
`job.json`); the child builds each one and calls `start(trainer, out_dir, done_epochs)` once
after the trainer exists and `epoch_end(trainer, epoch, record, test_loader)` after every epoch
(it may add keys to that epoch's record and write files in the run folder). Task grouping hands
in its TAG recorder and its held-out loss evaluation this way.
"""
from __future__ import annotations

import copy
import fcntl  # Unix-only, as the rest of the job engine (one lock file per run folder)
import importlib
import json
import os
import resource  # Unix-only: peak memory of a run
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml
from torch.utils.data import DataLoader

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.data.synthetic import Camera, generate_dataset
from training.engine.data import TaskDataset
from training.engine.logs import plot_weights, read_csv
from training.engine.trainer import Trainer, evaluate, prepare_data
from training.models.collapse import parameter_count
from training.recipe.config import ConfigError
from training.recipe.core import recipe_from_dict

#: each task kind's main metric: what model selection and Δm read
MAIN_METRIC = {"segmentation": "miou", "depth": "abs_rel", "detection": "map50", "super_resolution": "psnr"}


@dataclass
class Job:
    key: str  # e.g. "single/depth/seed0", "pcgrad/seed1"
    recipe: dict  # full recipe document
    out_dir: Path
    #: hooks of this run: [{"hook": "package.module:Class", "options": {keyword arguments}}]
    hooks: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def done_file(self) -> Path:
        return self.out_dir / "epochs.json"


def hook(target: str, **options) -> Dict[str, Any]:
    """A job hook entry: `target` is "package.module:Class", built in the child as Class(**options)."""
    return {"hook": target, "options": options}


def main_values(metrics: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """{"task/main metric": value} of the tasks in `metrics` that have a main metric."""
    return {f"{t}/{MAIN_METRIC[t]}": float(m[MAIN_METRIC[t]]) for t, m in metrics.items() if t in MAIN_METRIC}


# -- data ----------------------------------------------------------------------------------------
def test_split(recipe) -> Path:
    return Path(recipe.data.val).parent / "test"


def prepare_splits(recipe) -> Path:
    """Train/val as the recipe generates them, plus a test split beside val (seed + 2)."""
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


# -- the usual grid of jobs ----------------------------------------------------------------------
def parse_method(spec: str):
    """"mgda" or "mgda:normalization=l2[:key=value...]" (values parsed as YAML) -> (name, options)."""
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
    """Per seed: single-task baselines (one per task, fixed weight), one run per balancer
    `method` ("name[:key=value...]") and one per fixed task-weight vector in `weights`."""
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


# -- one run (child process) ---------------------------------------------------------------------
def _build_hooks(specs: Sequence[Mapping[str, Any]]) -> List[Any]:
    """The job's hook objects from their "package.module:Class" names."""
    hooks = []
    for spec in specs:
        module, sep, name = str(spec["hook"]).partition(":")
        if not sep:
            raise ConfigError(f"job hook {spec['hook']!r}: write package.module:Class")
        hooks.append(getattr(importlib.import_module(module), name)(**dict(spec.get("options") or {})))
    return hooks


def _test_loader(trainer: Trainer, test_root: Optional[Path]) -> Optional[DataLoader]:
    if test_root is None:
        return None
    data = trainer.recipe.data
    test_set = TaskDataset(MultiTaskDataset(test_root), trainer.tasks, data.input_size, data.sr_scale,
                           resize=data.resize)
    return DataLoader(test_set, batch_size=trainer.recipe.optim.batch_size, shuffle=False)


def _epoch_record(trainer: Trainer, epoch: int, row: Mapping, test_loader: Optional[DataLoader]) -> dict:
    """What epochs.json keeps of one epoch: validation (from the trainer's row), test, train loss."""
    val = {t: {k.split("/", 2)[2]: v for k, v in row.items() if k.startswith(f"val/{t}/")} for t in trainer.tasks}
    test = evaluate(trainer.model, trainer.tasks, test_loader) if test_loader is not None else None
    return {"epoch": epoch, "seconds": row["seconds"], "val": val, "test": test,
            "train_loss": {t: row[f"train/{t}"] for t in trainer.tasks}}


def run_job(recipe_doc: dict, out_dir: Path, test_root: Optional[Path],
            hooks: Sequence[Mapping[str, Any]] = ()) -> List[dict]:
    """Trains one recipe epoch by epoch; after each epoch evaluates validation (the trainer) and
    test (unless `test_root` is None) and calls the hooks; returns and writes epochs.json.
    Resumes from the run's checkpoint."""
    recipe = recipe_from_dict(recipe_doc, str(out_dir))
    trainer = Trainer(recipe, out_dir=str(out_dir), progress=False, plots=False)
    test_loader = _test_loader(trainer, test_root)
    partial = out_dir / "epochs.partial.json"
    epochs = json.loads(partial.read_text()) if partial.exists() else []
    active = _build_hooks(hooks)
    for h in active:
        h.start(trainer, out_dir, len(epochs))
    t0 = time.time()
    for epoch in range(len(epochs) + 1, recipe.total_epochs + 1):
        history = trainer.fit(stop_after_epoch=epoch)
        epochs.append(_epoch_record(trainer, epoch, history[-1], test_loader))
        for h in active:
            h.epoch_end(trainer, epoch, epochs[-1], test_loader)
        partial.write_text(json.dumps(epochs))
    plot_weights(read_csv(out_dir / "steps.csv"), out_dir / "weights.png",
                 f"{recipe.balancer.name}, seed {recipe.seed}")
    result = {"epochs": epochs, "wall_seconds": round(time.time() - t0, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
              "parameters": parameter_count(trainer.model)}
    (out_dir / "epochs.json").write_text(json.dumps(result))
    return epochs


# -- many runs -----------------------------------------------------------------------------------
def run_all(jobs: Sequence[Job], test_root: Optional[Path], workers: int, threads: int = 1,
            log=print) -> Dict[str, List[dict]]:
    """Runs the jobs that have not finished, `workers` processes at a time."""
    todo = [j for j in jobs if not j.done_file.exists()]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished; running {len(todo)} with {workers} at a time")

    def one(job: Job):
        job.out_dir.mkdir(parents=True, exist_ok=True)
        spec = job.out_dir / "job.json"
        spec.write_text(json.dumps({"recipe": job.recipe, "test": str(test_root) if test_root else None,
                                    "hooks": job.hooks}))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.time()
        run = subprocess.run([sys.executable, "-m", "training.experiments.jobs", str(spec)], capture_output=True,
                             text=True, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"{job.key} failed:\n{run.stderr[-3000:]}")
        log(f"  {job.key} done in {time.time() - t0:.0f} s")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(one, j) for j in todo]:
            future.result()
    return {j.key: json.loads(j.done_file.read_text())["epochs"] for j in jobs}


def main(argv: Optional[List[str]] = None) -> int:
    """Child process: `python -m training.experiments.jobs <job.json>` trains and evaluates one run."""
    argv = sys.argv[1:] if argv is None else argv
    out_dir = Path(argv[0]).parent
    # one process per run folder: two commands sharing runs (e.g. ablation plans with common
    # variants) wait for each other instead of training into the same folder
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / "epochs.json").exists():
            return 0
        spec = json.loads(Path(argv[0]).read_text())
        run_job(spec["recipe"], out_dir, Path(spec["test"]) if spec["test"] else None, spec.get("hooks", ()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
