"""Which networks to deploy: the cheapest-loss set of candidate networks within a cost budget.

A candidate is one network: the tasks it serves, its inference cost (in units of one reference
network) and the loss it reaches on each of those tasks. A selection is a set of candidates that
together serve every task; each task is taken from the chosen network that is best at it (the
sets may overlap, as in Standley et al.), so the objective is

    total(S) = sum over tasks t of  min over c in S serving t of  loss_c(t)

minimised subject to sum of cost_c over S <= budget. Ties in total loss go to the cheaper set.

`branch_and_bound` is exact: it includes or excludes candidates in a fixed order and prunes a
branch when even the best loss every task could still get from the affordable remaining
candidates cannot beat the best selection found so far. `brute_force` enumerates every subset;
the tests check the two agree. TAG's selection uses the same search with loss = -affinity.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

#: budgets are compared with this slack, so a set costing exactly the budget always fits
COST_TOLERANCE = 1e-9
#: relative tolerance below which two total losses count as equal (then the cheaper set wins)
LOSS_TOLERANCE = 1e-12


class GroupingError(ValueError):
    """No selection is possible (budget too small, a task no candidate serves, bad input)."""


@dataclass(frozen=True)
class Candidate:
    name: str
    tasks: Tuple[str, ...]
    cost: float
    losses: Mapping[str, float]  # task -> loss this network reaches on it
    estimated: bool = False  # losses from the higher-order approximation, not a trained network
    info: Mapping = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not self.tasks:
            raise GroupingError(f"candidate {self.name!r} serves no task")
        if not (self.cost > 0 and math.isfinite(self.cost)):
            raise GroupingError(f"candidate {self.name!r}: cost must be positive and finite, got {self.cost}")
        missing = [t for t in self.tasks if t not in self.losses]
        if missing:
            raise GroupingError(f"candidate {self.name!r}: no loss for {', '.join(missing)}")


@dataclass
class Selection:
    networks: Tuple[Candidate, ...]
    assignment: Dict[str, str]  # task -> name of the network that serves it
    per_task: Dict[str, float]  # task -> the loss it gets
    loss: float
    cost: float

    def groups(self) -> List[Tuple[str, ...]]:
        """The task subset of each chosen network (in selection order)."""
        return [c.tasks for c in self.networks]

    def to_dict(self) -> dict:
        return {"networks": [{"name": c.name, "tasks": list(c.tasks), "cost": c.cost, "estimated": c.estimated}
                             for c in self.networks],
                "assignment": dict(self.assignment), "per_task": dict(self.per_task),
                "loss": self.loss, "cost": self.cost}


def _better(loss: float, cost: float, best: Optional[Tuple[float, float]]) -> bool:
    if best is None:
        return True
    tol = LOSS_TOLERANCE * max(1.0, abs(loss), abs(best[0]))
    if loss < best[0] - tol:
        return True
    return abs(loss - best[0]) <= tol and cost < best[1] - COST_TOLERANCE


def _prepare(candidates: Sequence[Candidate], tasks: Sequence[str], budget: float) -> List[Candidate]:
    tasks = list(tasks)
    if not tasks:
        raise GroupingError("no tasks to cover")
    if len(set(c.name for c in candidates)) != len(candidates):
        raise GroupingError("candidate names must be unique")
    if not math.isfinite(budget) or budget <= 0:
        raise GroupingError(f"budget must be positive, got {budget}")
    unserved = [t for t in tasks if not any(t in c.tasks for c in candidates)]
    if unserved:
        raise GroupingError(f"no candidate network serves {', '.join(unserved)}")
    cheapest = min_cover_cost(candidates, tasks)
    if cheapest > budget + COST_TOLERANCE:
        raise GroupingError(f"budget {budget:g} is too small: the cheapest set of networks covering "
                            f"{', '.join(tasks)} costs {cheapest:.3g}")
    return [c for c in candidates if c.cost <= budget + COST_TOLERANCE and any(t in tasks for t in c.tasks)]


def min_cover_cost(candidates: Sequence[Candidate], tasks: Sequence[str]) -> float:
    """The cost of the cheapest set of candidates serving every task (a DP over task subsets)."""
    index = {t: i for i, t in enumerate(tasks)}
    full = (1 << len(tasks)) - 1
    best = [math.inf] * (full + 1)
    best[0] = 0.0
    masks = [(sum(1 << index[t] for t in c.tasks if t in index), c.cost) for c in candidates]
    for mask in range(full + 1):  # supersets are larger integers: one forward pass suffices
        if best[mask] == math.inf:
            continue
        for m, cost in masks:
            new = mask | m
            if new != mask and best[mask] + cost < best[new]:
                best[new] = best[mask] + cost
    return best[full]


def _selection(chosen: Sequence[Candidate], tasks: Sequence[str]) -> Selection:
    assignment, per_task = {}, {}
    for t in tasks:
        owner = min((c for c in chosen if t in c.tasks), key=lambda c: c.losses[t])
        assignment[t], per_task[t] = owner.name, float(owner.losses[t])
    # keep only networks that serve some task best (others would add cost for nothing)
    used = tuple(c for c in chosen if c.name in assignment.values())
    return Selection(networks=used, assignment=assignment, per_task=per_task,
                     loss=math.fsum(per_task[t] for t in tasks), cost=math.fsum(c.cost for c in used))


def brute_force(candidates: Sequence[Candidate], tasks: Sequence[str], budget: float,
                max_candidates: int = 22) -> Selection:
    """Every subset of the affordable candidates; the reference for `branch_and_bound`."""
    pool = _prepare(candidates, tasks, budget)
    if len(pool) > max_candidates:
        raise GroupingError(f"brute force over {len(pool)} candidates is too large (limit {max_candidates})")
    best, best_key = None, None
    for size in range(1, len(pool) + 1):
        for subset in itertools.combinations(pool, size):
            cost = math.fsum(c.cost for c in subset)
            if cost > budget + COST_TOLERANCE:
                continue
            if any(not any(t in c.tasks for c in subset) for t in tasks):
                continue
            sel = _selection(subset, tasks)
            if _better(sel.loss, sel.cost, best_key):
                best, best_key = sel, (sel.loss, sel.cost)
    assert best is not None  # _prepare guarantees a feasible cover
    return best


def branch_and_bound(candidates: Sequence[Candidate], tasks: Sequence[str], budget: float) -> Selection:
    """Exact minimum of the total loss within the budget (ties: the cheaper set)."""
    pool = _prepare(candidates, tasks, budget)
    tasks = list(tasks)
    n, T = len(pool), len(tasks)
    loss = [[float(c.losses[t]) if t in c.tasks else math.inf for t in tasks] for c in pool]
    floor = [min(row[j] for row in loss) for j in range(T)]
    # promising candidates first (low loss relative to the best any network reaches, many tasks),
    # so a good incumbent is found early and prunes most of the tree
    def promise(i):
        served = [j for j in range(T) if loss[i][j] < math.inf]
        rel = sum(loss[i][j] - floor[j] for j in served) / len(served)
        return (rel - 1e-3 * len(served), pool[i].cost)

    order = sorted(range(n), key=promise)
    pool = [pool[i] for i in order]
    loss = [loss[i] for i in order]
    costs = [c.cost for c in pool]

    best: Dict[str, object] = {"key": None, "chosen": None}

    def bound(k: int, remaining: float, current: List[float]) -> float:
        total = 0.0
        for j in range(T):
            value = current[j]
            for i in range(k, n):
                if loss[i][j] < value and costs[i] <= remaining + COST_TOLERANCE:
                    value = loss[i][j]
            if value == math.inf:
                return math.inf
            total += value
        return total

    def visit(k: int, remaining: float, current: List[float], chosen: List[int]) -> None:
        if chosen and all(v < math.inf for v in current):
            # cost of the networks that serve some task best (as `_selection` reports it)
            used = {min((i for i in chosen if loss[i][j] < math.inf), key=lambda i: loss[i][j]) for j in range(T)}
            total, spent = math.fsum(current), math.fsum(costs[i] for i in used)
            if _better(total, spent, best["key"]):
                best["key"], best["chosen"] = (total, spent), list(chosen)
        if k == n:
            return
        lower = bound(k, remaining, current)
        if lower == math.inf:
            return
        if best["key"] is not None:
            incumbent = best["key"][0]
            if lower > incumbent + LOSS_TOLERANCE * max(1.0, abs(lower), abs(incumbent)):
                return
        if costs[k] <= remaining + COST_TOLERANCE:
            improved = [min(a, b) for a, b in zip(current, loss[k])]
            if improved != current:  # a network that helps no task only adds cost
                chosen.append(k)
                visit(k + 1, remaining - costs[k], improved, chosen)
                chosen.pop()
        visit(k + 1, remaining, current, chosen)

    visit(0, budget, [math.inf] * T, [])
    assert best["chosen"] is not None  # _prepare guarantees a feasible cover
    return _selection([pool[i] for i in best["chosen"]], tasks)


def select(candidates: Sequence[Candidate], tasks: Sequence[str], budget: float, exhaustive: bool = False) -> Selection:
    """`branch_and_bound`, or `brute_force` when `exhaustive` (small candidate sets only)."""
    return (brute_force if exhaustive else branch_and_bound)(candidates, tasks, budget)
