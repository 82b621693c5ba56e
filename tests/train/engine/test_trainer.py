"""Trainer, checkpoints and export on real (tiny) synthetic data."""
import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import training.engine.export as export_module
from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.inference.loader import load_model
from tests import REPO
from tests.train.tiny_mtl import tiny_recipe
from training.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.engine.export import ExportError, export_checkpoint
from training.engine.trainer import LAST, Trainer, TrainingError
from training.tasks.depth import DepthTask


def test_resume_matches_uninterrupted_training(tiny_data, tmp_path):
    whole = Trainer(tiny_recipe(tiny_data, tmp_path / "whole"), progress=False)
    whole.fit()
    first = Trainer(tiny_recipe(tiny_data, tmp_path / "split"), progress=False)
    first.fit(stop_after_epoch=1)
    assert load_checkpoint(tmp_path / "split" / LAST)["epoch"] == 1
    torch.manual_seed(12345)  # a resumed process starts with unrelated RNG state
    second = Trainer(tiny_recipe(tiny_data, tmp_path / "split"), progress=False)
    second.fit()
    assert second.epoch == whole.epoch == 2 and second.step == whole.step
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert untimed(second.history) == untimed(whole.history)
    assert second.init_fingerprint == whole.init_fingerprint
    lines = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3  # header + one row per epoch, no duplicates after the resume
    assert (tmp_path / "split" / "curves.png").stat().st_size > 1000


def test_validation_metrics_are_logged_for_every_task(tiny_data, tmp_path):
    trainer = Trainer(tiny_recipe(tiny_data, tmp_path, optim={"epochs": 1, "batch_size": 8}), progress=False)
    row = trainer.fit()[-1]
    for key in ("val/segmentation/miou", "val/depth/abs_rel", "val/depth/delta1", "val/detection/map50",
                "val/super_resolution/psnr", "val/super_resolution/psnr_gain", "train/detection"):
        assert key in row and np.isfinite(row[key]), key


def test_subset_of_tasks_trains_and_exports(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, tasks={"segmentation": {}, "depth": {"max_depth": 60.0}},
                         optim={"epochs": 1, "batch_size": 8})
    Trainer(recipe, progress=False).fit()
    export_checkpoint(tmp_path / LAST, tmp_path / "sd.onnx")
    model = load_model(tmp_path / "sd.onnx")
    assert sorted(model.tasks) == ["depth", "segmentation"] and model.tasks["depth"].max_depth == 60.0


def test_a_checkpoint_of_an_older_head_is_refused_in_one_line(tiny_data, tmp_path):
    """Weights that no longer fit the network the recipe builds (here: super-resolution's body
    before it read the input pixels, 12 input channels fewer) name the file and the tensor."""
    recipe = tiny_recipe(tiny_data, tmp_path, tasks={"super_resolution": {}}, optim={"epochs": 1, "batch_size": 8})
    Trainer(recipe, progress=False).fit()
    state = load_checkpoint(tmp_path / LAST)
    key = "heads.super_resolution.body.0.weight"
    state["model"][key] = state["model"][key][:, :-12].clone()
    old = tmp_path / "old_head.pt"
    save_checkpoint(old, {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError) as caught:
        export_checkpoint(old, tmp_path / "old.onnx")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{old}: its weights do not fit")
    assert f"shape mismatch (1): {key}" in message
    assert not (tmp_path / "old.onnx").exists()


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    """Each step with a non-finite loss is skipped with a warning; `optim.max_nonfinite_steps`
    in a row (here all 3 steps of epoch 2) stop the run with one line naming the task and the
    step; the checkpoint of epoch 1 is untouched."""
    trainer = Trainer(tiny_recipe(tiny_data, tmp_path), progress=False)
    trainer.fit(stop_after_epoch=1)
    before = (tmp_path / LAST).read_bytes()
    monkeypatch.setattr(DepthTask, "loss", lambda self, pred, batch: pred.sum() * float("nan"))
    with pytest.warns(RuntimeWarning, match="non-finite depth loss nan at epoch 2, step [45]: step skipped"):
        with pytest.raises(TrainingError, match=r"training diverged: non-finite depth loss nan at epoch 2, step 6, "
                                                r"3 steps in a row \(optim.max_nonfinite_steps = 3\)") as error:
            Trainer(tiny_recipe(tiny_data, tmp_path), progress=False).fit()
    assert "\n" not in str(error.value)
    assert (tmp_path / LAST).read_bytes() == before
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 1


def test_a_transient_non_finite_gradient_skips_one_step(tiny_data, tmp_path, monkeypatch):
    """A finite loss whose gradient is not (d sqrt(u)/du at u = 0) on one step: that step is
    skipped with a warning naming the task's head, the parameters stay finite, training ends."""
    original, calls = DepthTask.loss, []

    def loss(self, pred, batch):
        calls.append(1)
        value = original(self, pred, batch)
        if len(calls) == 2:  # the second step only
            value = value + torch.sqrt(pred.sum() - pred.sum().detach())  # adds 0, gradient inf
        return value

    monkeypatch.setattr(DepthTask, "loss", loss)
    trainer = Trainer(tiny_recipe(tiny_data, tmp_path, optim={"epochs": 1, "batch_size": 8, "max_nonfinite_steps": 2}),
                      progress=False)
    with pytest.warns(RuntimeWarning, match=r"non-finite gradient in the depth head \(heads.depth.*step 2: "
                                            r"step skipped"):
        trainer.fit()
    assert trainer.step == trainer.steps_per_epoch - 1
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())


def test_a_diverging_run_stops_before_its_checkpoint_is_spoiled(tiny_data, tmp_path):
    """A real divergence, lr 1e6 with AdamW: the weights grow ~100x a step (decoupled weight
    decay lr x wd = 100) while the losses stay finite for a while (batch statistics normalise
    the activations), until the BN statistics, the gradients or the forward overflow; the run
    stops there with the previous epoch's checkpoint, all finite, instead of training on to
    the end and saving garbage."""
    recipe = tiny_recipe(tiny_data, tmp_path, optim={"epochs": 4, "batch_size": 8, "warmup_steps": 2, "lr": 1e6})
    with pytest.warns(RuntimeWarning, match="step skipped"):
        with pytest.raises(TrainingError, match="training diverged: non-finite .* at epoch [2-4], step") as error:
            Trainer(recipe, progress=False, plots=False).fit()
    state = load_checkpoint(tmp_path / LAST)
    assert f"at epoch {state['epoch'] + 1}," in str(error.value)
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_survives_a_kill_during_writes(tmp_path):
    """SIGKILL a process that rewrites a large checkpoint in a loop: the file always loads."""
    path = tmp_path / "ck.pt"
    code = textwrap.dedent(f"""
        import torch
        from training.engine.checkpoint import save_checkpoint
        i = 0
        while True:
            save_checkpoint({str(path)!r}, {{"i": i, "w": torch.full((4_000_000,), float(i))}})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)  # several writes in flight
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(path)
    assert torch.all(state["w"] == float(state["i"]))


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "good.pt", {"w": torch.ones(1000)})
    torn = tmp_path / "torn.pt"
    torn.write_bytes((tmp_path / "good.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="torn.pt: not a readable checkpoint"):
        load_checkpoint(torn)
    torch.save({"something": "else"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not an mtl_perception checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_export_matches_torch_on_real_frames_and_refuses_a_drifting_graph(tiny_data, tmp_path, monkeypatch):
    Trainer(tiny_recipe(tiny_data, tmp_path, optim={"epochs": 1, "batch_size": 8}), progress=False).fit()
    before = {p.name for p in tmp_path.iterdir()}
    worst = export_checkpoint(tmp_path / LAST, tmp_path / "good.onnx")
    # only the model is new: no `.good.onnx.*.tmp.data` (external weights) or temporary folder
    assert {p.name for p in tmp_path.iterdir()} - before == {"good.onnx"}
    assert worst["depth.max_rel"] < 1e-4 and worst["super_resolution.max_levels"] <= 1
    assert worst["segmentation.mismatch_fraction"] < 1e-3 and worst["detection.max_box_px"] < 0.05
    meta = load_model(tmp_path / "good.onnx").metadata
    assert meta.provenance["epoch"] == 1 and meta.provenance["recipe"]["name"] == "tiny"
    assert "val/segmentation/miou" in meta.provenance["metrics"]

    real_export = export_module.export_onnx

    def drifting_export(module, example, path, opset, names):  # a graph that no longer matches torch
        other = copy.deepcopy(module)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.05 * torch.randn_like(p))
        real_export(other, example, path, opset, names)

    monkeypatch.setattr(export_module, "export_onnx", drifting_export)
    with pytest.raises(ExportError, match="onnxruntime differs from torch"):
        export_checkpoint(tmp_path / LAST, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert {p.name for p in tmp_path.iterdir()} - before == {"good.onnx"}


def test_export_accepts_a_saturated_heatmap_whose_ties_onnxruntime_orders_differently(tiny_data, tmp_path):
    """A heatmap bias of +100: every score is exactly 1.0, far more than top-K, and torch and
    onnxruntime keep different subsets of the tied peaks (their boxes differ by pixels). That is
    tie order, not a broken export: the export passes and says how many boxes it concerned."""
    Trainer(tiny_recipe(tiny_data, tmp_path, optim={"epochs": 1, "batch_size": 8}), progress=False).fit()
    state = load_checkpoint(tmp_path / LAST)
    (key,) = [k for k in state["model"] if k.endswith("heatmap.bias")]
    state["model"][key].fill_(100.0)
    save_checkpoint(tmp_path / "saturated.pt", state)
    with pytest.warns(UserWarning, match="saturated.onnx: up to .* detection boxes per frame differ .* only in which "
                                         "of the peaks tied at the top-K cut-off"):
        worst = export_checkpoint(tmp_path / "saturated.pt", tmp_path / "saturated.onnx")
    assert worst["detection.max_score"] == 0.0 and worst["detection.tie_order_boxes"] > 0
    assert worst["detection.max_box_px"] < 0.05


def test_cli_trains_exports_and_evaluates(tiny_data, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: cli
        out_dir: {tmp_path / 'run'}
        data: {{train: {tiny_data / 'train'}, val: {tiny_data / 'val'}, input_size: [64, 32]}}
        model: {{channels: [8, 8, 16, 16, 16], blocks: [0, 0, 0, 0], fpn_channels: 16}}
        optim: {{epochs: 1, batch_size: 8, warmup_steps: 1}}
        export: {{verify_frames: 2}}
    """))
    bin_dir = Path(sys.executable).parent
    run = subprocess.run([str(bin_dir / "mtl-train"), "train", str(recipe), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "model.onnx").exists() and "model:" in run.stdout
    report = tmp_path / "report.json"
    ev = subprocess.run([str(bin_dir / "mtl-perception"), "evaluate", "--model", str(tmp_path / "run" / "model.onnx"),
                         "--data", str(tiny_data / "val"), "--json", str(report), "--no-progress"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    import json

    doc = json.loads(report.read_text())
    assert doc["frames"] == len(MultiTaskDataset(tiny_data / "val"))
    assert set(doc["tasks"]) == {"segmentation", "depth", "detection", "super_resolution"}
    bad = subprocess.run([str(bin_dir / "mtl-train"), "train", str(recipe), "--set", "optim.lr=fast"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "optim.lr: expected a number" in bad.stderr


def test_torchrun_two_processes_train_in_step(tiny_data, tmp_path):
    """Distributed training switches on with torchrun alone: the ranks share the epoch's batches
    (DistributedSampler), DDP averages gradients, and only rank 0 reports and writes."""
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: ddp
        out_dir: {tmp_path / 'run'}
        data: {{train: {tiny_data / 'train'}, val: {tiny_data / 'val'}, input_size: [64, 32]}}
        model: {{channels: [8, 8, 16, 16, 16], blocks: [0, 0, 0, 0], fpn_channels: 16}}
        optim: {{epochs: 1, batch_size: 4, warmup_steps: 1}}
    """))
    torchrun = Path(sys.executable).parent / "torchrun"
    run = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training.cli", "train",
                          str(recipe), "--no-progress", "--no-export"],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    state = load_checkpoint(tmp_path / "run" / LAST)
    assert state["epoch"] == 1 and state["step"] == 24 // (4 * 2)  # each rank saw half the batches
    assert run.stdout.count("epoch 1/1") == 1  # rank 0 alone reports


def test_flips_follow_the_epoch_inside_persistent_workers(tiny_data):
    """DataLoader workers keep their own copy of the dataset; the epoch (hence each sample's
    flip) must come from the sampler, or every epoch would repeat epoch 0's flips."""
    from torch.utils.data import DataLoader, DistributedSampler

    from training.engine.augment import flip_coin
    from training.engine.data import EpochSampler, TaskDataset
    from training.engine.network import build_tasks

    source = MultiTaskDataset(tiny_data / "train")
    tasks = build_tasks(tiny_recipe(tiny_data, "unused"), source)
    dataset = TaskDataset(source, tasks, (64, 32), 2, augment=True, seed=5)
    plain = TaskDataset(source, tasks, (64, 32), 2, augment=False)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=5)
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(sampler), num_workers=1, persistent_workers=True)
    flips_seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)  # the trainer never needs dataset.set_epoch for the workers now
        for batch in loader:
            for image, index in zip(batch["image"].numpy(), batch["index"].numpy()):
                upright = plain[int(index)]["image"]
                flipped = upright[:, :, ::-1]
                expected = flipped if flip_coin(5, epoch, int(index)) else upright
                assert np.array_equal(image, expected), (epoch, int(index))
                flips_seen.append(flip_coin(5, epoch, int(index)))
    assert any(flips_seen) and not all(flips_seen)


def test_no_import_cycle_in_training_even_counting_imports_inside_functions():
    """Every import in training/ (module level or inside a function) as an edge between modules:
    the graph has no cycle, so no import is hidden in a function to dodge one."""
    import ast
    import sys as _sys

    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in (root / "training").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in map(resolve, targets) if t and t != name}
    # a parent package's __init__ importing its own submodules is not a cycle through the child
    state, cycle = {}, []
    _sys.setrecursionlimit(max(_sys.getrecursionlimit(), 5000))

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            if node.startswith(nxt + "."):  # the child's implicit import of its parent package
                continue
            if state.get(nxt) == "open":
                cycle.extend(trail[trail.index(nxt):] + [nxt])
                return True
            if nxt not in state and visit(nxt, trail + [nxt]):
                return True
        state[node] = "done"
        return False

    for start in sorted(graph):
        if start not in state and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)
