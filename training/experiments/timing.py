"""Latency of several callables side by side, the one timer of every cost table (`mtl-train cost`
and `--sharing`, the full recipe's report, task grouping's costs).

Runs are interleaved: each round times every runner in turn, so a change of load or of speed of
the machine (a virtual machine's speed changes from minute to minute) hits all of them alike,
and ratios between them are far steadier than their milliseconds."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Hashable, Mapping, Optional, TypeVar

import torch

K = TypeVar("K", bound=Hashable)


def time_interleaved(runners: Mapping[K, Callable[[], object]], runs: int = 35, rounds: int = 7, warmup: int = 3,
                     torch_threads: Optional[int] = 1) -> Dict[K, dict]:
    """{key: {"ms": median ms over all runs, "rounds": [median ms of each round]}}.

    `rounds` rounds of ceil(runs / rounds) consecutive calls per runner (rounds = runs: strictly
    one call each in turn), after `warmup` calls each. torch runs with `torch_threads` threads
    meanwhile (None: as it is)."""
    previous = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        for run in runners.values():
            for _ in range(warmup):
                run()
        per_round = max(1, -(-runs // max(1, rounds)))
        times: Dict[K, list] = {key: [] for key in runners}
        for _ in range(max(1, rounds)):
            for key, run in runners.items():
                block = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    run()
                    block.append((time.perf_counter() - t0) * 1e3)
                times[key].append(block)
        return {key: {"ms": float(statistics.median(t for block in blocks for t in block)),
                      "rounds": [float(statistics.median(block)) for block in blocks]} for key, blocks in times.items()}
    finally:
        torch.set_num_threads(previous)


def round_ratios(timed: Mapping[K, dict], reference: K) -> Dict[K, float]:
    """Each key's latency relative to `reference`: the median over rounds of the two rounds'
    medians (robust to a round that the machine slowed for everything)."""
    ref = timed[reference]["rounds"]
    return {key: float(statistics.median(a / b for a, b in zip(v["rounds"], ref))) for key, v in timed.items()}
