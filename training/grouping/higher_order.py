"""Standley et al.'s higher-order approximation: losses of groups that were never trained.

Training every subset of T tasks costs 2^T - 1 networks. Standley et al. train only the single
tasks and the pairs and estimate a larger group's loss on task t as the mean, over the other
members u, of t's loss in the pair network {t, u}:

    loss_G(t) ~= mean over u in G \\ {t} of loss_{t,u}(t)        (and loss_{t}(t) when G = {t})

so a group is predicted as good for t when t did well next to each of its other members.
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

Group = Tuple[str, ...]


def group_key(tasks: Iterable[str], order: Sequence[str]) -> Group:
    """The tasks as a tuple in the canonical (recipe) order, so {a, b} and {b, a} are one key."""
    tasks = set(tasks)
    return tuple(t for t in order if t in tasks)


def estimate_group_losses(group: Sequence[str], trained: Mapping[Group, Mapping[str, float]],
                          order: Sequence[str]) -> Dict[str, float]:
    """Per-task losses of `group` from the trained single (size 1) and pair (size 2) networks.

    `trained` maps a group key (see `group_key`) to that network's per-task losses."""
    group = group_key(group, order)
    if len(group) == 1:
        return {group[0]: float(trained[group][group[0]])}
    out = {}
    for t in group:
        values = []
        for u in group:
            if u == t:
                continue
            pair = group_key((t, u), order)
            if pair not in trained:
                raise KeyError(f"no trained pair network {pair} to estimate {group}")
            values.append(float(trained[pair][t]))
        out[t] = sum(values) / len(values)
    return out


def all_groups(tasks: Sequence[str], max_size: int = 0) -> List[Group]:
    """Every non-empty subset of `tasks` (up to `max_size` members when > 0), in canonical order."""
    top = len(tasks) if max_size <= 0 else min(max_size, len(tasks))
    return [g for size in range(1, top + 1) for g in itertools.combinations(tasks, size)]
