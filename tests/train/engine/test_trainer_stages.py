"""SAM, SWA and distillation inside the real Trainer (the modules alone: test_sam/swa/distill)."""
import pytest
import torch

from tests.train.tiny_mtl import tiny_recipe
from training.engine.checkpoint import load_checkpoint, parameter_fingerprint
from training.engine.trainer import LAST, Trainer

OPTIM = {"epochs": 3, "batch_size": 8, "warmup_steps": 1, "lr": 0.003}


def train(data, out, stop=None, **sections):
    recipe = tiny_recipe(data, out, optim=sections.pop("optim", OPTIM), **sections)
    trainer = Trainer(recipe, progress=False, plots=False)
    trainer.fit(stop_after_epoch=stop)
    return trainer


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sam_changes_the_step_and_resumes_exactly(tiny_data, tmp_path):
    optim = {**OPTIM, "epochs": 2, "accumulate": 2}
    plain = train(tiny_data, tmp_path / "plain", optim=optim)
    sam = train(tiny_data, tmp_path / "sam", optim=optim, sam={"rho": 0.05}, balancer={"name": "pcgrad"})
    sam_plain_balancer = train(tiny_data, tmp_path / "sam_fixed", optim=optim, sam={"rho": 0.05})
    pairs = zip(params(plain.model).values(), params(sam_plain_balancer.model).values())
    assert any(not torch.equal(a, b) for a, b in pairs)
    assert sam.step == plain.step  # one optimizer step per accumulation window, second pass included
    first = train(tiny_data, tmp_path / "split", optim=optim, sam={"rho": 0.05}, stop=1)
    assert first.epoch == 1
    resumed = train(tiny_data, tmp_path / "split", optim=optim, sam={"rho": 0.05})
    assert_same(params(resumed.model), params(sam_plain_balancer.model))


def test_swa_average_is_the_mean_of_the_epoch_snapshots(tiny_data, tmp_path):
    """Without swa.lr the schedule is unchanged, so the plain run's weights after epochs 2 and 3
    are exactly the snapshots SWA (start_epoch 1) collects; the result is their mean, with BN
    statistics recomputed on training batches."""
    plain_2 = params(train(tiny_data, tmp_path / "plain", stop=2).model)
    plain_3 = params(train(tiny_data, tmp_path / "plain").model)
    swa = train(tiny_data, tmp_path / "swa", swa={"start_epoch": 1})
    assert swa.swa_done and load_checkpoint(tmp_path / "swa" / LAST)["swa_done"]
    averaged = params(swa.model)
    named_params = dict(swa.model.named_parameters())
    for name, value in averaged.items():
        if name in named_params:
            assert torch.allclose(value, (plain_2[name] + plain_3[name]) / 2, atol=1e-6), name
    bn = [n for n in averaged if n.endswith("running_mean")]
    assert bn and any(not torch.allclose(averaged[n], (plain_2[n] + plain_3[n]) / 2) for n in bn)  # refreshed
    # interrupted inside the SWA phase, the resumed run averages the same snapshots
    train(tiny_data, tmp_path / "split", swa={"start_epoch": 1}, stop=2)
    assert load_checkpoint(tmp_path / "split" / LAST)["swa"]["averaged"]["n_averaged"] == 1
    resumed = train(tiny_data, tmp_path / "split", swa={"start_epoch": 1})
    assert_same(params(resumed.model), averaged)


def test_swa_lr_takes_over_the_schedule(tiny_data, tmp_path):
    trainer = train(tiny_data, tmp_path, swa={"start_epoch": 1, "lr": 0.0005, "anneal_epochs": 1})
    lrs = [row["lr"] for row in trainer.history]
    assert lrs[1] == pytest.approx(0.0005) and lrs[2] == pytest.approx(0.0005)


@pytest.fixture(scope="module")
def teachers(tiny_data, tmp_path_factory):
    """One-epoch single-task teachers for segmentation and depth."""
    root = tmp_path_factory.mktemp("teachers")
    paths = {}
    for task in ("segmentation", "depth"):
        train(tiny_data, root / task, optim={**OPTIM, "epochs": 1}, tasks={task: {}})
        paths[task] = str(root / task / LAST)
    return paths


def test_distillation_trains_the_student_and_never_the_teachers(tiny_data, tmp_path, teachers):
    before = {t: parameter_fingerprint(load_checkpoint(p)["model"]) for t, p in teachers.items()}
    optim = {**OPTIM, "epochs": 1}
    plain = train(tiny_data, tmp_path / "plain", optim=optim)
    zero = train(tiny_data, tmp_path / "zero", optim=optim,
                 distill={"teachers": teachers, "weights": {"segmentation": 0.0, "depth": 0.0}})
    assert_same(params(zero.model), params(plain.model))  # zero weight: exactly the plain run
    student = train(tiny_data, tmp_path / "student", optim=optim,
                    distill={"teachers": teachers, "feature_imitation": True})
    assert any(not torch.equal(a, b) for a, b in zip(params(plain.model).values(), params(student.model).values()))
    for model in student.distiller.teachers.models():
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    after = {t: parameter_fingerprint(m.state_dict()) for t, m in zip(teachers, student.distiller.teachers.models())}
    assert after == before
    assert load_checkpoint(tmp_path / "student" / LAST)["distill_adaptors"]


def test_cached_teacher_outputs_give_the_same_training(tiny_data, tmp_path, teachers):
    optim = {**OPTIM, "epochs": 2}
    direct = train(tiny_data, tmp_path / "direct", optim=optim, distill={"teachers": teachers})
    cached = train(tiny_data, tmp_path / "cached", optim=optim,
                   distill={"teachers": teachers, "cache": True, "cache_dir": str(tmp_path / "cache")})
    assert cached.distiller.teachers.stats["hits"] > 0
    for a, b in zip(params(direct.model).values(), params(cached.model).values()):
        assert torch.allclose(a, b, atol=1e-5)
