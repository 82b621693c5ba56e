"""The on-disk dataset format: writer/reader round trip, user data, and clear errors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from mtl_perception.data.dataset import (
    DEFAULT_DEPTH_SCALE,
    DatasetWriter,
    MultiTaskDataset,
    decode_depth,
    encode_depth,
    write_dataset,
)
from mtl_perception.data.synthetic import DETECTION_CLASSES, SEMANTIC_CLASSES, Camera, render_frame
from mtl_perception.data.synthetic import generate as gen

SMALL = Camera.default(128, 96)


@pytest.fixture(scope="module")
def frames():
    return [render_frame(1, i, SMALL, night=(i == 2)) for i in range(3)]


@pytest.fixture()
def written(tmp_path, frames):
    root = tmp_path / "ds"
    write_dataset(root, frames, SEMANTIC_CLASSES, DETECTION_CLASSES)
    return root


def test_round_trip(written, frames):
    ds = MultiTaskDataset(written)
    assert len(ds) == len(frames)
    assert ds.semantic_classes == SEMANTIC_CLASSES and ds.detection_classes == DETECTION_CLASSES
    assert ds.depth_scale == DEFAULT_DEPTH_SCALE
    total_boxes = 0
    for i, f in enumerate(frames):
        s = ds.load(i)
        assert s.image_id == i and s.night == f.night
        np.testing.assert_array_equal(s.image, f.image)
        np.testing.assert_array_equal(s.semantic, f.semantic)
        assert s.depth.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(s.depth), np.isnan(f.depth))
        valid = np.isfinite(f.depth)
        err = np.abs(s.depth[valid] - f.depth[valid])
        assert err.max() <= DEFAULT_DEPTH_SCALE / 2 + 1e-4
        np.testing.assert_allclose(s.boxes, f.boxes, atol=1e-3)
        np.testing.assert_array_equal(s.labels, f.labels)
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
        K = f.camera.K_opencv()
        assert s.camera["fx"] == pytest.approx(K[0, 0]) and s.camera["cx"] == pytest.approx(K[0, 2])
        total_boxes += len(f.boxes)
    assert total_boxes > 0
    doc = json.loads((written / "dataset.json").read_text())
    assert doc["format"] == "mtl_perception.data.dataset" and doc["format_version"] == 1
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3]
    ann = doc["annotations"][0]
    assert ann["iscrowd"] == 0 and len(ann["bbox"]) == 4 and ann["area"] > 0 and 0 < ann["visible_fraction"] <= 1
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    # area = visible pixels of the instance
    f0 = frames[ann["image_id"]]
    assert ann["area"] == int((f0.instances == f0.instance_ids[0]).sum())


def test_depth_encoding_edge_cases():
    d = np.array([[np.nan, np.inf, -1.0, 0.0], [1e-4, 1.0, 255.99, 300.0]], np.float32)
    q = encode_depth(d)
    assert q.dtype == np.uint16
    assert list(q[0]) == [0, 0, 0, 0]
    assert q[1, 0] == 1 and q[1, 1] == 256 and q[1, 2] == 65533 and q[1, 3] == 0
    back = decode_depth(q, DEFAULT_DEPTH_SCALE)
    assert np.isnan(back[0]).all() and np.isnan(back[1, 3])
    assert back[1, 1] == 1.0


def test_user_data_without_labels_and_custom_categories(tmp_path):
    root = tmp_path / "user"
    (root / "imgs").mkdir(parents=True)
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    cv2.imwrite(str(root / "imgs" / "a.png"), img[..., ::-1])
    cv2.imwrite(str(root / "imgs" / "b.jpg"), img[..., ::-1])
    depth = np.full((20, 30), 5.0, np.float32)
    depth[0, 0] = np.nan
    np.save(root / "imgs" / "b_depth.npy", depth)
    doc = {
        "format_version": 1,
        "categories": [{"id": 7, "name": "pedestrian"}, {"id": 3, "name": "vehicle"}],
        "images": [
            {"id": 10, "file_name": "imgs/a.png", "width": 30, "height": 20},
            {"id": 11, "file_name": "imgs/b.jpg", "width": 30, "height": 20, "depth_file": "imgs/b_depth.npy"},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [5, 5, 2, 2], "area": 4, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 1},
        ],
    }
    (root / "dataset.json").write_text(json.dumps(doc))
    ds = MultiTaskDataset(root)
    assert ds.detection_classes == ("pedestrian", "vehicle")
    a = ds.load(0)
    assert a.image_id == 10 and a.image[0, 0].tolist() == [200, 0, 0]
    assert (a.semantic == 255).all() and np.isnan(a.depth).all()
    np.testing.assert_allclose(a.boxes, [[1, 2, 4, 6], [5, 5, 7, 7]])
    assert a.labels.tolist() == [1, 0]
    b = ds.load(1)
    assert len(b.boxes) == 0 and b.boxes.shape == (0, 4)
    assert np.isnan(b.depth[0, 0]) and (b.depth[1:] == 5.0).all()


# ------------------------------------------------------------------------------------- errors
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_missing_dataset_json(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        MultiTaskDataset(tmp_path)
    assert str(tmp_path / "dataset.json") in _one_line(e)


def test_bad_json(written):
    (written / "dataset.json").write_text("{ not json")
    with pytest.raises(ValueError) as e:
        MultiTaskDataset(written)
    assert str(written / "dataset.json") in _one_line(e)


@pytest.mark.parametrize("version", [2, "1", None])
def test_wrong_or_missing_format_version(written, version):
    meta = written / "dataset.json"
    doc = json.loads(meta.read_text())
    if version is None:
        del doc["format_version"]
    else:
        doc["format_version"] = version
    meta.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e:
        MultiTaskDataset(written)
    msg = _one_line(e)
    assert str(meta) in msg and "format_version" in msg


def test_missing_image_file(written):
    (written / "images" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        MultiTaskDataset(written)
    assert str(written / "images" / "000001.png") in _one_line(e)


def test_undecodable_image(written):
    (written / "images" / "000002.png").write_bytes(b"this is not a png")
    ds = MultiTaskDataset(written)
    ds.load(0)
    with pytest.raises(ValueError) as e:
        ds.load(2)
    assert str(written / "images" / "000002.png") in _one_line(e)


def test_label_file_of_the_wrong_size(written):
    cv2.imwrite(str(written / "semantic" / "000000.png"), np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError) as e:
        MultiTaskDataset(written).load(0)
    assert str(written / "semantic" / "000000.png") in _one_line(e)


# -------------------------------------------------------------------------------- atomic write
@dataclass
class _Img:
    image: np.ndarray


def test_writer_leaves_no_metadata_when_interrupted(tmp_path):
    root = tmp_path / "w"
    with pytest.raises(RuntimeError):
        with DatasetWriter(root, SEMANTIC_CLASSES, DETECTION_CLASSES) as w:
            w.add(_Img(np.zeros((8, 8, 3), np.uint8)))
            raise RuntimeError("killed")
    assert (root / "images" / "000000.png").is_file()
    assert not (root / "dataset.json").exists()
    assert not list(root.glob(".dataset.*"))


def test_regeneration_removes_the_old_index_first(tmp_path, monkeypatch):
    root = tmp_path / "g"
    gen.generate_dataset(root, 3, seed=0, camera=SMALL, workers=1, progress=False)
    assert len(MultiTaskDataset(root)) == 3
    real_job = gen._job

    def failing(args):
        if args[2] == 1:
            raise RuntimeError("killed")
        return real_job(args)

    monkeypatch.setattr(gen, "_job", failing)
    with pytest.raises(RuntimeError):
        gen.generate_dataset(root, 3, seed=5, camera=SMALL, workers=1, progress=False)
    assert not (root / "dataset.json").exists()
    monkeypatch.setattr(gen, "_job", real_job)
    gen.generate_dataset(root, 2, seed=5, camera=SMALL, workers=1, progress=False)
    assert len(MultiTaskDataset(root)) == 2
    assert sorted(p.name for p in (root / "images").iterdir()) == ["000000.png", "000001.png"]


def test_generate_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError) as e:
        gen.generate_dataset(tmp_path, 1, camera=SMALL, workers=1, progress=False)
    assert str(tmp_path) in _one_line(e)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = gen.main(["--out", str(out), "--frames", "2", "--seed", "3", "--night-fraction", "0.5", "--workers", "1",
                   "--width", "64", "--height", "48", "--no-progress"])
    assert rc == 0
    assert "frames/s" in capsys.readouterr().out
    ds = MultiTaskDataset(out)
    assert len(ds) == 2 and ds.load(1).image.shape == (48, 64, 3)
    assert Path(out / "dataset.json").is_file()
