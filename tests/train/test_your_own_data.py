"""The README's "Your own data" walk-through, command for command, on fixture trees.

The commands are read from the README's walk-through block (the one after its
`<!-- walk-through: ... -->` marker), so the README and this test cannot drift apart: every line
is run through the real command lines' main functions, in a working directory laid out as the
README says (Cityscapes train + val, BDD100K train, a folder of photos, the config/real recipes).
Only `mtl-train train` gets extra `--set` overrides, which make the recipe tiny (compact trunk,
64x32 input, one epoch, one thread); everything else is exactly the README's."""
from __future__ import annotations

import json
import shlex
import shutil

import pytest

from tests import REPO
from tests.dataset_trees import write_bdd100k, write_cityscapes, write_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")

MARKER = "<!-- walk-through: tests/train/test_your_own_data.py"
TINY = ["--set", "model.backbone=compact", "--set", "model.pretrained=false", "--set", "model.encoder_lr_scale=1.0",
        "--set", "model.channels=[8,8,16,16,16]", "--set", "model.blocks=[1,0,0,0]", "--set", "model.fpn_channels=16",
        "--set", "data.input_size=[64,32]", "--set", "data.workers=0", "--set", "optim.epochs=1",
        "--set", "optim.batch_size=2", "--set", "optim.warmup_steps=1", "--set", "optim.amp=false",
        "--set", "threads=1", "--set", "export.verify_frames=2", "--no-progress"]


def readme_commands() -> list[list[str]]:
    """The walk-through block's commands as argv lists (comments dropped, `\\` continuations joined)."""
    text = (REPO / "README.md").read_text()
    assert text.count(MARKER) == 1, "the README's walk-through marker is missing or repeated"
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [c for c in commands if c]


def run(argv: list[str], capsys) -> str:
    from mtl_perception.cli import main as runtime_main
    from training.cli import main as train_main

    program, args = argv[0], argv[1:]
    assert program in ("mtl-perception", "mtl-train"), f"not a project command: {argv}"
    if program == "mtl-train" and args[0] == "train":
        args = args + TINY
    status = (runtime_main if program == "mtl-perception" else train_main)(args)
    out, err = capsys.readouterr()
    assert status == 0, (argv, out[-2000:], err[-2000:])
    return out


def test_the_walk_through_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    names = [" ".join(c[:2]) for c in commands]
    for needed in ("mtl-perception check-data", "mtl-train train", "mtl-train export", "mtl-perception evaluate",
                   "mtl-perception make-bag", "mtl-perception eval-bag"):
        assert needed in names, (needed, names)
    for split in ("train", "val"):
        write_cityscapes(tmp_path / "data/cityscapes", split)
    write_bdd100k(tmp_path / "data/bdd100k", "train")
    write_image_folder(tmp_path / "data/photos")
    shutil.copytree(REPO / "config/real", tmp_path / "config/real")
    monkeypatch.chdir(tmp_path)

    outputs = {}
    for argv in commands:
        outputs.setdefault(" ".join(argv[:2]), []).append(run(argv, capsys))

    assert all(out.strip().endswith("no problems found") for out in outputs["mtl-perception check-data"])
    run_dir = tmp_path / "runs/cityscapes_bdd_images"
    assert (run_dir / "last.pt").is_file() and (run_dir / "metrics.csv").is_file()
    [export] = outputs["mtl-train export"]
    assert "onnxruntime vs torch, worst:" in export  # export_checkpoint raises if verification fails
    from mtl_perception.data.readers.cityscapes_labels import INSTANCE_CLASSES, TRAIN_CLASSES
    from mtl_perception.inference.loader import load_model

    meta = load_model(tmp_path / "models/cityscapes_bdd_images.onnx").metadata
    assert set(meta.tasks) == {"segmentation", "depth", "detection", "super_resolution"}
    assert tuple(meta.tasks["segmentation"].class_names) == TRAIN_CLASSES
    assert tuple(meta.tasks["detection"].class_names) == INSTANCE_CLASSES

    [printed] = outputs["mtl-perception evaluate"]
    report = json.loads(printed)
    assert report == json.loads((run_dir / "cityscapes_val.json").read_text()) and report["frames"] == 2
    for task, metric in (("segmentation", "miou"), ("depth", "abs_rel"), ("detection", "map50"),
                         ("super_resolution", "psnr")):
        assert isinstance(report["tasks"][task][metric], float), (task, report["tasks"][task])
    with_truth = json.loads((tmp_path / "runs/cityscapes_val_bag/metrics.json").read_text())
    scored = {k: v["frames_scored"] for k, v in with_truth["bag"]["ground_truth"].items()}
    assert scored == {"segmentation": 2, "depth": 1, "detections": 2}  # bochum has no disparity / camera
    assert isinstance(with_truth["tasks"]["segmentation"]["miou"], float)
    camera_only = json.loads((tmp_path / "runs/my_photos_bag/metrics.json").read_text())
    assert camera_only["tasks"]["segmentation"]["miou"] is None and camera_only["latency_ms"]["model"]["n"] == 3
    assert isinstance(camera_only["tasks"]["super_resolution"]["psnr"], float)
