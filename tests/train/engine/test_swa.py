"""SWA: multi-task BN refresh, the in-training collector, checkpoint averaging (uniform, greedy)."""
import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from tests.train.tiny_mtl import build_tiny, random_batches, recipe_doc, write_checkpoint
from training.engine.checkpoint import load_checkpoint, parameter_fingerprint, save_checkpoint
from training.engine.swa import (
    AveragingError,
    SWACollector,
    average_checkpoints,
    model_from_state,
    score_against,
    update_bn_multitask,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_state(model):
    return {k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_multitask_bn_refresh_equals_update_bn_on_a_single_input_loader():
    model, _ = build_tiny(recipe_doc())
    reference = copy.deepcopy(model)
    batches = random_batches(3)
    model.eval()
    before = {k: v.clone() for k, v in bn_state(model).items()}
    update_bn_multitask(batches, model)
    update_bn([b["image"].float() / 255.0 for b in batches], reference)
    assert not model.training  # mode restored
    for k, v in bn_state(model).items():
        assert torch.equal(v, bn_state(reference)[k]), k
    assert not torch.equal(bn_state(model)["trunk.stem.1.running_mean"], before["trunk.stem.1.running_mean"])
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def _train_epoch(model, optimizer, collector, epoch, snapshots, steps=2):
    for step in range(steps):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 * epoch + step))  # resumable data
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        collector.step_end(epoch)
        if collector.every == "step" and epoch >= collector.start_epoch:
            snapshots.append([p.detach().clone() for p in model.parameters()])


def _swa_run(every, first_epoch=0, state=None, save=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    collector = SWACollector(model, optimizer, start_epoch=2, every=every, swa_lr=0.02, anneal_epochs=2)
    if state is not None:  # resume: model, optimizer, then the collector
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["opt"])
        collector.load_state_dict(state["swa"])
    snapshots, lrs = [], []
    for epoch in range(first_epoch, 4):
        collector.epoch_start(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
        _train_epoch(model, optimizer, collector, epoch, snapshots)
        collector.epoch_end(epoch)
        if every == "epoch" and epoch >= 2:
            snapshots.append([p.detach().clone() for p in model.parameters()])
        if save is not None and epoch == 2:  # through the real (weights_only) checkpoint format
            save_checkpoint(save, {"swa": collector.state_dict(), "opt": optimizer.state_dict(),
                                   "model": model.state_dict()})
    return collector, snapshots, lrs


@pytest.mark.parametrize("every", ["epoch", "step"])
def test_collector_averages_the_snapshots_and_resumes(every, tmp_path):
    collector, snapshots, lrs = _swa_run(every, save=tmp_path / "ck.pt")
    assert collector.n_averaged == len(snapshots) == (2 if every == "epoch" else 4)
    for i, p in enumerate(collector.averaged.module.parameters()):
        torch.testing.assert_close(p, torch.stack([s[i] for s in snapshots]).mean(0))
    assert lrs[:3] == [0.1, 0.1, 0.1] and lrs[3] == pytest.approx(0.06)  # SWALR: cos halfway to 0.02
    assert collector.controls_lr(2) and not collector.controls_lr(1)

    resumed, _, resumed_lrs = _swa_run(every, first_epoch=3, state=load_checkpoint(tmp_path / "ck.pt"))
    assert resumed_lrs == [pytest.approx(0.06)] and resumed.n_averaged == collector.n_averaged
    for p, q in zip(resumed.averaged.module.parameters(), collector.averaged.module.parameters()):
        assert torch.equal(p, q)


def _snapshots(tmp_path, count=3, doc=None, scales=None):
    """Checkpoints of one initialisation with known parameters: init + scale_i * direction."""
    doc = doc or recipe_doc()
    model, _ = build_tiny(doc)
    fingerprint = parameter_fingerprint(model.state_dict())
    g = torch.Generator().manual_seed(5)
    direction = {n: torch.randn(p.shape, generator=g) * 0.1 for n, p in model.named_parameters()}
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    scales = scales if scales is not None else [float(i) for i in range(count)]
    paths = []
    for i, s in enumerate(scales):
        snap = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in snap.named_parameters():
                p.copy_(init[n] + s * direction[n])
            for b in snap.buffers():  # distinct BN statistics per snapshot
                if b.is_floating_point():
                    b.add_(0.01 * i)
        path = tmp_path / f"run{i}.pt"
        write_checkpoint(path, snap, doc, init_fingerprint=fingerprint)
        paths.append(str(path))
    return paths, init, direction


def test_uniform_average_is_the_mean_with_refreshed_bn(tmp_path):
    paths, init, direction = _snapshots(tmp_path, 3)
    batches = random_batches(2)
    result = average_checkpoints(paths, tmp_path / "avg.pt", bn_loader=batches)
    written = model_from_state(load_checkpoint(tmp_path / "avg.pt"))
    mean_scale = (0 + 1 + 2) / 3
    expected = copy.deepcopy(written)
    with torch.no_grad():
        for n, p in expected.named_parameters():
            p.copy_(init[n] + mean_scale * direction[n])
    update_bn([b["image"].float() / 255.0 for b in batches], expected)
    for (n, p), q in zip(written.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    for k, v in bn_state(written).items():
        torch.testing.assert_close(v, bn_state(expected)[k], rtol=1e-4, atol=1e-6, msg=k)
    assert result.selected == paths and result.state["averaged"]["bn"] == "refreshed"


def test_refuses_checkpoints_without_a_common_initialisation(tmp_path):
    paths, _, _ = _snapshots(tmp_path, 2)
    other_doc = recipe_doc(seed=8)
    other, _ = build_tiny(other_doc)
    write_checkpoint(tmp_path / "other.pt", other, other_doc)
    with pytest.raises(AveragingError, match=r"run0\.pt and .*other\.pt do not share an initialisation"):
        average_checkpoints([paths[0], str(tmp_path / "other.pt")], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()
    # same initialisation but a different depth range: refused; a different task weight: fine
    model, _ = build_tiny(recipe_doc())
    fp = parameter_fingerprint(model.state_dict())
    ranged = recipe_doc()
    ranged["tasks"]["depth"] = {"max_depth": 60.0}
    write_checkpoint(tmp_path / "ranged.pt", model, ranged, init_fingerprint=fp)
    with pytest.raises(AveragingError, match="differ in tasks"):
        average_checkpoints([paths[0], str(tmp_path / "ranged.pt")])
    write_checkpoint(tmp_path / "weighted.pt", model, recipe_doc(weights={"depth": 3.0}), init_fingerprint=fp)
    average_checkpoints([paths[0], str(tmp_path / "weighted.pt")])


def test_greedy_keeps_a_checkpoint_only_when_the_average_improves(tmp_path):
    # snapshot i = init + c_i * d; score = -(mean c of the average - 0.5)^2 * |d|^2 (closed form)
    # alone: c=0.4 -> -0.01, 0.9 -> -0.16, 0.65 -> -0.0225, -0.5 -> -1: order 0.4, 0.65, 0.9, -0.5
    # {0.4} -> +0.65: mean 0.525 (-0.000625, kept); +0.9: mean 0.65 (-0.0225, dropped);
    # +(-0.5): mean 0.1833 (dropped)  => the average of 0.4 and 0.65
    scales = [0.9, 0.4, -0.5, 0.65]
    paths, init, direction = _snapshots(tmp_path, scales=scales)
    norm2 = sum(float(d.pow(2).sum()) for d in direction.values())

    def score(model):
        c = sum(float(((p.detach() - init[n]) * direction[n]).sum()) for n, p in model.named_parameters()) / norm2
        return -(c - 0.5) ** 2 * norm2

    result = average_checkpoints(paths, tmp_path / "greedy.pt", greedy=True, evaluate_fn=score)
    assert result.selected == [paths[1], paths[3]]
    assert result.score == pytest.approx(-(0.525 - 0.5) ** 2 * norm2, rel=1e-4)
    written = load_checkpoint(tmp_path / "greedy.pt")
    assert written["averaged"]["selected"] == [paths[1], paths[3]]
    for n, p in model_from_state(written).named_parameters():
        torch.testing.assert_close(p, init[n] + 0.525 * direction[n], rtol=1e-5, atol=1e-6)


def test_delta_m_score_skips_zero_references():
    main = {"segmentation": "miou", "depth": "abs_rel", "detection": "map50"}
    ref = {"segmentation": {"miou": 0.5}, "depth": {"abs_rel": 0.2}, "detection": {"map50": 0.0}}
    better = {"segmentation": {"miou": 0.55}, "depth": {"abs_rel": 0.18}, "detection": {"map50": 0.1}}
    assert score_against(better, ref, main) == pytest.approx(10.0)  # (+10 % + 10 %) / 2
    assert score_against(ref, ref, main) == 0.0
