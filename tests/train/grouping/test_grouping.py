"""Task grouping: search (branch-and-bound vs brute force), Standley's higher-order estimate, TAG
lookahead affinities (closed form, small-step limit, exact restore) and a tiny `mtl-train group`."""
import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from training.grouping.affinity import TagRecorder, group_scores, lookahead_affinity, tag_candidates
from training.grouping.higher_order import estimate_group_losses
from training.grouping.search import Candidate, GroupingError, branch_and_bound, brute_force, min_cover_cost

pytestmark = pytest.mark.tiny_data(train=16, val=8)


# -- search ----------------------------------------------------------------------------------

def random_instance(rng: random.Random):
    T = rng.randint(2, 4)
    tasks = [f"t{i}" for i in range(T)]
    candidates = []
    subsets = [s for size in range(1, T + 1) for s in __import__("itertools").combinations(tasks, size)]
    for k, subset in enumerate(rng.sample(subsets, rng.randint(1, len(subsets)))):
        for half in (False, True) if len(subset) == 1 and rng.random() < 0.6 else (False,):
            cost = 0.5 if half else rng.choice([1.0, 1.0, rng.uniform(0.3, 1.2)])
            losses = {t: rng.uniform(0.1, 2.0) * (1.3 if half else 1.0) for t in subset}
            if rng.random() < 0.2:  # exact ties between networks
                losses = {t: round(v, 1) for t, v in losses.items()}
            candidates.append(Candidate(f"c{k}{'h' if half else ''}", tuple(subset), cost, losses))
    for t in tasks:  # every task servable
        if not any(t in c.tasks for c in candidates):
            candidates.append(Candidate(f"s_{t}", (t,), 1.0, {t: rng.uniform(0.1, 2.0)}))
    return tasks, candidates


def test_branch_and_bound_equals_brute_force_on_random_instances():
    rng = random.Random(0)
    checked = 0
    while checked < 300:
        tasks, candidates = random_instance(rng)
        budget = rng.choice([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, rng.uniform(0.5, 4.0)])
        if min_cover_cost(candidates, tasks) > budget:
            with pytest.raises(GroupingError, match="too small"):
                branch_and_bound(candidates, tasks, budget)
            continue
        fast, slow = branch_and_bound(candidates, tasks, budget), brute_force(candidates, tasks, budget)
        assert fast.loss == pytest.approx(slow.loss, rel=1e-12, abs=1e-12)
        assert fast.cost == pytest.approx(slow.cost, abs=1e-9)
        for sel in (fast, slow):  # feasible, covering, and the reported loss is what it gets
            assert sel.cost <= budget + 1e-9 and set(sel.assignment) == set(tasks)
            by_name = {c.name: c for c in sel.networks}
            assert math.isclose(sel.loss, sum(by_name[n].losses[t] for t, n in sel.assignment.items()))
        checked += 1


def test_search_edge_cases():
    a = Candidate("a", ("x",), 1.0, {"x": 1.0})
    b = Candidate("b", ("y",), 1.0, {"y": 1.0})
    ab = Candidate("ab", ("x", "y"), 1.0, {"x": 1.5, "y": 1.5})
    with pytest.raises(GroupingError, match="budget 0.5 is too small.*costs 1"):
        branch_and_bound([a, b, ab], ["x", "y"], 0.5)
    with pytest.raises(GroupingError, match="no candidate network serves z"):
        branch_and_bound([a, b], ["x", "y", "z"], 3)
    with pytest.raises(GroupingError, match="cost must be positive"):
        Candidate("bad", ("x",), 0.0, {"x": 1.0})
    assert branch_and_bound([a, b, ab], ["x", "y"], 1).groups() == [("x", "y")]  # only the shared one fits
    assert sorted(branch_and_bound([a, b, ab], ["x", "y"], 2).groups()) == [("x",), ("y",)]
    # a network that serves no task best is never kept (it would cost for nothing)
    worse = Candidate("worse", ("x",), 0.5, {"x": 3.0})
    assert {c.name for c in branch_and_bound([a, b, ab, worse], ["x", "y"], 3).networks} == {"a", "b"}
    # overlapping networks: each task takes the better one
    xy, yz = Candidate("xy", ("x", "y"), 1, {"x": 1, "y": 5}), Candidate("yz", ("y", "z"), 1, {"y": 2, "z": 1})
    sel = branch_and_bound([xy, yz], ["x", "y", "z"], 2)
    assert sel.assignment == {"x": "xy", "y": "yz", "z": "yz"} and sel.loss == 4


# -- Standley's higher-order approximation ------------------------------------------------------

def test_higher_order_estimate_hand_computed():
    order = ["a", "b", "c"]
    trained = {("a",): {"a": 1.0}, ("b",): {"b": 2.0}, ("c",): {"c": 3.0},
               ("a", "b"): {"a": 0.8, "b": 2.4}, ("a", "c"): {"a": 1.2, "c": 2.7}, ("b", "c"): {"b": 1.6, "c": 3.3}}
    est = estimate_group_losses(("c", "a", "b"), trained, order)
    assert est == pytest.approx({"a": (0.8 + 1.2) / 2, "b": (2.4 + 1.6) / 2, "c": (2.7 + 3.3) / 2})
    assert estimate_group_losses(("b",), trained, order) == {"b": 2.0}
    assert estimate_group_losses(("b", "a"), trained, order) == {"a": 0.8, "b": 2.4}


# -- TAG lookahead affinity --------------------------------------------------------------------

class TwoTargets(nn.Module):
    """L_k = 0.5 * |w - target_k|^2 with w shared: the lookahead has a closed form."""

    def __init__(self, a, b):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(len(a), dtype=torch.float64))
        self.targets = {"one": torch.tensor(a, dtype=torch.float64), "two": torch.tensor(b, dtype=torch.float64)}

    def losses(self):
        return {k: 0.5 * ((self.w - t) ** 2).sum() for k, t in self.targets.items()}


@pytest.mark.parametrize("a,b,sign", [([1.0, 2.0], [2.0, 1.0], 1), ([1.0, 2.0], [-1.0, -1.5], -1)])
def test_affinity_sign_and_closed_form(a, b, sign):
    model = TwoTargets(a, b)
    eta = 0.1
    z, names, base = lookahead_affinity(model.losses, [model.w], lr=eta)
    a_, b_ = np.array(a), np.array(b)
    # at w = 0: w' = eta * a, so Z(one -> two) = (2 eta a.b - eta^2 |a|^2) / |b|^2
    expected = (2 * eta * a_ @ b_ - eta ** 2 * a_ @ a_) / (b_ @ b_)
    assert z[names.index("one"), names.index("two")] == pytest.approx(expected, rel=1e-12)
    assert np.sign(z[0, 1]) == np.sign(z[1, 0]) == sign
    assert z[0, 0] > 0 and z[1, 1] > 0  # a task's own step helps it
    assert torch.count_nonzero(model.w) == 0  # restored


class SmallNet(nn.Module):
    """A conv trunk with BatchNorm and two heads: a non-linear check of the small-step limit."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh(),
                                   nn.Conv2d(6, 6, 3, padding=1))
        self.heads = nn.ModuleDict({"p": nn.Conv2d(6, 1, 1), "q": nn.Conv2d(6, 2, 1), "r": nn.Conv2d(6, 1, 1)})
        self.x = torch.randn(4, 3, 8, 8)
        self.y = {"p": torch.randn(4, 1, 8, 8), "q": torch.randn(4, 2, 8, 8), "r": -torch.randn(4, 1, 8, 8)}

    def losses(self):
        f = self.trunk(self.x)
        return {k: ((h(f) - self.y[k]) ** 2).mean() for k, h in self.heads.items()}


def test_affinity_small_step_limit_is_the_normalised_gradient_dot_product():
    torch.set_default_dtype(torch.float64)
    try:
        model = SmallNet().train()
        shared = list(model.trunk.parameters())
        losses = model.losses()
        names = list(losses)
        grads = [torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
                 for t in names]
        limit = np.array([[float(grads[i] @ grads[j]) / float(losses[names[j]].detach()) for j in range(3)]
                          for i in range(3)])
        errors = []
        for eta in (1e-3, 1e-4, 1e-5):
            z, order, _ = lookahead_affinity(model.losses, shared, modules=[model], lr=eta)
            assert order == names
            errors.append(np.max(np.abs(z / eta - limit)) / np.max(np.abs(limit)))
        # Z(i -> j) / eta -> g_i . g_j / L_j, with an O(eta) error
        assert errors[2] < 1e-3 and errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5
        assert np.sign(limit).tolist() == np.sign(z).tolist()
    finally:
        torch.set_default_dtype(torch.float32)


def _snapshot(model, optimizer):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), \
        [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _identical(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("update", ["sgd", "optimizer"])
def test_lookahead_restores_parameters_buffers_grads_and_optimizer_exactly(update):
    model = SmallNet().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    for _ in range(3):  # non-trivial moments and BN statistics
        optimizer.zero_grad()
        sum(model.losses().values()).backward()
        optimizer.step()
    optimizer.zero_grad()
    sum(model.losses().values()).backward()  # gradients mid-accumulation must survive too
    before = _snapshot(model, optimizer)
    rng = torch.get_rng_state()
    z, _, _ = lookahead_affinity(model.losses, list(model.trunk.parameters()), modules=[model],
                                 optimizer=optimizer, update=update)
    assert np.all(np.isfinite(z)) and np.any(z != 0)
    assert _identical(before, _snapshot(model, optimizer))
    assert torch.equal(rng, torch.get_rng_state())


def test_block_structured_affinity_splits_into_its_blocks():
    tasks = ["a", "b", "c", "d"]
    z = np.full((4, 4), -0.02)
    z[:2, :2] = z[2:, 2:] = 0.05
    np.fill_diagonal(z, 0.1)
    assert group_scores(z, tasks, ["a", "b", "c"]) == pytest.approx({"a": 0.015, "b": 0.015, "c": -0.02})
    cands = tag_candidates(z, tasks, lambda g: 1.0)  # nominal cost: one unit per network
    assert brute_force(cands, tasks, 1).groups() == [("a", "b", "c", "d")]
    for budget in (2, 3, 4):
        assert sorted(brute_force(cands, tasks, budget).groups()) == [("a", "b"), ("c", "d")]
        assert sorted(branch_and_bound(cands, tasks, budget).groups()) == [("a", "b"), ("c", "d")]


# -- through the trainer and the command line -----------------------------------------------

def tiny_doc(data_root, out_dir, **overrides):
    doc = {
        "name": "tiny", "seed": 7, "out_dir": str(out_dir), "threads": 1,
        "data": {"train": str(data_root / "train"), "val": str(data_root / "val"), "input_size": [64, 32]},
        "model": {"channels": [8, 8, 16, 16, 16], "blocks": [1, 0, 0, 0], "fpn_channels": 16},
        "tasks": {"segmentation": {}, "depth": {}},
        "optim": {"epochs": 1, "batch_size": 4, "warmup_steps": 2, "lr": 0.003},
        "export": {"verify_frames": 2},
    }
    doc.update(overrides)
    return doc


def test_tag_recorder_does_not_change_the_training_trajectory(tiny_data, tmp_path):
    from training.engine.trainer import Trainer
    from training.recipe.core import recipe_from_dict

    doc = tiny_doc(tiny_data, tmp_path, optim={"epochs": 1, "batch_size": 4, "accumulate": 2, "warmup_steps": 1})
    plain = Trainer(recipe_from_dict(doc), out_dir=str(tmp_path / "plain"), progress=False, plots=False)
    plain.fit()
    hooked = Trainer(recipe_from_dict(doc), out_dir=str(tmp_path / "hooked"), progress=False, plots=False)
    recorder = TagRecorder(every=1, update="optimizer").install(hooked)
    hooked.fit()
    assert recorder.count == len(hooked.train_loader)  # every micro-batch
    assert _identical(plain.model.state_dict(), hooked.model.state_dict())
    assert _identical(plain.optimizer.state_dict(), hooked.optimizer.state_dict())
    assert plain.history[-1]["train/depth"] == hooked.history[-1]["train/depth"]
    recorder.save(tmp_path / "affinity.json")
    saved = json.loads((tmp_path / "affinity.json").read_text())
    assert saved["tasks"] == ["segmentation", "depth"] and np.asarray(saved["affinity"]).shape == (2, 2)


def test_group_command_end_to_end(tmp_path):
    import yaml

    from mtl_perception.inference.loader import load_model
    from training.cli import main

    doc = tiny_doc(tmp_path / "data", tmp_path / "unused")
    doc["data"]["generate"] = {"train_frames": 12, "val_frames": 8, "seed": 1}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    out = tmp_path / "group"
    rc = main(["group", str(recipe), "--method", "both", "--budgets", "0.5,1", "--short-epochs", "1",
               "--half-scale", "1", "--tag-every", "1", "--cost", "nominal", "--train-final", "--no-baselines",
               "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "grouping.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in result["selections"]}
    assert "too small" in rows[("standley", 0.5)]["error"]
    assert sorted(rows[("standley", 1.0)]["networks"][0]["tasks"]) == ["depth", "segmentation"]  # one network fits
    assert np.asarray(result["affinity"]).shape == (2, 2)
    assert [g["label"] for g in result["measured"]] == ["standley@1"]  # both methods chose it; one network trained
    assert result["measured"][0]["chosen_by"] == ["standley @ 1", "tag @ 1"]
    for g in result["measured"]:
        assert g["test_total_loss"] > 0 and g["latency_ms"] > 0
        bundle = load_model(g["bundle"])
        assert set(bundle.tasks) == {"segmentation", "depth"}
        outputs = bundle.run(np.zeros((32, 64, 3), np.uint8))
        assert set(outputs) == {"segmentation", "depth"}
    table = (out / "grouping.md").read_text()
    assert "Chosen groups per budget" in table and "Measured after full training" in table
    assert (out / "grouping.png").stat().st_size > 1000


def test_overlapping_grouping_exports_each_task_once_as_a_bundle(tiny_data, tmp_path):
    """A network chosen for only some of its tasks is exported without the other heads, so the
    members of a bundle never serve a task twice."""
    from mtl_perception.inference.bundle import write_bundle
    from mtl_perception.inference.loader import load_model
    from training.engine.trainer import Trainer
    from training.grouping.group import _export
    from training.recipe.core import recipe_from_dict

    Trainer(recipe_from_dict(tiny_doc(tiny_data, tmp_path)), out_dir=str(tmp_path / "run"), progress=False,
            plots=False).fit()
    _export(tmp_path / "run", ["depth"], tmp_path / "onnx" / "a-depth.onnx", "a")
    _export(tmp_path / "run", ["segmentation"], tmp_path / "onnx" / "b-seg.onnx", "b")
    assert set(load_model(tmp_path / "onnx" / "a-depth.onnx").tasks) == {"depth"}
    manifest = write_bundle(tmp_path / "bundle", [tmp_path / "onnx" / "a-depth.onnx", tmp_path / "onnx" / "b-seg.onnx"],
                            name="split", link=True)
    bundle = load_model(manifest)
    outputs = bundle.run(np.zeros((32, 64, 3), np.uint8))
    assert set(outputs) == {"segmentation", "depth"} and outputs["depth"]["depth"].shape == (32, 64)


def test_the_job_engine_knows_grouping_only_through_the_hooks_a_job_names():
    """training.experiments.jobs imports nothing of task grouping; grouping hands its recorders
    in as "package.module:Class" hooks, built in the run's process."""
    import subprocess
    import sys

    from training.experiments import jobs
    from training.grouping.affinity import TagHook
    from training.grouping.evaluation import LossHook
    from training.recipe.config import ConfigError

    code = ("import sys, training.experiments.jobs; "
            "print(sorted(m for m in sys.modules if m.startswith('training.grouping')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    built = jobs._build_hooks([jobs.hook("training.grouping.affinity:TagHook", every=3, update="optimizer"),
                               jobs.hook("training.grouping.evaluation:LossHook")])
    assert isinstance(built[0], TagHook) and (built[0].recorder.every, built[0].recorder.update) == (3, "optimizer")
    assert isinstance(built[1], LossHook)
    with pytest.raises(ConfigError, match="write package.module:Class"):
        jobs._build_hooks([{"hook": "training.grouping.affinity.TagHook"}])
