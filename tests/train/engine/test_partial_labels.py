"""Partial labels and mixed sources: losses and metrics over labelled samples only, balancers
with an absent task, DDP with different task sets per rank, a mixed-source recipe end to end."""
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mtl_perception.contract import TaskSpec
from mtl_perception.data.dataset import MultiTaskDataset, write_dataset
from mtl_perception.data.synthetic import Camera, generate_dataset
from mtl_perception.evaluation.metrics import DetectionMetric, SegmentationMetric
from mtl_perception.kinds.registry import Scoring, score_frame
from tests.train.balancers.test_balancers import Toy, make, toy_data
from training.balancers import BALANCERS
from training.engine.checkpoint import load_checkpoint
from training.engine.data import MixedSource, SourceSampler, TaskDataset, open_sources
from training.engine.trainer import LAST, Trainer
from training.recipe.config import ConfigError, build
from training.recipe.core import SourceConfig, recipe_from_dict
from training.tasks import TASKS, DataInfo

INFO = DataInfo(semantic_classes=("a", "b", "c"), detection_classes=("car", "person"), sr_scale=2,
                input_size=(32, 16))


def task(name):
    cls = TASKS[name]
    return cls(cls.Options(), INFO)


# -- losses ---------------------------------------------------------------------------------
def test_segmentation_loss_is_the_labelled_samples_cross_entropy():
    """Closed form: mean over the labelled sample's pixels of -log softmax at the target; the
    unlabelled sample's (valid-looking) target does not count. All unlabelled: 0, connected."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [0, 2]]])
    seg = task("segmentation")
    loss = seg.loss(logits, {"segmentation_target": target, "segmentation_labelled": torch.tensor([True, False])})
    logp = np.log(np.exp(logits[0].detach().numpy()) / np.exp(logits[0].detach().numpy()).sum(0))
    expected = -np.mean([logp[0, 0, 0], logp[1, 0, 1], logp[2, 1, 0]])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    none = seg.loss(logits, {"segmentation_target": target, "segmentation_labelled": torch.tensor([False, False])})
    assert float(none) == 0.0 and none.requires_grad
    none.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_depth_and_super_resolution_losses_skip_unlabelled_samples():
    torch.manual_seed(1)
    depth = task("depth")
    log_pred = torch.randn(2, 2, 2)
    target = torch.rand(2, 2, 2) * 10 + 1
    alone = depth.loss(log_pred[:1], {"depth_target": target[:1]})
    mixed = depth.loss(log_pred, {"depth_target": target, "depth_labelled": torch.tensor([True, False])})
    assert float(mixed) == pytest.approx(float((log_pred[0] - target[0].log()).abs().mean()), rel=1e-6)
    assert float(mixed) == pytest.approx(float(alone), rel=1e-6)
    sr = task("super_resolution")
    pred = torch.rand(3, 3, 4, 4, requires_grad=True)
    hr = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    loss = sr.loss(pred, {"super_resolution_target": hr,
                          "super_resolution_labelled": torch.tensor([False, True, True])})
    assert float(loss) == pytest.approx(float((pred[1:] - hr[1:].float() / 255).abs().mean()), rel=1e-6)
    zero = sr.loss(pred, {"super_resolution_target": hr, "super_resolution_labelled": torch.zeros(3, dtype=torch.bool)})
    assert float(zero) == 0.0 and zero.requires_grad


def _detection_batch(det, boxes_per_image, labelled):
    items = [det.prepare({"boxes": np.asarray(b, np.float32).reshape(-1, 4), "labels": np.zeros(len(b), np.int64)})
             for b in boxes_per_image]
    batch = {k: torch.as_tensor(np.stack([it[k] for it in items])) for k in items[0]}
    batch["detection_labelled"] = torch.tensor(labelled)
    return batch


def test_detection_loss_of_an_unlabelled_image_is_zero_and_leaves_its_scores_alone():
    """Before partial labels an image without boxes was an image of background: its heatmap was
    pushed down everywhere. Unlabelled now, it gives no negatives (zero loss, zero gradient), and
    a mixed batch's loss is that of its labelled image alone."""
    torch.manual_seed(2)
    det = task("detection")
    h, w = 16 // 4, 32 // 4
    pred = {"heatmap": torch.randn(2, 2, h, w, requires_grad=True), "size": torch.randn(2, 2, h, w),
            "offset": torch.randn(2, 2, h, w)}
    unlabelled = _detection_batch(det, [[], []], [False, False])
    loss = det.loss(pred, unlabelled)
    loss.backward()
    assert float(loss) == 0.0 and torch.count_nonzero(pred["heatmap"].grad) == 0
    as_background = det.loss(pred, {**unlabelled, "detection_labelled": torch.tensor([True, True])})
    assert float(as_background) > 0  # what the same images cost when labelled "no objects"
    mixed = _detection_batch(det, [[[4, 2, 20, 14]], [[8, 4, 16, 12]]], [True, False])
    alone = {k: v[:1] for k, v in _detection_batch(det, [[[4, 2, 20, 14]]], [True]).items()}
    one = {k: v[:1] for k, v in pred.items()}
    assert float(det.loss(pred, mixed)) == pytest.approx(float(det.loss(one, alone)), rel=1e-6)


# -- metrics --------------------------------------------------------------------------------
def test_task_metrics_skip_unlabelled_samples():
    seg, det = task("segmentation"), task("detection")
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (2, 4, 4)).astype(np.uint8)
    target = rng.integers(0, 3, (2, 4, 4))
    m = seg.new_metric()
    seg.update_metric(m, {"class_map": pred}, {"segmentation_target": target,
                                                "segmentation_labelled": np.array([False, True])})
    ref = SegmentationMetric(3, ignore_index=255)
    ref.update(pred[1:], target[1:])
    assert m.compute()["miou"] == pytest.approx(ref.compute()["miou"])
    boxes = np.array([[[0, 0, 10, 10]], [[0, 0, 10, 10]]], np.float32)
    decoded = {"boxes": boxes, "scores": np.array([[0.9], [0.9]], np.float32), "classes": np.zeros((2, 1), np.int32)}
    batch = {"detection_gt_boxes": boxes, "detection_gt_labels": np.array([[0], [-1]]),
             "detection_labelled": np.array([True, False])}
    m = det.new_metric()
    det.update_metric(m, decoded, batch)
    assert m.compute()["map50"] == pytest.approx(1.0)  # the unlabelled image's box is no false positive
    batch["detection_labelled"] = np.array([True, True])
    m = DetectionMetric(("car", "person"))
    det.update_metric(m, decoded, batch)
    assert m.compute()["map50"] < 1.0


def test_runtime_scoring_skips_the_kinds_a_sample_is_not_labelled_for():
    tasks = {"det": TaskSpec(kind="detection", outputs={}, class_names=("car",), top_k=1),
             "seg": TaskSpec(kind="segmentation", outputs={}, class_names=("a", "b"), ignore_index=255)}
    outputs = {"det": {"boxes": np.array([[0, 0, 8, 8]], np.float32), "scores": np.array([0.9], np.float32),
                       "classes": np.array([0], np.int32)},
               "seg": {"class_map": np.zeros((4, 4), np.uint8)}}
    target = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
              "semantic": np.zeros((4, 4), np.uint8), "labelled_tasks": frozenset({"segmentation"})}
    assert set(score_frame(tasks, outputs, target)) == {"seg"}
    scoring = Scoring(tasks)
    scoring.add(outputs, {**target, "labelled_tasks": frozenset()})
    assert scoring.label_counts()["segmentation"] == 0  # nor do the baselines collect its labels
    assert set(score_frame(tasks, outputs,
                           {k: v for k, v in target.items() if k != "labelled_tasks"})) == {"det", "seg"}


# -- balancers ------------------------------------------------------------------------------
def _shared_and_heads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_balancer_with_an_absent_task(name):
    """Task c absent (its loss the zero, connected value the task losses give). Stateless methods
    equal the same method built for a and b alone; stateful ones apply the weights of their last
    full step to a and b, and their state (buffers, parameters) does not move; c's head gets no
    gradient."""
    x, y = toy_data()
    model = Toy()
    balancer = make(name)
    losses, z, h = model.losses(x, y, cut=balancer.needs_representation)
    held = balancer.balance(losses, ["a", "b", "c"], model.ctx(z, h))  # a full step first
    balancer.step_end()
    model.zero_grad(set_to_none=True)
    balancer.zero_grad(set_to_none=True)
    state = {k: v.clone() for k, v in balancer.state_dict().items()}
    losses, z, h = model.losses(x, y, cut=balancer.needs_representation)
    losses["c"] = losses["c"] * 0.0
    logged = balancer.balance(losses, ["a", "b"], model.ctx(z, h, step=1))
    balancer.step_end()
    got = _shared_and_heads(model)
    assert all(torch.isfinite(g).all() for g in got.values())
    assert all(torch.count_nonzero(got[n]) == 0 for n in got if n.startswith("heads.c."))
    if name == "uw":  # the present tasks' log-variances learn, the absent one's does not
        assert torch.count_nonzero(balancer.log_var.grad[:2]) == 2 and float(balancer.log_var.grad[2]) == 0.0
    else:
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in balancer.parameters())
    assert all(np.array_equal(state[k].numpy(), v.numpy(), equal_nan=v.is_floating_point())
               for k, v in balancer.state_dict().items())
    reference = Toy()
    if balancer.subset_safe:
        ref = make(name, tasks=("a", "b"))
        ref_losses, rz, rh = reference.losses(x, y, cut=ref.needs_representation)
        ref.backward({t: ref_losses[t] for t in "ab"}, reference.ctx(rz, rh, step=1))
    else:
        ref_losses, _, _ = reference.losses(x, y)
        (held["weight/a"] * ref_losses["a"] + held["weight/b"] * ref_losses["b"]).backward()
        assert logged == {"weight/a": held["weight/a"], "weight/b": held["weight/b"]}
    want = _shared_and_heads(reference)
    for n in got:
        if not n.startswith("heads.c."):
            assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7), n


def test_absent_task_holds_the_epoch_state_of_loss_history_balancers(tiny_sources, tmp_path):
    """A task that has no label in a whole epoch: DWA's loss history does not take a NaN."""
    recipe = _mixed_recipe(tiny_sources, tmp_path, balancer={"name": "dwa"},
                           train=[{"root": str(tiny_sources / "train"), "tasks": ["segmentation", "super_resolution"]}])
    trainer = Trainer(recipe, progress=False, plots=False)
    trainer.fit()
    assert np.all(np.isfinite(trainer.balancer.history.numpy()))
    assert np.all(trainer.balancer.history.numpy() == 1.0) and int(trainer.balancer.epochs_seen) == 0


# -- data: the labelled flag, sources, class maps, sampling ---------------------------------
@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    camera = Camera.default(128, 64)
    generate_dataset(root / "train", 16, seed=3, camera=camera, workers=1, progress=False)
    generate_dataset(root / "val", 8, seed=4, camera=camera, workers=1, progress=False)
    rng = np.random.default_rng(5)
    photos = [SimpleNamespace(image=rng.integers(0, 256, (64, 128, 3), dtype=np.uint8),
                              labelled_tasks=["super_resolution"]) for _ in range(8)]
    write_dataset(root / "photos", photos, (), ())
    return root


def test_dataset_flag_says_what_an_image_is_labelled_for(tiny_sources, tmp_path):
    photos = MultiTaskDataset(tiny_sources / "photos")
    assert photos.load(0).labelled_tasks == {"super_resolution"}
    old = MultiTaskDataset(tiny_sources / "train")  # written without the key: today's meaning
    assert old.load(0).labelled_tasks == {"segmentation", "depth", "detection", "super_resolution"}
    doc = json.loads((tiny_sources / "photos" / "dataset.json").read_text())
    doc["images"][0]["labelled"] = ["segmentation"]
    (tmp_path / "images").symlink_to(tiny_sources / "photos" / "images")
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError,
                       match=r"images\[0\]: 'labelled' lists segmentation but the image has no semantic_file"):
        MultiTaskDataset(tmp_path)
    doc["images"][0]["labelled"] = ["boxes"]
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown task kind 'boxes'"):
        MultiTaskDataset(tmp_path)


def _source(**kw):
    return build(SourceConfig, kw, "data.train[0]")


def test_sources_filter_tasks_and_map_classes(tiny_sources):
    train = MultiTaskDataset(tiny_sources / "train")
    sem, det = train.semantic_classes, train.detection_classes
    recipe_sem = (sem[1], "other", sem[0])  # a recipe with its own classes
    mixed = open_sources([_source(root=str(tiny_sources / "train"), tasks=["detection"],
                                  class_map={det[0]: det[0]}),
                          _source(root=str(tiny_sources / "train"), tasks=["segmentation"],
                                  class_map={sem[0]: sem[0]})],
                         recipe_sem, det[:1])
    assert len(mixed) == 32 and mixed.semantic_classes == recipe_sem
    raw, a, b = train.load(3), mixed.load(3), mixed.load(16 + 3)
    assert a.labelled_tasks == {"detection"} and b.labelled_tasks == {"segmentation"}
    assert np.all(a.semantic == 255) and np.all(np.isnan(a.depth)) and len(b.boxes) == 0
    assert np.array_equal(a.boxes, raw.boxes[raw.labels == 0]) and np.all(a.labels == 0)  # other classes dropped
    lut = np.full(256, 255)
    lut[1], lut[0] = 0, 2
    assert np.array_equal(b.semantic, lut[raw.semantic])  # renamed by name, unmapped -> 255
    with pytest.raises(ConfigError, match=r"data.train\[0\].class_map: 'nope' is not a class"):
        open_sources([_source(root=str(tiny_sources / "train"), class_map={"nope": "x"})])
    with pytest.raises(ConfigError, match=f"'{det[0]}' -> 'lorry', which is not a recipe class"):
        open_sources([_source(root=str(tiny_sources / "train"), class_map={det[0]: "lorry"})])


def test_source_sampler_draws_by_weight_and_splits_ranks(tiny_sources):
    mixed = open_sources([_source(root=str(tiny_sources / "train"), weight=3.0),
                          _source(root=str(tiny_sources / "photos"), weight=1.0)])
    assert np.allclose(mixed.weights, [0.75, 0.25])
    ranks = [SourceSampler(mixed, seed=1, num_replicas=2, rank=r) for r in range(2)]
    draws = ranks[0].draws(0)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(draws.tolist())
    many = np.concatenate([ranks[0].draws(e) for e in range(200)])
    assert np.mean(many < 16) == pytest.approx(0.75, abs=0.02)
    items = TaskDataset(mixed, {"segmentation": task("segmentation")}, (32, 16), 2)
    assert bool(items[0]["segmentation_labelled"]) and not bool(items[20]["segmentation_labelled"])


# -- training ---------------------------------------------------------------------------------
def _mixed_recipe(tiny_sources, out_dir, train=None, **overrides):
    doc = {
        "name": "mixed", "seed": 7, "out_dir": str(out_dir),
        "data": {"train": train or [
            {"format": "synthetic", "root": str(out_dir / "segdepth"), "frames": 8, "seed": 11,
             "tasks": ["segmentation", "depth"]},
            {"root": str(tiny_sources / "train"), "tasks": ["detection"]},
            {"root": str(tiny_sources / "photos")},
        ], "val": str(tiny_sources / "val"), "input_size": [64, 32]},
        "model": {"channels": [8, 8, 16, 16, 16], "blocks": [1, 0, 0, 0], "fpn_channels": 16},
        "optim": {"epochs": 2, "batch_size": 4, "warmup_steps": 2, "lr": 0.003},
    }
    doc.update(overrides)
    return recipe_from_dict(doc)


def test_mixed_sources_with_disjoint_labels_train_end_to_end(tiny_sources, tmp_path):
    """Three sources, each labelled for other tasks (one generated on first use): the real Trainer
    trains every task without NaN, and each head learns."""
    trainer = Trainer(_mixed_recipe(tiny_sources, tmp_path), progress=False, plots=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert isinstance(trainer.train_source, MixedSource) and len(trainer.train_source) == 8 + 16 + 8
    history = trainer.fit()
    assert len(history) == 2
    for t in ("segmentation", "depth", "detection", "super_resolution"):
        assert np.isfinite(history[-1][f"train/{t}"]), t
        head = [k for k in before if k.startswith(f"heads.{t}.") and before[k].is_floating_point()]
        assert any(not torch.equal(before[k], trainer.model.state_dict()[k]) for k in head), t
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 2


# -- DDP -------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RANK_TASKS = {"fixed": (["segmentation", "depth", "super_resolution"], ["detection", "super_resolution"]),
              "mgda": (["segmentation", "super_resolution"], ["depth", "super_resolution"]),  # detection absent
              "uw": (["segmentation", "super_resolution"], ["depth", "super_resolution"])}


def _ddp_worker(rank, world, port, root, out_dir, name, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train = [{"root": str(Path(root) / "train"), "tasks": RANK_TASKS[name][rank]}]
        recipe = _mixed_recipe(Path(root), Path(out_dir), train=train, balancer={"name": name},
                               optim={"epochs": 1, "batch_size": 4, "warmup_steps": 1})
        trainer = Trainer(recipe, progress=False, plots=False)
        start = [p.detach().clone() for p in trainer.balancer.parameters()]
        history = trainer.fit()
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]
                         + [p.detach().reshape(-1) for p in trainer.balancer.parameters()])
        moved = [bool((a != b.detach()).any()) for a, b in zip(start, trainer.balancer.parameters())]
        results[rank] = (flat.numpy(), history[-1], moved)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(RANK_TASKS))
def test_ddp_ranks_with_different_task_sets_stay_in_step(tiny_sources, tmp_path, name):
    """gloo, 2 processes, each rank reading a source labelled for other tasks: no hang, no NaN,
    identical parameters on both ranks; with uw, the task no rank has (detection) keeps its
    log-variance (held), while the others learn theirs."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_sources), str(tmp_path), name, results), nprocs=2)
    (flat0, row0, moved0), (flat1, _, _) = results[0], results[1]
    assert np.array_equal(flat0, flat1) and np.all(np.isfinite(flat0))
    tasks = set(RANK_TASKS[name][0]) | set(RANK_TASKS[name][1])
    assert all(np.isfinite(row0[f"train/{t}"]) for t in tasks)
    if name == "uw":
        assert moved0 == [True]
        state = load_checkpoint(tmp_path / LAST)
        log_var = state["balancer"]["log_var"]
        order = list(state["recipe"]["tasks"]) if isinstance(state["recipe"]["tasks"], dict) else None
        assert order is not None and float(log_var[order.index("detection")]) == 0.0
        assert all(float(log_var[order.index(t)]) != 0.0 for t in tasks)
