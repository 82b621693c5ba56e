"""`mtl-train group`: choose which tasks share a network for each budget, train and export them.

1. splits (train/val as the recipe makes them, a test split beside val, as `compare-balancers`);
2. inference cost of every candidate architecture (`costs.py`; cached in <out>/costs.json so a
   rerun chooses from the same numbers);
3. search runs through the job engine (`training.experiments.jobs.run_all`: separate processes,
   `--jobs` at a time, resumable, no test split; held-out losses and TAG affinities recorded by
   this package's job hooks `evaluation.LossHook` and `affinity.TagHook`): Standley's short runs
   (`standley.py`) and/or one joint TAG run with the affinity recorder (`affinity.py`);
4. per budget, per method, the selection (`search.py`);
5. with `--train-final`: every network any selection (or a baseline: all tasks in one network,
   one network per task) uses is trained with the recipe's full schedule, evaluated on the test
   split (per-task loss and main metric, last epoch), exported and verified as ONNX, timed through
   the runtime's loader, and each grouping is written as a model bundle.

Outputs: <results>.json (everything), .md (tables), .png (affinity heatmaps).
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.inference.bundle import write_bundle
from training.engine.checkpoint import load_checkpoint, save_checkpoint
from training.engine.export import export_checkpoint
from training.experiments.jobs import MAIN_METRIC, Job, hook, prepare_splits, run_all
from training.grouping import report
from training.grouping.affinity import UPDATES, tag_candidates
from training.grouping.costs import COST_MODELS, build_network, onnx_latency, torch_costs
from training.grouping.higher_order import all_groups
from training.grouping.search import Candidate, GroupingError, branch_and_bound, brute_force
from training.grouping.standley import (
    Net,
    make_jobs,
    net_recipe,
    predicted_losses,
    standley_candidates,
    standley_nets,
    trained_losses,
)
from training.recipe.config import ConfigError
from training.recipe.core import load_run_recipe

METHODS = {"standley": ["standley"], "tag": ["tag"], "both": ["standley", "tag"]}
#: job hooks (training.experiments.jobs): held-out per-task losses, TAG affinities
LOSS_HOOK = hook("training.grouping.evaluation:LossHook")
TAG_HOOK = "training.grouping.affinity:TagHook"


def _cost_models(doc: Mapping, tasks: Sequence[str], half_scale: float, out_dir: Path, rounds: int,
                 log) -> Dict[str, dict]:
    """Measured cost of every full-width group and every half-width single, cached."""
    nets = [Net(g) for g in all_groups(list(tasks))]
    if half_scale and half_scale != 1:
        nets += [Net((t,), half_scale) for t in tasks]
    cache = out_dir / "costs.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if set(cached) == {n.key for n in nets}:
            log(f"  inference costs from {cache}")
            return cached
    source = MultiTaskDataset(doc["data"]["train"])
    models = {n.key: build_network(doc, n.tasks, n.scale, source) for n in nets}
    reference = Net(tuple(tasks)).key
    measured = torch_costs(models, reference, doc["data"]["input_size"], rounds=rounds)
    out = {n.key: {**measured[n.key], "tasks": list(n.tasks), "scale": n.scale} for n in nets}
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _cost_fn(costs: Mapping[str, dict], model: str):
    def cost(net: Net) -> float:
        if model == "nominal":
            return 0.5 if net.half else 1.0
        return float(costs[net.key][model])
    return cost


def _net_dicts(networks: Sequence[Candidate], cost) -> List[dict]:
    out = []
    for c in networks:
        net = c.info.get("net") or Net(c.tasks)
        out.append({"key": net.key, "tasks": list(net.tasks), "half": net.half, "scale": net.scale,
                    "estimated": c.estimated, "cost": cost(net)})
    return out


def _predict(std_candidates: Sequence[Candidate], nets: Sequence[Net],
             assignment: Mapping[str, str]) -> Optional[float]:
    """Standley's predicted total loss of a grouping (each task from its assigned network)."""
    if not std_candidates:
        return None
    table = {n.key: predicted_losses(std_candidates, n) for n in nets}
    try:
        return math.fsum(table[key][t] for t, key in assignment.items())
    except KeyError:
        return None


def group(recipe_path: str, overrides: Sequence[str] = (), method: str = "both",
          budgets: Sequence[float] = (1, 2, 3, 4),
          seeds: Sequence[int] = (0,), workers: int = 2, short_epochs: int = 2, out: str = "runs/group",
          results: Optional[str] = None, all_subsets: bool = False, train_final: bool = False,
          cost_model: str = "latency", half_scale: float = 0.5, tag_every: int = 5, tag_update: str = "sgd",
          tag_epochs: int = 0, cost_rounds: int = 7, baselines: bool = True, log=print) -> dict:
    budgets = _check_options(method, cost_model, tag_update, budgets, short_epochs, tag_every, seeds)
    methods = METHODS[method]
    recipe, doc = load_run_recipe(recipe_path, overrides)
    tasks = list(recipe.tasks)
    _check_tasks(recipe_path, tasks, all_subsets)
    if half_scale and half_scale != 1 and recipe.model.backbone != "compact":
        raise ConfigError(f"--half-scale: half-size candidates scale the compact trunk's widths; model.backbone "
                          f"{recipe.model.backbone} has fixed widths (use --half-scale 0: full-size candidates only)")
    torch.set_num_threads(1)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    log(f"[1/5] data: {recipe.data.train}, {recipe.data.val} and a test split")
    test_root = prepare_splits(recipe)

    log(f"[2/5] inference cost of {2 ** len(tasks) - 1 + len(tasks)} candidate architectures "
        f"(cost model: {cost_model})")
    costs = _cost_models(doc, tasks, half_scale, out_dir, cost_rounds, log)
    cost = _cost_fn(costs, cost_model)
    for key in costs:
        costs[key]["cost"] = cost(Net(tuple(costs[key]["tasks"]), costs[key]["scale"]))

    std_nets = standley_nets(tasks, all_subsets, half_scale) if "standley" in methods else []
    jobs: List[Job] = make_jobs(std_nets, doc, seeds, out_dir / "standley", short_epochs, [LOSS_HOOK])
    tag_jobs = []
    if "tag" in methods:
        tag_hooks = [LOSS_HOOK, hook(TAG_HOOK, every=tag_every, update=tag_update)]
        tag_jobs = [Job(f"tag/seed{s}", net_recipe(doc, Net(tuple(tasks)), s, tag_epochs or short_epochs),
                        out_dir / "tag" / f"seed{s}", tag_hooks) for s in seeds]
    log(f"[3/5] search runs: {len(std_nets)} Standley networks x {len(seeds)} seed(s), {short_epochs} epoch(s) each; "
        f"{len(tag_jobs)} TAG joint run(s) of {tag_epochs or short_epochs} epoch(s), lookahead every {tag_every} "
        f"micro-batches ({tag_update})")
    runs = run_all(tag_jobs + jobs, None, workers, log=log)

    log("[4/5] choosing groups per budget")
    trained = trained_losses(runs, std_nets, seeds) if std_nets else {}
    std_candidates = standley_candidates(trained, tasks, cost) if std_nets else []
    affinity, tag_cands = _tag_affinity(tag_jobs, tasks, cost)
    selections = _select(budgets, methods, std_candidates, tag_cands, tasks, cost, log)
    groupings = _groupings(selections, tasks, cost, std_candidates, baselines)
    result = {
        "recipe": recipe_path, "overrides": list(overrides), "tasks": tasks, "seeds": list(seeds),
        "methods": methods, "budgets": budgets, "cost_model": cost_model, "half_scale": half_scale,
        "short_epochs": short_epochs, "tag": {"every": tag_every, "update": tag_update,
                                             "epochs": tag_epochs or short_epochs} if tag_jobs else None,
        "main_metric": {t: MAIN_METRIC[t] for t in tasks if t in MAIN_METRIC},
        "costs": costs, "search_run_seconds": _search_seconds(tag_jobs + jobs),
        "standley_losses": {n.key: loss for n, loss in trained.items()},
        "standley_candidates": [{"key": c.name, "tasks": list(c.tasks), "cost": c.cost, "losses": dict(c.losses),
                                 "estimated": c.estimated} for c in std_candidates],
        "affinity": affinity.tolist() if affinity is not None else None,
        "pair_transfer": report.pair_transfer(trained, tasks) if trained else None,
        "selections": selections, "groupings": [{k: v for k, v in g.items() if k != "nets"} for g in groupings],
        "measured": [],
    }
    if train_final:
        log(f"[5/5] final training of {len({n for g in groupings for n in g['nets']})} distinct networks "
            f"({recipe.optim.epochs} epochs, test split), export, latency, bundles")
        result["measured"] = _final(doc, tasks, groupings, seeds, out_dir, test_root, workers, log)
    else:
        log("[5/5] skipped final training (--train-final trains, measures and exports the chosen groupings)")
    result["wall_seconds"] = round(time.time() - t_start)
    _write_results(result, Path(results) if results else out_dir / "grouping.json", recipe.name)
    return result


def _check_options(method: str, cost_model: str, tag_update: str, budgets: Sequence[float], short_epochs: int,
                   tag_every: int, seeds: Sequence[int]) -> List[float]:
    """One-line errors for bad command-line choices; returns the budgets as floats."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}")
    if cost_model not in COST_MODELS:
        raise ConfigError(f"--cost must be one of {', '.join(COST_MODELS)}")
    if tag_update not in UPDATES:
        raise ConfigError(f"--tag-update must be one of {', '.join(UPDATES)}")
    budgets = [float(b) for b in budgets]
    if not budgets or any(not (b > 0) for b in budgets):
        raise ConfigError("--budgets must be positive numbers")
    if short_epochs < 1 or tag_every < 1 or not seeds:
        raise ConfigError("--short-epochs and --tag-every must be >= 1, and at least one seed is needed")
    return budgets


def _check_tasks(recipe_path: str, tasks: Sequence[str], all_subsets: bool) -> None:
    if len(tasks) < 2:
        raise ConfigError(f"{recipe_path}: task grouping needs at least two tasks")
    if len(tasks) > 6:
        raise ConfigError(f"{recipe_path}: {len(tasks)} tasks: the exhaustive searches here are for at most 6")
    if all_subsets and len(tasks) > 4:
        raise ConfigError("--all-subsets trains 2^T - 1 networks; use it for at most 4 tasks")


def _search_seconds(jobs: Sequence[Job]) -> Dict[str, float]:
    """Wall seconds of the search runs, per kind (standley, tag)."""
    seconds: Dict[str, float] = {}
    for j in jobs:
        kind = j.key.split("/")[0]
        seconds[kind] = seconds.get(kind, 0.0) + json.loads(j.done_file.read_text())["wall_seconds"]
    return seconds


def _tag_affinity(tag_jobs: Sequence[Job], tasks: Sequence[str], cost):
    """(mean TAG affinity over the joint runs' seeds, its search candidates); (None, []) without TAG."""
    if not tag_jobs:
        return None, []
    mats = [np.asarray(json.loads((j.out_dir / "affinity.json").read_text())["affinity"]) for j in tag_jobs]
    affinity = np.mean(mats, axis=0)
    return affinity, tag_candidates(affinity, tasks, lambda g: cost(Net(tuple(g))))


def _select(budgets: Sequence[float], methods: Sequence[str], std_candidates: Sequence[Candidate],
            tag_cands: Sequence[Candidate], tasks: Sequence[str], cost, log) -> List[dict]:
    """Per budget and method, the chosen networks (or the reason there are none)."""
    selections = []
    for budget in budgets:
        for m in methods:
            row = {"budget": budget, "method": m}
            try:
                if m == "standley":
                    sel = branch_and_bound(std_candidates, tasks, budget)
                else:  # exhaustive, as Fifty et al.
                    sel = (brute_force if len(tag_cands) <= 16 else branch_and_bound)(tag_cands, tasks, budget)
            except GroupingError as exc:
                row["error"] = str(exc)
                selections.append(row)
                log(f"  budget {budget:g}, {m}: {exc}")
                continue
            nets = [c.info.get("net") or Net(c.tasks) for c in sel.networks]
            row.update(networks=_net_dicts(sel.networks, cost), cost=sel.cost, assignment=sel.assignment,
                       predicted_loss=_predict(std_candidates, nets, sel.assignment))
            if m == "tag":
                row["tag_score"] = -sel.loss
            selections.append(row)
            log(f"  budget {budget:g}, {m}: {report.fmt_groups(row['networks'])} (cost {sel.cost:.2f}"
                + (f", predicted total loss {row['predicted_loss']:.4f})" if row["predicted_loss"] is not None
                   else ")"))
    return selections


def _write_results(result: Mapping, results_path: Path, title: str) -> None:
    """<results>.json, the Markdown tables (.md, also printed) and the affinity heatmaps (.png)."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=1) + "\n")
    tables = (report.search_cost(result) + "\n### Inference cost of the candidate networks\n\n"
              + report.cost_table(result)
              + "\n### Chosen groups per budget\n\n" + report.selection_table(result))
    if result["measured"]:
        tables += "\n### Measured after full training (test split)\n\n" + report.measured_table(result)
    results_path.with_suffix(".md").write_text(tables)
    report.plot(result, results_path.with_suffix(".png"), f"{title}: task affinities")
    print(tables)
    print(f"results: {results_path}, {results_path.with_suffix('.md')}, {results_path.with_suffix('.png')}")


def _groupings(selections: Sequence[Mapping], tasks: Sequence[str], cost, std_candidates,
               baselines: bool = True) -> List[dict]:
    """Distinct groupings: every selection plus (`baselines`) all tasks in one network and one
    network per task."""
    found: Dict[Tuple, dict] = {}

    def add(label: str, nets: Sequence[Net], assignment: Mapping[str, str], by: str, estimated=()):
        key = tuple(sorted((n.key, tuple(sorted(t for t, k in assignment.items() if k == n.key))) for n in nets))
        if key not in found:
            found[key] = {"label": label, "nets": list(nets), "assignment": dict(assignment), "chosen_by": [],
                          "networks": [{"key": n.key, "tasks": list(n.tasks), "half": n.half, "scale": n.scale,
                                        "estimated": n.key in estimated, "cost": cost(n)} for n in nets],
                          "cost": math.fsum(cost(n) for n in nets),
                          "predicted_loss": _predict(std_candidates, nets, assignment)}
        found[key]["chosen_by"].append(by)

    if baselines:
        everything = Net(tuple(tasks))
        add("all-in-one", [everything], {t: everything.key for t in tasks}, "baseline")
        add("single-task", [Net((t,)) for t in tasks], {t: Net((t,)).key for t in tasks}, "baseline")
    for row in selections:
        if row.get("error"):
            continue
        nets = [Net(tuple(n["tasks"]), n["scale"]) for n in row["networks"]]
        add(f"{row['method']}@{row['budget']:g}", nets, row["assignment"], f"{row['method']} @ {row['budget']:g}",
            {n["key"] for n in row["networks"] if n["estimated"]})
    return list(found.values())


def _export(run_dir: Path, tasks: Sequence[str], onnx_path: Path, name: str) -> None:
    """The run's last checkpoint as verified ONNX serving only `tasks` (heads of other tasks a
    grouping takes from another network are dropped, so the bundle serves each task once)."""
    checkpoint = run_dir / "last.pt"
    state = load_checkpoint(checkpoint)
    served = list(state["recipe"]["tasks"])
    if set(tasks) != set(served):
        state = dict(state)
        recipe = copy.deepcopy(state["recipe"])
        recipe["tasks"] = {t: recipe["tasks"][t] for t in served if t in tasks}
        recipe["balancer"] = {"name": "fixed", "options": {}}
        state["recipe"] = recipe
        state["model"] = {k: v for k, v in state["model"].items()
                          if not (k.startswith("heads.") and k.split(".")[1] not in tasks)}
        checkpoint = onnx_path.with_suffix(".pt")
        save_checkpoint(checkpoint, state)
    if not onnx_path.exists():
        export_checkpoint(checkpoint, onnx_path, name=name)


def _final(doc: Mapping, tasks: Sequence[str], groupings: List[dict], seeds: Sequence[int], out_dir: Path,
           test_root: Path, workers: int, log) -> List[dict]:
    nets = sorted({n for g in groupings for n in g["nets"]}, key=lambda n: (-len(n.tasks), n.key))
    jobs = make_jobs(nets, doc, seeds, out_dir / "final", 0, [LOSS_HOOK], prefix="final")
    runs = run_all(jobs, test_root, workers, log=log)
    test_loss, test_metric = {}, {}
    for net in nets:
        per_seed = [runs[f"final/{net.key}/seed{s}"][-1] for s in seeds]  # last epoch: what is deployed
        test_loss[net.key] = {t: statistics.fmean(e["test_loss"][t] for e in per_seed) for t in net.tasks}
        test_metric[net.key] = {t: statistics.fmean(e["test"][t][MAIN_METRIC[t]] for e in per_seed)
                                for t in net.tasks if t in MAIN_METRIC}

    onnx_dir = out_dir / "onnx"
    member_files: Dict[Tuple[str, Tuple[str, ...]], Path] = {}
    for g in groupings:
        for net in g["nets"]:
            served = tuple(t for t in net.tasks if g["assignment"].get(t) == net.key)
            if not served:
                continue
            suffix = "" if served == net.tasks else "-for-" + "+".join(served)
            path = onnx_dir / f"{net.key}{suffix}.onnx"
            if (net.key, served) not in member_files:
                log(f"  export {path.name}")
                _export(out_dir / "final" / net.key / f"seed{seeds[0]}", served, path,
                        f"{doc['name']}-{net.key}{suffix}")
                member_files[(net.key, served)] = path
    reference = (Net(tuple(tasks)).key, tuple(tasks))  # the all-in-one network, when it was trained
    log(f"  timing {len(member_files)} exported networks (onnxruntime, CPU, one thread, interleaved rounds)")
    timed = onnx_latency({k: str(p) for k, p in member_files.items()},
                         reference=reference if reference in member_files else None)
    if reference not in member_files:
        for v in timed.values():
            v["latency"] = math.nan

    measured = []
    for g in groupings:
        members = [(net, tuple(t for t in net.tasks if g["assignment"].get(t) == net.key)) for net in g["nets"]]
        members = [(n, s) for n, s in members if s]
        losses = {t: test_loss[g["assignment"][t]][t] for t in tasks}
        metrics = {t: test_metric[g["assignment"][t]].get(t) for t in tasks}
        entry = {k: v for k, v in g.items() if k != "nets"}
        entry.update(test_loss=losses, test_metric=metrics, test_total_loss=math.fsum(losses.values()),
                     latency_ms=math.fsum(timed[(n.key, s)]["latency_ms"] for n, s in members),
                     latency_ratio=math.fsum(timed[(n.key, s)]["latency"] for n, s in members),
                     members=[member_files[(n.key, s)].name for n, s in members])
        entry["bundle"] = _write_bundle(out_dir / "bundles" / g["label"].replace("@", "-b"),
                                        [member_files[(n.key, s)] for n, s in members], f"{doc['name']}-{g['label']}",
                                        {"grouping": {"label": g["label"], "chosen_by": g["chosen_by"],
                                                      "assignment": g["assignment"], "seed": seeds[0]}}, log)
        measured.append(entry)
    return measured


def _write_bundle(folder: Path, members: Sequence[Path], name: str, provenance: Mapping, log) -> Optional[str]:
    """The grouping as a model bundle (`mtl_perception.inference.bundle.write_bundle`): a manifest plus its
    member ONNX files, loadable by `mtl_perception.inference.loader.load_model` and the node."""
    return str(write_bundle(folder, members, name=name, provenance=provenance, link=True))
