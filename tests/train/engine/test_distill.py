"""Distillation: per-kind losses, frozen teachers, feature adaptors, the teacher-output cache."""
import copy
import warnings

import pytest
import torch

from tests.train.tiny_mtl import ALL_TASKS, build_tiny, data_info_dict, random_batches, recipe_doc, write_checkpoint
from training.engine.checkpoint import load_checkpoint, save_checkpoint
from training.engine.distill import (
    DistillConfig,
    DistillError,
    FeatureAdaptors,
    Teachers,
    distillation_losses,
    flip_flags,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _preds(seed=0):
    model, tasks = build_tiny(recipe_doc(seed=seed))
    with torch.no_grad():
        model.heads["super_resolution"].out.weight.normal_(0, 0.01)  # not exactly bicubic
        return model(random_batches(1)[0]["image"].float() / 255.0), tasks


def _detached(preds, requires_grad=False):
    def clone(v):
        if torch.is_tensor(v):
            return v.detach().clone().requires_grad_(requires_grad)
        return {k: clone(x) for k, x in v.items()}
    return clone(preds)


def test_each_kind_is_zero_for_a_perfect_student_positive_otherwise_and_trains_only_the_student():
    teacher_preds, tasks = _preds(seed=0)
    teacher_preds = _detached(teacher_preds)
    config = DistillConfig(teachers={t: "unused.pt" for t in ALL_TASKS}, weights={"depth": 2.0})
    same = distillation_losses(_detached(teacher_preds), teacher_preds, config, tasks)
    assert set(same) == set(ALL_TASKS)
    for task, loss in same.items():
        assert loss.item() == 0.0, task

    other_preds, _ = _preds(seed=1)
    student = _detached(other_preds, requires_grad=True)
    losses = distillation_losses(student, teacher_preds, config, tasks)
    for task, loss in losses.items():
        assert loss.item() > 0, task
        loss.backward()
    leaves = [student[t] for t in ("segmentation", "depth", "super_resolution")] + list(student["detection"].values())
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves)
    assert all(not v.requires_grad and v.grad is None
               for v in [teacher_preds["segmentation"], teacher_preds["depth"], *teacher_preds["detection"].values()])
    # per-task weights scale the term
    unweighted = distillation_losses(student, teacher_preds, DistillConfig(teachers=config.teachers), tasks)
    assert losses["depth"].item() == pytest.approx(2.0 * unweighted["depth"].item())


def test_feature_adaptors_start_as_identity_and_give_zero_for_equal_features():
    feats = {"s4": torch.randn(2, 16, 8, 16), "s2": torch.randn(2, 8, 16, 32)}
    adaptors = FeatureAdaptors({"s2": 8, "s4": 16}, {"depth": {"s2": 8, "s4": 16}, "segmentation": {"s2": 4, "s4": 32}},
                               levels=("s2", "s4"))
    assert adaptors.loss("depth", feats, feats).item() == 0.0
    teacher = {"s2": torch.randn(2, 4, 16, 32), "s4": torch.randn(2, 32, 8, 16)}
    loss = adaptors.loss("segmentation", feats, teacher)
    loss.backward()
    assert loss.item() > 0 and adaptors.convs["segmentation__s4"].weight.grad is not None


def _teacher_checkpoints(tmp_path, tasks=ALL_TASKS):
    """One single-task teacher per task (different seeds), trained weights = random init."""
    paths = {}
    for i, task in enumerate(tasks):
        doc = recipe_doc(tasks=(task,), seed=20 + i)
        model, _ = build_tiny(doc)
        with torch.no_grad():  # non-trivial BN statistics, so a train-mode pass would change them
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
        paths[task] = str(tmp_path / f"{task}.pt")
        write_checkpoint(paths[task], model, doc)
    return paths


def test_teachers_stay_frozen_through_a_real_training_step(tmp_path):
    paths = _teacher_checkpoints(tmp_path)
    config = DistillConfig(teachers=paths, feature_imitation=True, feature_levels=["s2", "s4"])
    teachers = Teachers.from_config(config)
    teachers.check_compatible(data_info_dict(), "stretch")
    before = [copy.deepcopy(m.state_dict()) for m in teachers.models()]
    student, tasks = build_tiny(recipe_doc())
    adaptors = FeatureAdaptors.build(student.trunk.feature_channels, teachers, config.feature_levels)
    optimizer = torch.optim.SGD(list(student.parameters()) + list(adaptors.parameters()), lr=0.1)
    student_before = copy.deepcopy(student.state_dict())
    student.train()
    batch = random_batches(1, batch=2)[0]
    image01 = batch["image"].float() / 255.0
    preds, features = student(image01, return_features=True)
    t_preds, t_feats = teachers(batch, image01)
    losses = distillation_losses(preds, t_preds, config, tasks,
                                 student_features=features, teacher_features=t_feats, adaptors=adaptors)
    sum(losses.values()).backward()
    optimizer.step()
    for m, state in zip(teachers.models(), before):
        assert not m.training and all(not p.requires_grad and p.grad is None for p in m.parameters())
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), k
    assert not torch.equal(student.state_dict()["trunk.stem.0.weight"], student_before["trunk.stem.0.weight"])
    key = "trunk.stem.1.running_mean"
    assert not torch.equal(student.state_dict()[key], student_before[key])


def test_teacher_must_have_the_task_and_the_student_classes(tmp_path):
    paths = _teacher_checkpoints(tmp_path, ("segmentation", "depth"))
    with pytest.raises(DistillError, match="depth.pt: teacher for 'segmentation' has no such task"):
        Teachers({"segmentation": paths["depth"]})
    teachers = Teachers({"segmentation": paths["segmentation"]})
    info = data_info_dict()
    info["semantic_classes"] = ["road", "car"]
    with pytest.raises(DistillError, match="semantic_classes"):
        teachers.check_compatible(info, "stretch")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cache_hits_return_identical_outputs_and_a_changed_teacher_invalidates(tmp_path, dtype):
    paths = _teacher_checkpoints(tmp_path, ("segmentation", "detection"))
    cache = tmp_path / "cache"
    batch = random_batches(1, batch=3)[0]
    flips = torch.tensor([False, True, False])
    teachers = Teachers(paths, cache_dir=str(cache), cache_dtype=dtype, feature_levels=["s4"])
    first, first_feats = teachers(batch, dataset="train", flips=flips)
    assert teachers.stats["misses"] == 6 and teachers.stats["runs"] == 2
    again, again_feats = Teachers(paths, cache_dir=str(cache), cache_dtype=dtype, feature_levels=["s4"])(
        batch, dataset="train", flips=flips)
    assert torch.equal(first["segmentation"], again["segmentation"])
    assert all(torch.equal(first["detection"][k], again["detection"][k]) for k in first["detection"])
    assert torch.equal(first_feats["detection"]["s4"], again_feats["detection"]["s4"])
    uncached, _ = Teachers(paths)(batch)
    tol = 0 if dtype == "float32" else 2e-3
    torch.testing.assert_close(first["segmentation"], uncached["segmentation"], atol=tol, rtol=tol)

    warm = Teachers(paths, cache_dir=str(cache), cache_dtype=dtype, feature_levels=["s4"])
    warm(batch, dataset="train", flips=flips)
    assert warm.stats == {"hits": 6, "misses": 0, "stale": 0, "runs": 0}
    # retrain (change) the segmentation teacher: its cached outputs are no longer used
    state = load_checkpoint(paths["segmentation"])
    state["model"]["heads.segmentation.classifier.bias"] += 1.0
    save_checkpoint(paths["segmentation"], {k: v for k, v in state.items() if k not in ("format", "version")})
    retrained = Teachers(paths, cache_dir=str(cache), cache_dtype=dtype, feature_levels=["s4"])
    out, _ = retrained(batch, dataset="train", flips=flips)
    assert retrained.stats["misses"] == 3 and retrained.stats["hits"] == 3  # detection still cached
    assert not torch.equal(out["segmentation"], first["segmentation"])

    # a different image under the same (dataset, index, flip) key is recomputed, never served
    changed = {"image": batch["image"].flip(-1), "index": batch["index"]}
    retrained(changed, dataset="train", flips=flips)
    assert retrained.stats["stale"] == 6 and retrained.stats["runs"] == 1 + 2


def test_flip_flags_follow_the_dataset_coin():
    from training.engine.augment import flip_coin

    class FakeSet:
        augment, seed, epoch = True, 3, 5
    flags = flip_flags(FakeSet(), torch.arange(16))
    assert flags.tolist() == [flip_coin(3, 5, i) for i in range(16)] and 0 < int(flags.sum()) < 16
    FakeSet.augment = False
    assert not flip_flags(FakeSet(), torch.arange(4)).any()


def test_the_distillation_loss_is_the_task_registrys_own():
    """distillation_losses asks each student task (Task.distill_loss); a task that declares none
    is refused when the distiller is built, naming the recipe key."""
    from tests.train.tiny_mtl import INFO
    from training.engine.distill import Distiller
    from training.tasks.base import Task
    from training.tasks.depth import DepthTask

    class HalvedDepth(DepthTask):
        def distill_loss(self, student, teacher, config):
            return 0.5 * super().distill_loss(student, teacher, config)

    class SilentDepth(DepthTask):
        distill_loss = Task.distill_loss

    teacher_preds, tasks = _preds(seed=0)
    student, _ = _preds(seed=1)
    config = DistillConfig(teachers={"depth": "unused.pt"})
    plain = distillation_losses(student, {"depth": teacher_preds["depth"]}, config, tasks)["depth"]
    halved = HalvedDepth(tasks["depth"].options, INFO)
    assert plain.item() > 0
    assert distillation_losses(student, {"depth": teacher_preds["depth"]}, config, {"depth": halved})["depth"].item() \
        == pytest.approx(0.5 * plain.item())
    with pytest.raises(DistillError, match="distill.teachers.depth: task 'depth' declares no distillation loss"):
        Distiller(config, {"depth": SilentDepth(tasks["depth"].options, INFO)}, data_info_dict(), {}, None, "",
                  "stretch")


def test_the_cache_never_hits_under_zoom_so_the_distiller_turns_it_off(tmp_path):
    """The premise, on real augmented items (Cityscapes fixture tree through TaskDataset): under
    zoom every epoch's input of a sample differs, so each cached entry fails its digest (stale,
    recomputed: never a wrong output, never a hit), while a flip-only run hits from epoch 1 on
    whenever a sample's flip repeats. The Distiller therefore runs a zoom/colour run uncached,
    with one warning naming the reason, and keeps the cache for flip-only augmentation."""
    from mtl_perception.data.readers import open_reader
    from tests.dataset_trees import write_cityscapes
    from tests.train.tiny_mtl import INFO
    from training.engine.augment import AugmentConfig, ColorConfig, flip_coin
    from training.engine.data import TaskDataset
    from training.engine.distill import Distiller

    paths = _teacher_checkpoints(tmp_path, ("segmentation",))
    source = open_reader("cityscapes", write_cityscapes(tmp_path / "cityscapes"), split="val")
    zoom = AugmentConfig(scale=(0.8, 1.25), flip=0.0)
    train_set = TaskDataset(source, {}, INFO.input_size, INFO.sr_scale, augment=zoom)
    teachers = Teachers(paths, cache_dir=str(tmp_path / "cache"))
    for epoch in range(3):
        items = [train_set[(epoch, i)] for i in range(len(source))]
        batch = torch.utils.data.default_collate(items)
        teachers(batch, dataset="cs", flips=torch.zeros(len(items), dtype=torch.bool))
    assert teachers.stats["hits"] == 0 and teachers.stats["stale"] == 2 * len(source)
    flip_set = TaskDataset(source, {}, INFO.input_size, INFO.sr_scale, augment=AugmentConfig(), seed=1)
    flipping = Teachers(paths, cache_dir=str(tmp_path / "flip_cache"))
    seen = set()
    for epoch in range(4):
        flip_set.set_epoch(epoch)
        batch = torch.utils.data.default_collate([flip_set[i] for i in range(len(source))])
        flipping(batch, dataset="cs", flips=flip_flags(flip_set, batch["index"]))
        seen |= {(i, flip_coin(1, epoch, i)) for i in range(len(source))}
    assert flipping.stats["stale"] == 0 and flipping.stats["misses"] == len(seen)
    assert flipping.stats["hits"] == 4 * len(source) - len(seen) > 0

    student, tasks = build_tiny(recipe_doc())
    config = DistillConfig(teachers=paths, cache=True, cache_dir=str(tmp_path / "cache2"))
    for augment, cached in ((zoom, False), (AugmentConfig(color=ColorConfig(brightness=0.1)), False),
                            (AugmentConfig(), True), (None, True)):
        train_set = TaskDataset(source, {}, INFO.input_size, INFO.sr_scale, augment=augment)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            distiller = Distiller(config, tasks, data_info_dict(), student.trunk.feature_channels, train_set, "cs",
                                  "stretch")
        assert (distiller.teachers.cache_dir is not None) == cached
        messages = [str(w.message) for w in caught]
        assert messages == ([] if cached else [m for m in messages if m.startswith("distill.cache is off")]) and \
            len(messages) == (0 if cached else 1), messages


def test_teacher_must_fit_frames_the_way_the_student_does(tmp_path):
    """A teacher trained on letterboxed frames is refused for a student that stretches them (it
    runs on the student's frames), naming the file; the same mode passes."""
    doc = recipe_doc(tasks=("depth",), seed=21)
    doc["data"]["resize"] = "letterbox"
    model, _ = build_tiny(doc)
    path = tmp_path / "letterbox_depth.pt"
    write_checkpoint(str(path), model, doc)
    teachers = Teachers({"depth": str(path)})
    with pytest.raises(DistillError, match="letterbox_depth.pt: teacher's resize 'letterbox' differs from the "
                                           "student's 'stretch'"):
        teachers.check_compatible(data_info_dict(), "stretch")
    teachers.check_compatible(data_info_dict(), "letterbox")
