"""Inference cost of candidate networks, in units of one reference network (all tasks, full size).

The budget of the grouping search is a sum of these costs. Heads are not free in this model (at
96x64 a stride-4 head is about a third of the trunk), so a network's cost depends on its tasks as
well as its width; it is measured, not assumed:

- "latency" (default): torch, eval mode, batch 1, one thread; interleaved rounds, each network
  timed against the reference in the same round, median of the per-round ratios (robust to other
  load on the machine drifting during the measurement);
- "flops": multiply-accumulates of every conv/linear layer (`collapse.conv_flops`), the
  load-independent fallback;
- "nominal": Standley et al.'s convention: every full-size network costs 1, a half-size one 0.5,
  whatever it serves.

A "half-size" network scales every trunk width and the pyramid width (which the heads use) by
`scale` (0.5 by default, which measures about half the latency of the full-width network with the
same task; FLOPs fall to about a quarter).
"""
from __future__ import annotations

import copy
from typing import Dict, Hashable, Mapping, Optional, Sequence

import numpy as np
import torch

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import RuntimeOptions
from training.engine.network import build_tasks, network_from_recipe
from training.experiments.timing import round_ratios, time_interleaved
from training.models.collapse import conv_flops, parameter_count
from training.recipe.core import recipe_from_dict

COST_MODELS = ("latency", "flops", "nominal")


def scaled_model(model_doc: Mapping, scale: float) -> dict:
    """The recipe's `model:` section with every channel width scaled (at least 4 channels)."""
    doc = copy.deepcopy(dict(model_doc))
    if scale == 1:
        return doc
    doc["channels"] = [max(4, int(round(c * scale))) for c in doc["channels"]]
    doc["fpn_channels"] = max(4, int(round(doc["fpn_channels"] * scale)))
    return doc


def build_network(recipe_doc: Mapping, tasks: Sequence[str], scale: float = 1.0, data_source=None):
    """An untrained network of the recipe for `tasks` at width `scale` (architecture only: the
    compact layers, as deployed)."""
    doc = copy.deepcopy(dict(recipe_doc))
    doc["tasks"] = {t: (recipe_doc["tasks"].get(t) or {}) for t in tasks}
    doc["model"] = scaled_model(recipe_doc["model"], scale)
    doc["balancer"] = {"name": "fixed"}  # architecture only: no balancer option may name a missing task
    recipe = recipe_from_dict(doc, "grouping candidate")
    source = data_source or MultiTaskDataset(recipe.data.train)
    return network_from_recipe(recipe, build_tasks(recipe, source), expanded=False).eval()


def torch_costs(networks: Mapping[Hashable, torch.nn.Module], reference: Hashable, input_size, rounds: int = 7,
                threads: int = 1) -> Dict[Hashable, dict]:
    """Latency (ratio to the reference) and FLOPs ratio of untrained networks, batch 1."""
    width, height = input_size
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))

    def runner(model):
        def run():
            with torch.no_grad():
                model(example)
        return run

    timed = time_interleaved({k: runner(m) for k, m in networks.items()}, runs=5 * rounds, rounds=rounds, warmup=2,
                             torch_threads=threads)
    ratios = round_ratios(timed, reference)
    flops = {k: conv_flops(m, example) for k, m in networks.items()}
    return {k: {"latency_ms": timed[k]["ms"], "latency": ratios[k], "flops": flops[k] / flops[reference],
                "macs": flops[k], "params": parameter_count(networks[k])} for k in networks}


def onnx_latency(paths: Mapping[Hashable, str], reference: Optional[Hashable] = None, rounds: int = 7,
                 threads: int = 1) -> Dict[Hashable, dict]:
    """Latency of exported models through the runtime's loader (what the node runs), CPU, one
    thread, on one random frame of the model's input size; ratio to `reference` (or the first)."""
    options = RuntimeOptions(providers=["cpu"], intra_op_threads=threads, allow_spinning=False)
    models = {k: load_model(p, options) for k, p in paths.items()}
    rng = np.random.default_rng(0)
    runners = {}
    for key, model in models.items():
        width, height = model.input_size
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        runners[key] = (lambda m, im: (lambda: m.run(im)))(model, image)
    ref = reference if reference is not None else next(iter(paths))
    timed = time_interleaved(runners, runs=5 * rounds, rounds=rounds, warmup=2)
    ratios = round_ratios(timed, ref)
    return {k: {"latency_ms": v["ms"], "latency": ratios[k]} for k, v in timed.items()}
