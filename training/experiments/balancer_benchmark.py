"""`mtl-train bench-balancers`: what each balancer costs, relative to fixed weights.

One model (the recipe's, by default the quick recipe's), one real batch of synthetic frames,
every balancer driven through full training steps (forward, balancer backward, optimizer step)
in interleaved rounds, so that machine noise hits all methods alike; the reported time is the
median over rounds of the mean step time. Peak memory is the step's working memory above the
resident model and optimizer state: on CUDA `max_memory_allocated` after a reset; on CPU the
peak resident set size (Linux VmHWM, reset through /proc/self/clear_refs) of a fresh process
per method, with glibc told to return every tensor-sized block on free (so that the resident
set follows the live tensors). Results: JSON and a Markdown table, with each method's target from the design
(loss-based ≤ 1.05x, representation/last-layer ≤ 1.5x, per-task gradients ≤ (T+1)x time and
≤ 1.5x memory).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch.utils.data import default_collate

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.data.synthetic import Camera, generate_dataset
from training.balancers import BALANCERS, BalanceContext
from training.engine.data import TaskDataset
from training.engine.network import build_tasks, checkpoint_data_info, data_info_dict, make_tasks, network_from_recipe
from training.recipe.config import ConfigError, build
from training.recipe.core import load_recipe


def category(name: str) -> str:
    cls = BALANCERS[name]
    if cls.manual_gradients and cls.needs_representation:
        return "representation"
    if cls.manual_gradients:
        return "per-task gradients"
    return "loss-based"


def targets(name: str, num_tasks: int) -> Dict[str, float]:
    kind = category(name)
    if kind == "loss-based":
        return {"time": 1.05}
    if kind == "representation":
        return {"time": 1.5}
    return {"time": num_tasks + 1.0, "memory": 1.5}


def make_batch(recipe, batch_size: int, workdir: Path):
    """A real batch: `batch_size` synthetic frames at the recipe's sizes, with task targets."""
    width, height = recipe.data.input_size
    camera = Camera.default(width * recipe.data.sr_scale, height * recipe.data.sr_scale)
    root = generate_dataset(workdir / "frames", batch_size, seed=recipe.seed, camera=camera, workers=1, progress=False)
    source = MultiTaskDataset(root)
    tasks = build_tasks(recipe, source)
    data = TaskDataset(source, tasks, recipe.data.input_size, recipe.data.sr_scale, resize=recipe.data.resize)
    batch = default_collate([data[i] for i in range(batch_size)])
    return batch, data_info_dict(tasks)


def tasks_from_info(recipe, info: Mapping):
    """The recipe's tasks for data facts saved as `data_info_dict` (as in a checkpoint)."""
    return make_tasks(recipe, checkpoint_data_info({"data_info": info}))


class Stepper:
    """One method's training steps on the shared model and batch (what the trainer does per step)."""

    def __init__(self, name: str, recipe, model, tasks, batch, lr: float = 1e-4):
        self.model, self.tasks, self.batch = model, tasks, batch
        cls = BALANCERS[name]
        options = build(cls.Options, recipe.balancer.options if recipe.balancer.name == name else {},
                        "balancer.options")
        self.balancer = cls({t: task.options.weight for t, task in tasks.items()}, options).to(batch["image"].device)
        params = list(model.parameters()) + list(self.balancer.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=lr)
        self.shared, self.last = model.shared_parameters(), model.last_shared_parameters()
        self.own = model.task_parameters()
        self.steps = 0

    def step(self) -> None:
        image01 = self.batch["image"].float() / 255.0
        if self.balancer.needs_representation:
            preds, features, head_inputs = self.model(image01, cut_features=True)
        else:
            (preds, features), head_inputs = self.model(image01, return_features=True), None
        losses = {t: task.loss(preds[t], self.batch) for t, task in self.tasks.items()}
        ctx = BalanceContext(shared_params=self.shared, last_shared_params=self.last, task_params=self.own,
                             representation=list(head_inputs.values()) if head_inputs else None,
                             trunk_features=list(features.values()) if head_inputs else None, step=self.steps)
        self.balancer.backward(losses, ctx)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.balancer.after_step()
        self.steps += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(names: Sequence[str], recipe, model, tasks, batch, steps: int, rounds: int,
                 progress: bool = True) -> Dict[str, List[float]]:
    device = batch["image"].device
    steppers = {n: Stepper(n, recipe, model, tasks, batch) for n in names}
    for stepper in steppers.values():  # warm-up: allocator, optimizer state, first-call overheads
        stepper.step()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name, stepper in steppers.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                stepper.step()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
            if progress:
                print(f"  round {r + 1}/{rounds} {name:12s} {times[name][-1] * 1000:7.1f} ms/step", flush=True)
    return times


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_cuda(name: str, recipe, model, tasks, batch, steps: int) -> float:
    stepper = Stepper(name, recipe, model, tasks, batch)
    stepper.step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        stepper.step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def memory_child(name: str, recipe_path: str, overrides: Sequence[str], batch_file: str, steps: int) -> float:
    """In a fresh process: the step's peak RSS above the RSS after one warm-up step, in MiB."""
    recipe = load_recipe(recipe_path, overrides)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    saved = torch.load(batch_file, weights_only=True)
    tasks = tasks_from_info(recipe, saved["data_info"])
    torch.manual_seed(recipe.seed)
    model = network_from_recipe(recipe, tasks, expanded=False).train()
    stepper = Stepper(name, recipe, model, tasks, saved["batch"])
    stepper.step()
    base = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    for _ in range(steps):
        stepper.step()
    return (_rss_kb("VmHWM") - base) / 1024


def run_benchmark(recipe_path: str, overrides: Sequence[str] = (), names: Optional[Sequence[str]] = None,
                  steps: int = 3, rounds: int = 3, device: str = "cpu", batch_size: Optional[int] = None,
                  memory: bool = True, progress: bool = True) -> dict:
    recipe = load_recipe(recipe_path, overrides)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    names = list(names or sorted(BALANCERS, key=lambda n: (n != "fixed", category(n), n)))
    if "fixed" not in names:
        names.insert(0, "fixed")
    unknown = [n for n in names if n not in BALANCERS]
    if unknown:
        raise ConfigError(f"unknown balancer {unknown[0]!r} (known: {', '.join(sorted(BALANCERS))})")
    batch_size = batch_size or recipe.optim.batch_size
    dev = torch.device(device)
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as tmp:
        batch, info = make_batch(recipe, batch_size, Path(tmp))
        tasks = tasks_from_info(recipe, info)
        torch.manual_seed(recipe.seed)
        model = network_from_recipe(recipe, tasks, expanded=False).to(dev).train()
        batch_dev = {k: v.to(dev) for k, v in batch.items()}
        times = time_methods(names, recipe, model, tasks, batch_dev, steps, rounds, progress)
        peaks: Dict[str, float] = {}
        if memory and dev.type == "cuda":
            peaks = {n: memory_cuda(n, recipe, model, tasks, batch_dev, steps) for n in names}
        elif memory:
            batch_file = Path(tmp) / "batch.pt"
            torch.save({"batch": batch, "data_info": info}, batch_file)
            for n in names:
                args = [sys.executable, "-m", "training.experiments.balancer_benchmark", "--memory-child", n,
                        recipe_path, "--batch-file", str(batch_file), "--steps", str(max(1, steps - 1))]
                for item in overrides:
                    args += ["--set", item]
                # glibc: tensors of 64 KiB and more are mmap-ed and returned on free, so the resident
                # set follows the live tensors and its peak is the step's peak
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
                run = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
                peaks[n] = float(run.stdout.strip().splitlines()[-1])
                if progress:
                    print(f"  memory {n:12s} {peaks[n]:7.1f} MiB", flush=True)
    median = {n: statistics.median(v) for n, v in times.items()}
    T = len(tasks)
    methods = {}
    for n in names:
        row = {"category": category(n), "ms_per_step": round(1000 * median[n], 2),
               "time_ratio": round(median[n] / median["fixed"], 3),
               "ms_per_round": [round(1000 * t, 2) for t in times[n]],
               "target": targets(n, T)}
        if n in peaks:
            row["peak_step_mib"] = round(peaks[n], 1)
            row["memory_ratio"] = round(peaks[n] / peaks["fixed"], 3) if peaks["fixed"] > 0 else None
        row["meets_target"] = (row["time_ratio"] <= row["target"]["time"]
                               and ("memory" not in row["target"] or row.get("memory_ratio") is None
                                    or row["memory_ratio"] <= row["target"]["memory"]))
        methods[n] = row
    return {
        "recipe": str(recipe_path), "overrides": list(overrides), "device": str(dev),
        "torch_threads": torch.get_num_threads(), "batch_size": batch_size,
        "input_size": list(recipe.data.input_size), "tasks": list(tasks), "steps_per_round": steps, "rounds": rounds,
        "parameters": {"shared": sum(p.numel() for p in model.shared_parameters()),
                       "total": sum(p.numel() for p in model.parameters())},
        "memory_method": "cuda max_memory_allocated" if dev.type == "cuda" else "peak RSS (VmHWM) in a fresh process",
        "methods": methods,
    }


def markdown(result: dict) -> str:
    lines = [f"Model of `{result['recipe']}` ({result['parameters']['total'] / 1e6:.2f} M parameters, "
             f"{result['parameters']['shared'] / 1e6:.2f} M shared), {len(result['tasks'])} tasks, batch "
             f"{result['batch_size']} at {result['input_size'][0]}x{result['input_size'][1]}, {result['device']} "
             f"({result['torch_threads']} threads); median of {result['rounds']} interleaved rounds of "
             f"{result['steps_per_round']} steps.", "",
             "| method | kind | ms / step | time vs fixed | step memory (MiB) | memory vs fixed | target | met |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for name, r in result["methods"].items():
        target = (f"≤ {r['target']['time']:g}x time"
                  + (f", ≤ {r['target']['memory']:g}x memory" if "memory" in r["target"] else ""))
        mem = f"{r['peak_step_mib']:.0f}" if "peak_step_mib" in r else "–"
        mratio = f"{r['memory_ratio']:.2f}x" if r.get("memory_ratio") is not None else "–"
        lines.append(f"| `{name}` | {r['category']} | {r['ms_per_step']:.0f} | {r['time_ratio']:.2f}x | "
                     f"{mem} | {mratio} | {target} | {'yes' if r['meets_target'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Entry for the per-method memory child process (`python -m training.experiments.balancer_benchmark`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-child", required=True)
    parser.add_argument("recipe")
    parser.add_argument("--batch-file", required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    print(memory_child(args.memory_child, args.recipe, args.set, args.batch_file, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
