"""`mtl-perception check-data` and the one-line data errors of a training run.

Datasets are written by the project's own generator (the synthetic world through
`DatasetWriter`) and then corrupted the ways real folders go wrong.
"""
import json
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from mtl_perception.cli import main as cli_main
from mtl_perception.data import check
from mtl_perception.data.check import check_dataset
from mtl_perception.data.dataset import DatasetError, MultiTaskDataset
from mtl_perception.data.synthetic import Camera, generate_dataset

N_FRAMES = 6


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "train"
    generate_dataset(root, N_FRAMES, seed=3, camera=Camera.default(128, 64), workers=1, progress=False)
    return root


@pytest.fixture()
def dataset(pristine, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(pristine, root)
    return root


def _edit_index(root, edit):
    meta = root / "dataset.json"
    doc = json.loads(meta.read_text())
    edit(doc)
    meta.write_text(json.dumps(doc))
    return doc


def _lines(root):
    return [str(p) for p in check_dataset(root)]


def test_a_written_dataset_has_no_problems(pristine, capsys):
    assert check_dataset(pristine) == []
    assert cli_main(["check-data", str(pristine), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"{pristine}: no problems found"


def test_every_corruption_is_listed_one_line_each(dataset, capsys):
    """Nine problems in one dataset: all listed, each naming its file, exit status 1."""
    (dataset / "images" / "000003.png").write_bytes(b"not a png at all")
    (dataset / "depth" / "000001.png").unlink()
    semantic = cv2.imread(str(dataset / "semantic" / "000002.png"), cv2.IMREAD_UNCHANGED)
    semantic[0, :3] = (40, 41, 255)  # 40 and 41 are not classes; 255 is unlabelled
    cv2.imwrite(str(dataset / "semantic" / "000002.png"), semantic)
    cv2.imwrite(str(dataset / "depth" / "000004.png"), np.ones((64, 128), np.uint8))  # 8-bit depth
    cv2.imwrite(str(dataset / "images" / "000005.png"), np.zeros((32, 64, 3), np.uint8))  # wrong size
    cv2.imwrite(str(dataset / "semantic" / "000000.png"), np.zeros((64, 128, 3), np.uint8))  # 3 channels
    doc = json.loads((dataset / "dataset.json").read_text())
    assert len(doc["annotations"]) >= 3, "the synthetic frames should carry boxes"

    def corrupt(doc):
        anns = doc["annotations"]
        first_w = next(im["width"] for im in doc["images"] if im["id"] == anns[0]["image_id"])
        anns[0]["bbox"] = [first_w - 2.0, 1.0, 10.0, 5.0]  # leaves the image on the right
        anns[1]["category_id"] = 99
        anns[2]["bbox"] = [3.0, 3.0, 0.0, 4.0]  # zero width

    _edit_index(dataset, corrupt)
    anns = doc["annotations"]
    lines = _lines(dataset)
    meta = dataset / "dataset.json"
    expected = [
        f"{dataset / 'images' / '000003.png'}: cannot decode image",
        f"{dataset / 'depth' / '000001.png'}: not found (listed as depth_file of image 1)",
        f"{dataset / 'semantic' / '000002.png'}: class ids 40, 41 are not in 0..",
        f"{dataset / 'depth' / '000004.png'}: depth must be a single-channel 16-bit PNG, got uint8",
        f"{dataset / 'images' / '000005.png'}: size 64x32 disagrees with dataset.json (128x64)",
        f"{dataset / 'semantic' / '000000.png'}: semantic labels must be a single-channel 8-bit PNG",
        f"{meta}: annotation {anns[0]['id']}: bbox ",
        f"{meta}: annotation {anns[1]['id']}: refers to unknown category_id 99",
        f"{meta}: annotation {anns[2]['id']}: bbox [3.0, 3.0, 0.0, 4.0] is not a finite box of positive size",
    ]
    for prefix in expected:
        assert sum(line.startswith(prefix) for line in lines) == 1, (prefix, lines)
    assert len(lines) == len(expected), lines
    assert "leaves image" in next(line for line in lines if line.startswith(expected[6]))
    assert cli_main(["check-data", str(dataset), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == lines and err.strip() == f"mtl-perception: {dataset}: 9 problem(s) found"


@pytest.mark.parametrize("version, message", [
    (2, "format_version 2 is not supported"), (True, "format_version True is not supported"),
    (1.0, "format_version 1.0 is not supported"), ("1", "format_version '1' is not supported")])
def test_index_of_the_wrong_format_version(dataset, version, message):
    _edit_index(dataset, lambda doc: doc.update(format_version=version))
    assert _lines(dataset) == [f"{dataset / 'dataset.json'}: {message} (this reader supports version 1)"]


def test_unreadable_or_missing_index(dataset, tmp_path):
    (dataset / "dataset.json").write_text("{ not json")
    [line] = _lines(dataset)
    assert line.startswith(f"{dataset / 'dataset.json'}: invalid JSON")
    assert _lines(tmp_path / "empty") == [f"{tmp_path / 'empty' / 'dataset.json'}: not found (a dataset root "
                                          "must contain dataset.json)"]


def test_malformed_index_entries_are_listed_and_the_rest_still_checked(dataset):
    (dataset / "images" / "000004.png").write_bytes(b"")

    def corrupt(doc):
        doc["images"][1]["height"] = "64"
        doc["images"][2]["id"] = doc["images"][0]["id"]
        doc["depth_scale"] = -1
        doc["annotations"][0]["image_id"] = 12345

    _edit_index(dataset, corrupt)
    meta = dataset / "dataset.json"
    lines = _lines(dataset)
    assert f"{meta}: depth_scale must be a positive number, got -1" in lines
    assert f"{meta}: images[1] height must be a positive integer, got '64'" in lines
    assert f"{meta}: images[2] repeats image id 0" in lines
    assert f"{dataset / 'images' / '000004.png'}: cannot decode image" in lines
    assert any(line.startswith(f"{meta}: annotation ") and "unknown image_id 12345" in line for line in lines)


def test_the_reader_raises_a_typed_one_line_error_naming_the_file(dataset):
    (dataset / "images" / "000003.png").write_bytes(b"not a png")
    ds = MultiTaskDataset(dataset)
    ds.load(2)
    with pytest.raises(DatasetError) as err:
        ds.load(3)
    assert str(err.value) == f"{dataset / 'images' / '000003.png'}: cannot decode image"
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\nmtl_perception.data.dataset.DatasetError: "
                           f"{dataset}/images/000003.png: cannot decode image\n")
    assert str(wrapped) == f"{dataset}/images/000003.png: cannot decode image"


@pytest.mark.parametrize("workers", [0, 1])
def test_training_on_a_corrupt_image_stops_with_one_line(dataset, tmp_path, workers):
    """`mtl-train train` (a real process) on a dataset whose fourth image is corrupt: exit 2 and
    one line naming the file, also when a DataLoader worker process hits it."""
    pytest.importorskip("torch", reason="training needs torch (training extra)")
    shutil.copytree(dataset, tmp_path / "val")
    (dataset / "images" / "000003.png").write_bytes(b"not a png")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: corrupt
        out_dir: {tmp_path / 'run'}
        data: {{train: {dataset}, val: {tmp_path / 'val'}, input_size: [64, 32], workers: {workers}}}
        model: {{channels: [8, 8, 16, 16, 16], blocks: [0, 0, 0, 0], fpn_channels: 16}}
        optim: {{epochs: 1, batch_size: 2, warmup_steps: 1}}
    """))
    run = subprocess.run([sys.executable, "-m", "training.cli", "train", str(recipe), "--no-progress", "--no-export"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == f"mtl-train: error: {dataset / 'images' / '000003.png'}: cannot decode image"


def test_progress_bar_only_on_large_sets(pristine, monkeypatch, capsys):
    monkeypatch.setattr(check, "PROGRESS_MIN_IMAGES", N_FRAMES + 1)
    assert check_dataset(pristine, progress=True) == []
    assert "check-data" not in capsys.readouterr().err
    monkeypatch.setattr(check, "PROGRESS_MIN_IMAGES", N_FRAMES)
    assert check_dataset(pristine, progress=True) == []
    err = capsys.readouterr().err
    assert "check-data:" in err and f"0/{N_FRAMES} [" in err


# ------------------------------------------------------------------- public layouts: --format
def test_check_data_format_on_clean_fixture_trees(tmp_path, capsys):
    from tests.dataset_trees import write_bdd100k, write_cityscapes, write_image_folder

    city = write_cityscapes(tmp_path / "cityscapes", split="val")
    bdd = write_bdd100k(tmp_path / "bdd100k", split="val")
    photos = write_image_folder(tmp_path / "photos")
    for argv in (["--format", "cityscapes", str(city), "--split", "val"],
                 ["--format", "bdd100k", str(bdd), "--split", "val"], ["--format", "images", str(photos)]):
        assert cli_main(["check-data", *argv, "--no-progress"]) == 0, capsys.readouterr()
        assert capsys.readouterr().out.strip() == f"{argv[2]}: no problems found"


def test_check_data_format_lists_each_bad_file_once(tmp_path, capsys):
    """Cityscapes: a corrupt image, an 8-bit instanceIds file and a camera JSON without fx; BDD100K:
    a mask value outside the 19 train ids, a box past the image's border; each one line naming
    its file, the other samples still checked."""
    from tests.dataset_trees import CITY_PREFIX, H, W, png, write_bdd100k, write_cityscapes, write_rgb

    city = write_cityscapes(tmp_path / "cityscapes", split="val")
    for city_name in ("dresden", "erfurt"):  # two more frames: copies of aachen's files
        for part, suffix in (("leftImg8bit", "leftImg8bit.png"), ("gtFine", "gtFine_labelIds.png"),
                             ("gtFine", "gtFine_instanceIds.png"), ("disparity", "disparity.png"),
                             ("camera", "camera.json")):
            src = city / part / "val/aachen" / f"{CITY_PREFIX}_{suffix}"
            dst = city / part / "val" / city_name / f"{city_name}_000000_000019_{suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    bad_image = city / "leftImg8bit/val/bochum/bochum_000000_000313_leftImg8bit.png"
    bad_image.write_bytes(b"not a png")
    bad_inst = city / "gtFine/val/dresden/dresden_000000_000019_gtFine_instanceIds.png"
    png(bad_inst, np.zeros((H, W), np.uint8))
    bad_camera = city / "camera/val/erfurt/erfurt_000000_000019_camera.json"
    bad_camera.write_text(json.dumps({"intrinsic": {"fy": 1.0, "u0": 1.0, "v0": 1.0}, "extrinsic": {"baseline": 0.2}}))
    assert cli_main(["check-data", "--format", "cityscapes", str(city), "--split", "val", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.partition(": ")[0] for line in lines] == [str(bad_image), str(bad_inst), str(bad_camera)], lines
    assert "cannot decode image" in lines[0] and "single-channel 16-bit" in lines[1] and "intrinsic.fx" in lines[2]
    assert err.strip() == f"mtl-perception: {city}: 3 problem(s) found"

    bdd = write_bdd100k(tmp_path / "bdd100k", split="val")
    mask = bdd / "labels/sem_seg/masks/val/7d2f7975-e0c1c5a7.png"
    png(mask, np.full((H, W), 19, np.uint8))
    index = bdd / "labels/det_20/det_val.json"
    det = json.loads(index.read_text())
    det[1]["labels"] = [{"category": "car", "box2d": {"x1": 30, "y1": 4, "x2": W + 5, "y2": 9}}]
    index.write_text(json.dumps(det))
    write_rgb(bdd / "images/100k/val/b1c81faa-3df17267.jpg", np.zeros((H, W, 3), np.uint8))
    problems = [str(p) for p in check.check_source("bdd100k", bdd, {"split": "val"})]
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{mask}: ") and "19" in problems[0]
    assert problems[1] == (f"{bdd / 'images/100k/val/b1c81faa-3df17267.jpg'}: box [30.0, 4.0, {W + 5.0}, 9.0] "
                           f"(x1 y1 x2 y2 = 30 4 {W + 5} 9) leaves the image ({W}x{H})")


def test_check_data_format_layout_and_usage_errors(tmp_path, capsys):
    from tests.dataset_trees import write_bdd100k

    [line] = [str(p) for p in check.check_source("cityscapes", tmp_path / "nothing", {"split": "val"})]
    assert line.startswith(f"{tmp_path / 'nothing' / 'leftImg8bit' / 'val'}: not found (expected the Cityscapes layout")
    bdd = write_bdd100k(tmp_path / "bdd100k", split="val")
    (bdd / "labels/det_20/det_val.json").write_text("[{ not json")
    [line] = [str(p) for p in check.check_source("bdd100k", bdd, {"split": "val"})]
    assert line.startswith(f"{bdd / 'labels/det_20/det_val.json'}: ")
    assert cli_main(["check-data", "--format", "pascal", str(bdd)]) == 2
    assert "unknown dataset format 'pascal'" in capsys.readouterr().err
    assert cli_main(["check-data", str(bdd), "--split", "val"]) == 2
    assert "need --format" in capsys.readouterr().err
