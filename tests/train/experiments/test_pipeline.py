"""`mtl-train full` end to end on tiny data, and the shipped plans (full recipe, ablations)."""
import json

import pytest
import yaml

from mtl_perception.data.synthetic import Camera, generate_dataset
from mtl_perception.inference.loader import load_model
from tests import REPO
from training.engine.checkpoint import load_checkpoint
from training.experiments.ablation import deep_merge, load_plan
from training.experiments.pipeline import load_full_plan, run_full


def test_shipped_plans_are_valid():
    for path in sorted((REPO / "config" / "plans").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if "variants" in doc:
            plan = load_plan(path)
            assert plan["variants"] and plan["seeds"]
        else:
            plan = load_full_plan(path)
            assert set(plan["student"]["distill"]["teachers"]) == set(plan["teachers"])


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"optim": {"lr": 1, "epochs": 2}, "tasks": {"a": {}}, "seed": 0}
    merged = deep_merge(base, {"optim": {"lr": 3}, "tasks": {"b": {}}, "seed": 4})
    assert merged == {"optim": {"lr": 3, "epochs": 2}, "tasks": {"a": {}, "b": {}}, "seed": 4}
    assert base["optim"]["lr"] == 1  # the base is not modified


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_data")
    camera = Camera.default(128, 64)
    for name, frames, seed in (("train", 16, 1), ("val", 6, 2), ("test", 6, 3)):
        generate_dataset(root / name, frames, seed=seed, camera=camera, workers=1, progress=False, night_fraction=0.5)
    return root


def test_full_recipe_runs_every_stage_and_resumes(tiny_split, tmp_path, capsys):
    base = {
        "name": "tiny", "seed": 3, "threads": 1,
        "data": {"train": str(tiny_split / "train"), "val": str(tiny_split / "val"), "input_size": [64, 32]},
        "model": {"channels": [8, 8, 16, 16, 16], "blocks": [1, 0, 0, 0], "fpn_channels": 16},
        "tasks": {"segmentation": {}, "depth": {}},
        "optim": {"epochs": 2, "batch_size": 8, "warmup_steps": 1},
        "export": {"verify_frames": 2},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    plan = {"recipe": str(tmp_path / "base.yaml"), "out": str(tmp_path / "full"),
            "student": {"overparam": {"kind": "linear", "rate": 2, "finetune_epochs": 1},
                        "distill": {"temperature": 2.0}, "sam": {"rho": 0.05}, "swa": {"start_epoch": 1}}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    report = run_full(str(tmp_path / "plan.yaml"), progress=False, timing_frames=4)
    out = tmp_path / "full"
    state = load_checkpoint(out / "student" / "last.pt")
    assert state["collapsed"] and state["swa_done"] and state["epoch"] == 3
    assert list(report["stages_val"]) == ["teachers", "student", "student + SWA", "collapsed + fine-tuned"]
    assert set(report["test"]["student"]) == {"all", "day", "night"}
    model = load_model(out / "model.onnx")
    assert set(model.tasks) == {"segmentation", "depth"}
    # trained expanded, exported collapsed
    assert report["cost"]["student"]["parameters"] < report["cost"]["student"]["training_parameters"]
    teachers = load_model(out / "teachers" / "bundle.json")
    assert set(teachers.tasks) == {"segmentation", "depth"}
    for name in ("report.md", "report.json", "stages.png"):
        assert (out / name).stat().st_size > 0
    written = json.loads((out / "report.json").read_text())
    assert written["delta_m_vs_teachers"]["all"] == report["delta_m_vs_teachers"]["all"]

    # a second run finds every training stage finished and only rebuilds the report
    capsys.readouterr()
    (out / "report.md").unlink()
    run_full(str(tmp_path / "plan.yaml"), progress=False, timing_frames=4)
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 3 and printed.count("exported earlier") == 3
    assert (out / "report.md").exists()
