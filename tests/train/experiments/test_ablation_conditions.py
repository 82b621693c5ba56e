"""The ablation's day/night table: a run's final checkpoint scored on the test split's day frames
and its night frames apart (by dataset.json's `night` flags), cached in the run folder."""
import json

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.data.synthetic import Camera, generate_dataset
from mtl_perception.data.synthetic.world import DETECTION_CLASSES, SEMANTIC_CLASSES
from tests.train.tiny_mtl import recipe_doc
from training.engine.checkpoint import parameter_fingerprint, save_checkpoint
from training.engine.data import TaskDataset
from training.engine.trainer import LAST, evaluate
from training.experiments.ablation import condition_scores
from training.experiments.jobs import Job, main_values
from training.models.multitask import build_model
from training.recipe.core import recipe_from_dict
from training.tasks import TASKS, DataInfo


def test_condition_scores_score_day_and_night_frames_apart(tmp_path):
    test_root = tmp_path / "test"
    generate_dataset(test_root, 6, seed=3, camera=Camera.default(128, 64), workers=1, progress=False,
                     night_fraction=0.5)
    images = json.loads((test_root / "dataset.json").read_text())["images"]
    flags = [bool(frame.get("night", False)) for frame in images]
    night = [i for i, f in enumerate(flags) if f]
    day = [i for i, f in enumerate(flags) if not f]
    assert night and day

    info = DataInfo(semantic_classes=tuple(SEMANTIC_CLASSES), detection_classes=tuple(DETECTION_CLASSES),
                    sr_scale=2, input_size=(64, 32))
    doc = recipe_doc()
    recipe = recipe_from_dict(doc)
    tasks = {name: TASKS[name](opts, info) for name, opts in recipe.task_options().items()}
    torch.manual_seed(0)
    model = build_model(recipe.model, tasks).eval()
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / LAST, {
        "epoch": 1, "step": 1, "model": model.state_dict(), "optimizer": {}, "scheduler": {}, "balancer": {},
        "scaler": {}, "rng": torch.get_rng_state(), "recipe": recipe.to_dict(), "history": [],
        "init_fingerprint": parameter_fingerprint(model.state_dict()),
        "data_info": {"semantic_classes": list(info.semantic_classes),
                      "detection_classes": list(info.detection_classes), "sr_scale": 2, "input_size": [64, 32]}})
    job = Job(key="shared/seed0", recipe=doc, out_dir=run)

    scores = condition_scores(job, test_root)

    dataset = TaskDataset(MultiTaskDataset(test_root), tasks, (64, 32), 2)
    for name, frames in (("day", day), ("night", night)):
        loader = DataLoader(Subset(dataset, frames), batch_size=4, shuffle=False)
        expected = main_values(evaluate(model, tasks, loader))
        assert {key.split("/")[0] for key in scores[name]} == set(tasks)  # one main metric per task
        assert scores[name] == pytest.approx(expected)
    assert scores["day"] != scores["night"]
    assert json.loads((run / "conditions.json").read_text()) == scores
    (run / LAST).unlink()  # a second call reads the cache, not the checkpoint
    assert condition_scores(job, test_root) == scores
