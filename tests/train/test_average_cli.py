"""`mtl-train average` end to end: two tiny runs from one initialisation, different task weights."""
import pytest
import torch

from mtl_perception.inference.loader import load_model
from tests.train.tiny_mtl import tiny_recipe
from training.cli import main
from training.engine.checkpoint import load_checkpoint
from training.engine.trainer import LAST, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_average_command_greedy_then_export(tiny_data, tmp_path, capsys):
    runs = []
    for name, weights in (("a", {"depth": 1.0}), ("b", {"depth": 3.0, "segmentation": 0.5})):
        tasks = {"segmentation": {}, "depth": {}}
        for task, w in weights.items():
            tasks[task] = {"weight": w}
        recipe = tiny_recipe(tiny_data, tmp_path / name, tasks=tasks, optim={"epochs": 1, "batch_size": 8})
        Trainer(recipe, progress=False, plots=False).fit()
        runs.append(str(tmp_path / name / LAST))
    a, b = (load_checkpoint(p) for p in runs)
    assert a["init_fingerprint"] == b["init_fingerprint"]
    assert not torch.equal(a["model"]["trunk.stem.0.weight"], b["model"]["trunk.stem.0.weight"])

    out, onnx = tmp_path / "avg.pt", tmp_path / "avg.onnx"
    assert main(["average", *runs, "--out", str(out), "--greedy", "--export", str(onnx)]) == 0
    printed = capsys.readouterr().out
    assert "score" in printed and f"averaged: {out}" in printed
    state = load_checkpoint(out)
    assert state["averaged"]["greedy"] and state["averaged"]["selected"][0] in runs
    assert set(state["averaged"]["scores"]) == set(runs)
    assert any(k.startswith("val/depth/") for k in state["history"][-1])
    model = load_model(onnx)
    assert sorted(model.tasks) == ["depth", "segmentation"]

    # uniform: the exact mean of the two runs' parameters
    assert main(["average", *runs, "--out", str(tmp_path / "mean.pt"), "--no-eval", "--bn-batches", "1"]) == 0
    mean = load_checkpoint(tmp_path / "mean.pt")["model"]
    key = "heads.depth.out.weight"
    torch.testing.assert_close(mean[key], (a["model"][key] + b["model"][key]) / 2)

    # a run from another seed is refused with a one-line error naming both files
    other = tiny_recipe(tiny_data, tmp_path / "c", seed=8, tasks={"segmentation": {}, "depth": {}},
                        optim={"epochs": 1, "batch_size": 8})
    trainer = Trainer(other, progress=False, plots=False)
    from training.engine.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "c" / LAST, trainer.state())  # untrained is enough for the check
    assert main(["average", runs[0], str(tmp_path / "c" / LAST), "--out", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not share an initialisation" in err and runs[0] in err
