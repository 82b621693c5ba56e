"""Standley et al.'s candidate networks: which to train, and their losses as search candidates.

Trained (through the job engine, `training.experiments.jobs`, with a short schedule: Standley et al.'s
early-stopping approximation, here the whole cosine schedule compressed into `--short-epochs`):
every single task and every pair at full width, every single task at half width, and with
`all_subsets` every subset. Each network's per-task validation loss at its last epoch is the
candidate's loss (averaged over seeds); groups of three or more that were not trained get the
higher-order estimate from the pairs.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from training.experiments.jobs import Job
from training.grouping.costs import scaled_model
from training.grouping.higher_order import all_groups, estimate_group_losses, group_key
from training.grouping.search import Candidate


@dataclass(frozen=True)
class Net:
    """One network: the tasks it serves (canonical order) and its width factor."""

    tasks: Tuple[str, ...]
    scale: float = 1.0

    @property
    def key(self) -> str:
        return "+".join(self.tasks) + ("" if self.scale == 1 else f"@{self.scale:g}")

    @property
    def half(self) -> bool:
        return self.scale != 1


def net_recipe(base_doc: Mapping, net: Net, seed: int, epochs: int = 0) -> dict:
    """The recipe training `net`: the base recipe with only its tasks, its width, the seed, and
    `epochs` (when > 0) as the whole schedule. Single-task networks use fixed weights."""
    doc = copy.deepcopy(dict(base_doc))
    doc["seed"] = seed
    doc["name"] = f"{base_doc.get('name', 'model')}-{net.key}"
    doc["tasks"] = {t: copy.deepcopy(base_doc["tasks"].get(t) or {}) for t in net.tasks}
    doc["model"] = scaled_model(base_doc["model"], net.scale)
    if len(net.tasks) == 1:
        doc["balancer"] = {"name": "fixed"}
    if epochs:
        doc["optim"] = {**doc["optim"], "epochs": int(epochs)}
    return doc


def standley_nets(tasks: Sequence[str], all_subsets: bool = False, half_scale: float = 0.5) -> List[Net]:
    nets = [Net(g) for g in all_groups(list(tasks), 0 if all_subsets else 2)]
    if half_scale and half_scale != 1:
        nets += [Net((t,), half_scale) for t in tasks]
    return nets


def make_jobs(nets: Sequence[Net], base_doc: Mapping, seeds: Sequence[int], root: Path, epochs: int = 0,
              hooks: Sequence[Mapping] = (), prefix: str = "standley") -> List[Job]:
    """One job per network and seed; `hooks`: job-engine hooks of every run (training.experiments.jobs)."""
    return [Job(f"{prefix}/{net.key}/seed{seed}", net_recipe(base_doc, net, seed, epochs),
                Path(root) / net.key / f"seed{seed}", [dict(h) for h in hooks])
            for net in nets for seed in seeds]


def last_epoch_losses(epochs: Sequence[Mapping], split: str = "val") -> Dict[str, float]:
    """Per-task mean loss of the run's last epoch (the end of its schedule, what is deployed)."""
    return dict(epochs[-1][f"{split}_loss"])


def mean_over_seeds(values: Sequence[Mapping[str, float]]) -> Dict[str, float]:
    return {t: statistics.fmean(v[t] for v in values) for t in values[0]}


def trained_losses(runs: Mapping[str, Sequence[Mapping]], nets: Sequence[Net], seeds: Sequence[int],
                   prefix: str = "standley") -> Dict[Net, Dict[str, float]]:
    """{net: per-task validation loss, mean over seeds}."""
    return {net: mean_over_seeds([last_epoch_losses(runs[f"{prefix}/{net.key}/seed{s}"]) for s in seeds])
            for net in nets}


def standley_candidates(trained: Mapping[Net, Mapping[str, float]], tasks: Sequence[str],
                        cost: Callable[[Net], float]) -> List[Candidate]:
    """Every trained network, plus every untrained full-width group estimated from the pairs."""
    out = []
    by_group = {net.tasks: losses for net, losses in trained.items() if not net.half}
    for net, losses in trained.items():
        out.append(Candidate(net.key, net.tasks, float(cost(net)), dict(losses), info={"net": net}))
    pairs_complete = all(group_key(p, tasks) in by_group for p in all_groups(list(tasks), 2))
    for group in all_groups(list(tasks)):
        if group in by_group or len(group) < 3 or not pairs_complete:
            continue
        net = Net(group)
        out.append(Candidate(net.key, group, float(cost(net)), estimate_group_losses(group, by_group, tasks),
                             estimated=True, info={"net": net}))
    return out


def predicted_losses(candidates: Sequence[Candidate], net: Net) -> Dict[str, float]:
    """A network's per-task losses from Standley's table (trained or estimated); {} if absent."""
    for c in candidates:
        if c.name == net.key:
            return dict(c.losses)
    return {}
