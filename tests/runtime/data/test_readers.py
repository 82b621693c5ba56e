"""Dataset readers: each reads a small fixture tree written here in its dataset's exact layout,
file names and encodings, and is checked against labels computed by hand (not by the reader's
tables); then `mtl-perception convert` and `evaluate --format` on those trees."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.data.readers import READERS, open_reader
from mtl_perception.data.readers.cityscapes_labels import (
    INSTANCE_CLASSES,
    LABELS,
    TRAIN_CLASSES,
    to_train_ids,
    train_id,
)
from tests.dataset_trees import CITY_RGB, H, W, photo, png, write_bdd100k, write_cityscapes, write_rgb


# ---------------------------------------------------------------------------- Cityscapes table
@pytest.mark.parametrize("name,label_id,expected", [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255),
    ("building", 11, 2), ("pole", 17, 5), ("polegroup", 18, 255), ("traffic light", 19, 6), ("sky", 23, 10),
    ("person", 24, 11), ("car", 26, 13), ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16),
    ("bicycle", 33, 18), ("license plate", -1, 255),
])
def test_cityscapes_train_ids(name, label_id, expected):
    assert train_id(label_id) == expected
    assert next(lab for lab in LABELS if lab.id == label_id).name == name
    if label_id >= 0:
        assert to_train_ids(np.array([[label_id]], np.uint8))[0, 0] == expected


def test_cityscapes_class_lists():
    assert len(TRAIN_CLASSES) == 19 and TRAIN_CLASSES[0] == "road" and TRAIN_CLASSES[18] == "bicycle"
    assert INSTANCE_CLASSES == ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert to_train_ids(np.array([34, 255, 26000, -1], np.int32)).tolist() == [255, 255, 255, 255]


def test_cityscapes_table_matches_cityscapesscripts():
    """Cross-check against the official package where it is installed (not a run-time dependency)."""
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    theirs = {lab.id: (lab.name, 255 if lab.trainId in (-1, 255) else lab.trainId, lab.hasInstances)
              for lab in labels.labels}
    ours = {lab.id: (lab.name, lab.train_id, lab.has_instances) for lab in LABELS}
    assert ours == theirs


# ---------------------------------------------------------------------------------- Cityscapes
@pytest.fixture()
def cityscapes(tmp_path) -> Path:
    return write_cityscapes(tmp_path / "cityscapes")


def test_cityscapes_sample(cityscapes):
    ds = open_reader("cityscapes", cityscapes, split="val")
    assert len(ds) == 2 and ds.semantic_classes == TRAIN_CLASSES and ds.detection_classes == INSTANCE_CLASSES
    s = ds.load(0)
    assert s.file_name == "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    assert s.labelled_tasks == {"segmentation", "depth", "detection", "super_resolution"}
    np.testing.assert_array_equal(s.image, CITY_RGB)
    expected = np.zeros((H, W), np.uint8)    # road = 0, written by hand
    expected[:2] = 10
    expected[10:14, 4:12] = 13
    expected[15:20, 20:26] = 13
    expected[2:9, 30:33] = 11
    expected[20:23, 0:6] = 13
    expected[0:2, 0:4] = 255
    expected[22:24, 36:40] = 255
    np.testing.assert_array_equal(s.semantic, expected)
    car, person = INSTANCE_CLASSES.index("car"), INSTANCE_CLASSES.index("person")
    got = sorted(zip(s.labels.tolist(), s.boxes.tolist()))
    assert got == sorted([(car, [4, 10, 12, 14]), (car, [20, 15, 26, 20]), (person, [30, 2, 33, 9])])
    assert s.crowd_boxes.tolist() == [[0, 20, 6, 23]] and s.crowd_labels.tolist() == [car]
    assert s.depth[5, 7] == pytest.approx(0.2 * 2000.0 / 10.0)   # 40 m
    assert s.depth[3, 3] == pytest.approx(400.0)
    assert np.isnan(s.depth[0, 0]) and np.isnan(s.depth[0, 1])
    assert s.camera == {"fx": 2000.0, "fy": 2010.0, "cx": 20.5, "cy": 12.25, "baseline": 0.2}


def test_cityscapes_boxes_match_brute_force():
    """The one-sort box extraction against a per-id scan of a random instance map."""
    from mtl_perception.data.readers.cityscapes import boxes_from_instances

    rng = np.random.default_rng(3)
    values = np.array([7, 11, 23, 24, 26, 33, 29000, 30001] + [c * 1000 + k for c in (24, 26, 33) for k in range(4)])
    inst = rng.choice(values, (37, 53)).astype(np.uint16)
    expected, expected_crowd = [], []
    for v in np.unique(inst):
        cls = v // 1000 if v >= 1000 else v
        if cls not in (24, 26, 33):
            continue
        ys, xs = np.nonzero(inst == v)
        entry = ({24: 0, 26: 2, 33: 7}[cls], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        (expected if v >= 1000 else expected_crowd).append(entry)
    boxes, labels, crowd, crowd_labels = boxes_from_instances(inst)
    assert sorted(zip(labels.tolist(), boxes.tolist())) == sorted(expected) and len(expected) == 12
    assert sorted(zip(crowd_labels.tolist(), crowd.tolist())) == sorted(expected_crowd)
    empty = boxes_from_instances(np.full((4, 4), 7, np.uint16))
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


def test_cityscapes_partial_and_test_split(cityscapes, tmp_path):
    s = open_reader("cityscapes", cityscapes, split="val").load(1)
    assert s.labelled_tasks == {"segmentation", "super_resolution"}
    assert (s.semantic == 1).all() and np.isnan(s.depth).all() and s.camera is None
    # the test split's gtFine files are placeholders: read as unlabelled
    (cityscapes / "leftImg8bit/val").rename(cityscapes / "leftImg8bit/test")
    (cityscapes / "gtFine/val").rename(cityscapes / "gtFine/test")
    t = open_reader("cityscapes", cityscapes, split="test").load(1)
    assert t.labelled_tasks == {"super_resolution"} and (t.semantic == 255).all()


def test_cityscapes_coarse(cityscapes):
    gt = cityscapes / "gtFine/val/bochum/bochum_000000_000313_gtFine_labelIds.png"
    png(cityscapes / "gtCoarse/val/bochum/bochum_000000_000313_gtCoarse_labelIds.png", np.full((H, W), 21, np.uint8))
    gt.unlink()
    coarse = open_reader("cityscapes", cityscapes, split="val", annotations="gtCoarse")
    assert (coarse.load(1).semantic == 8).all()      # vegetation
    assert coarse.load(0).labelled_tasks == {"depth", "super_resolution"}
    assert open_reader("cityscapes", cityscapes, split="val").load(1).labelled_tasks == {"super_resolution"}


def test_reader_tasks_filter_drops_labels(cityscapes):
    s = open_reader("cityscapes", cityscapes, {"split": "val", "tasks": "depth"}).load(0)
    assert s.labelled_tasks == {"depth"}
    assert (s.semantic == 255).all() and len(s.boxes) == 0 and len(s.crowd_boxes) == 0
    assert s.depth[5, 7] == pytest.approx(40.0)


def test_cityscapes_errors(cityscapes):
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train.*expected the Cityscapes layout"):
        open_reader("cityscapes", cityscapes)
    bad = cityscapes / "gtFine/val/aachen/aachen_000000_000019_gtFine_instanceIds.png"
    png(bad, np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="instanceIds.png: instance ids must be a single-channel 16-bit"):
        open_reader("cityscapes", cityscapes, split="val").load(0)


# --------------------------------------------------------------------------------------- KITTI
KITTI_LABEL = """Car 0.00 0 -1.58 4.50 3.25 20.75 12.00 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59
DontCare -1 -1 -10 30.00 1.00 39.00 9.00 -1 -1 -1 -1000 -1000 -1000 -10
Pedestrian 0.00 1 0.21 22.00 5.00 27.50 20.00 1.72 0.50 0.80 1.20 1.75 13.20 0.30
"""
P2 = "P2: 721.5377 0.0 609.5593 44.85728 0.0 721.5377 172.854 0.2163791 0.0 0.0 1.0 0.002745884\n"


@pytest.fixture()
def kitti(tmp_path) -> Path:
    root = tmp_path / "kitti"
    write_rgb(root / "training/image_2/000000.png", photo(3))
    (root / "training/label_2").mkdir(parents=True)
    (root / "training/label_2/000000.txt").write_text(KITTI_LABEL)
    (root / "training/calib").mkdir(parents=True)
    (root / "training/calib/000000.txt").write_text("P0: " + " ".join(["0"] * 12) + "\n" + P2)
    write_rgb(root / "training/image_2/000001.png", photo(4))           # image without labels
    write_rgb(root / "training/image_2/000000_10.png", photo(5))        # KITTI semantics frame
    sem = np.full((H, W), 7, np.uint8)
    sem[:5] = 23
    sem[10:, 30:] = 26
    png(root / "training/semantic/000000_10.png", sem)
    return root


def test_kitti_object_and_semantics(kitti):
    ds = open_reader("kitti", kitti)
    assert [ds.image_info(i)["file_name"] for i in range(len(ds))] == [
        "training/image_2/000000.png", "training/image_2/000000_10.png", "training/image_2/000001.png"]
    s = ds.load(0)
    assert s.labelled_tasks == {"detection", "super_resolution"}
    assert ds.detection_classes[s.labels[0]] == "Car" and ds.detection_classes[s.labels[1]] == "Pedestrian"
    np.testing.assert_allclose(s.boxes, [[4.5, 3.25, 20.75, 12.0], [22.0, 5.0, 27.5, 20.0]])   # DontCare ignored
    assert s.camera == {"fx": 721.5377, "fy": 721.5377, "cx": 609.5593, "cy": 172.854}
    sem = ds.load(1)
    assert sem.labelled_tasks == {"segmentation", "super_resolution"}
    expected = np.zeros((H, W), np.uint8)
    expected[:5] = 10
    expected[10:, 30:] = 13
    np.testing.assert_array_equal(sem.semantic, expected)
    bare = ds.load(2)
    assert bare.labelled_tasks == {"super_resolution"} and len(bare.boxes) == 0


def test_kitti_label_errors(kitti):
    (kitti / "training/label_2/000000.txt").write_text("Car 0.00 0 -1.58 4.50 3.25\n")
    with pytest.raises(ValueError, match=r"000000.txt:1: expected 15 fields"):
        open_reader("kitti", kitti).load(0)
    (kitti / "training/label_2/000000.txt").write_text(KITTI_LABEL.replace("Pedestrian", "Dog"))
    with pytest.raises(ValueError, match=r"000000.txt:3: unknown object type 'Dog'"):
        open_reader("kitti", kitti).load(0)


DRIVE = "2011_09_26_drive_0001_sync"


@pytest.fixture()
def kitti_depth(tmp_path) -> tuple[Path, Path]:
    root, raw = tmp_path / "depth", tmp_path / "raw"
    units = np.zeros((H, W), np.uint16)
    units[10, 20] = 3200        # 12.5 m
    units[11, 20] = 65535       # 255.99609375 m
    gt = root / "train" / DRIVE / "proj_depth/groundtruth/image_02"
    png(gt / "0000000005.png", units)
    png(gt / "0000000006.png", units)
    write_rgb(raw / "2011_09_26" / DRIVE / "image_02/data/0000000005.png", photo(6))
    (raw / "2011_09_26/calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\nP_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 "
        "0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 "
        "2.745884e-03\n")
    return root, raw


def test_kitti_depth(kitti_depth):
    root, raw = kitti_depth
    with pytest.raises(FileNotFoundError, match=r"0000000006.png: not found \(1 of 2 depth maps lack their raw"):
        open_reader("kitti_depth", root, raw_root=raw)
    ds = open_reader("kitti_depth", root, {"raw_root": raw, "skip_missing": "true"})
    assert len(ds) == 1 and ds.info["missing_images"] == 1
    s = ds.load(0)
    np.testing.assert_array_equal(s.image, photo(6))
    assert s.labelled_tasks == {"depth", "super_resolution"}
    assert s.depth[10, 20] == 12.5 and s.depth[11, 20] == 65535 / 256
    assert np.isnan(s.depth).sum() == H * W - 2
    assert s.camera == pytest.approx({"fx": 721.5377, "fy": 721.5377, "cx": 609.5593, "cy": 172.854})


# --------------------------------------------------------------------------------------- NYUv2
NH, NW = 6, 8       # not square, so a wrong axis order cannot pass


@pytest.fixture()
def nyu(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (2, NH, NW, 3), dtype=np.uint8)        # what a user sees: HxWx3
    depths = rng.uniform(0.7, 9.0, (2, NH, NW)).astype(np.float32)
    depths[0, 0, 0] = 0.0
    labels = np.zeros((2, NH, NW), np.uint16)
    labels[0, 1, 2] = 5
    labels[0, 3, 4] = 894
    labels[1, 5, 7] = 21
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w") as f:      # MATLAB v7.3 stores [H, W, 3, N] as HDF5 [N, 3, W, H]
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
    mapping = np.zeros(894, np.float64)
    mapping[4] = 11      # raw 5 -> picture (40-class id 11)
    mapping[893] = 1     # raw 894 -> wall
    mapping[20] = 8      # raw 21 -> door
    np.save(tmp_path / "map40.npy", mapping)
    return path, images, depths, tmp_path / "map40.npy"


def test_nyuv2_axes_depth_and_classes(nyu):
    path, images, depths, mapping = nyu
    ds = open_reader("nyuv2", path)
    assert len(ds) == 2 and ds.labelled_tasks == {"depth", "super_resolution"}
    s = ds.load(0)
    np.testing.assert_array_equal(s.image, images[0])
    assert np.isnan(s.depth[0, 0])
    np.testing.assert_array_equal(s.depth.ravel()[1:], depths[0].ravel()[1:])
    s40 = open_reader("nyuv2", path.parent, classes=40, mapping=mapping).load(0)
    assert s40.semantic[1, 2] == 10 and s40.semantic[3, 4] == 0 and s40.semantic[0, 0] == 255
    assert s40.labelled_tasks == {"segmentation", "depth", "super_resolution"}
    ds13 = open_reader("nyuv2", path, classes=13, mapping=mapping)
    assert ds13.semantic_classes[ds13.load(0).semantic[1, 2]] == "picture"
    assert ds13.semantic_classes[ds13.load(0).semantic[3, 4]] == "wall"
    assert ds13.semantic_classes[ds13.load(1).semantic[5, 7]] == "wall"     # door -> wall
    assert (ds13.load(1).semantic == 255).sum() == NH * NW - 1
    # DataLoader workers get a pickled copy: the open HDF5 handle must not travel
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ds13)).load(0).semantic, ds13.load(0).semantic)


def test_nyuv2_mapping_forms_and_errors(nyu, tmp_path):
    import h5py

    path, _, _, mapping = nyu
    values = np.load(mapping)
    (tmp_path / "map.json").write_text(json.dumps(values.tolist()))
    with h5py.File(tmp_path / "classMapping40.mat", "w") as f:
        f["mapClass"] = values.reshape(894, 1)          # MATLAB's 1x894, HDF5 order
    for m in (tmp_path / "map.json", tmp_path / "classMapping40.mat"):
        assert open_reader("nyuv2", path, classes=40, mapping=m).load(0).semantic[1, 2] == 10
    with h5py.File(tmp_path / "splits.mat", "w") as f:      # MATLAB's column vectors, HDF5 order
        f["trainNdxs"] = np.array([[2.0]])
        f["testNdxs"] = np.array([[1.0]])
    test = open_reader("nyuv2", path, split="test", splits=tmp_path / "splits.mat")
    train = open_reader("nyuv2", path, split="train", splits=tmp_path / "splits.mat")
    assert len(test) == len(train) == 1
    np.testing.assert_array_equal(train.load(0).image, open_reader("nyuv2", path).load(1).image)
    with pytest.raises(ValueError, match="split=train needs splits=splits.mat"):
        open_reader("nyuv2", path, split="train")
    with h5py.File(tmp_path / "bad_splits.mat", "w") as f:
        f["trainNdxs"] = np.array([[3.0]])
    with pytest.raises(ValueError, match=r"bad_splits.mat: trainNdxs must hold 1-based frame numbers 1..2"):
        open_reader("nyuv2", path, split="train", splits=tmp_path / "bad_splits.mat")
    with pytest.raises(ValueError, match="classes=40 needs mapping=classMapping40.mat"):
        open_reader("nyuv2", path, classes=40)
    with pytest.raises(ValueError, match="894 raw classes do not fit"):
        open_reader("nyuv2", path, classes=894, mapping=mapping)
    np.save(tmp_path / "short.npy", values[:10])
    with pytest.raises(ValueError, match="short.npy: class mapping must hold 894 integers"):
        open_reader("nyuv2", path, classes=40, mapping=tmp_path / "short.npy")


# ------------------------------------------------------------------------------------- BDD100K
@pytest.fixture()
def bdd(tmp_path) -> Path:
    return write_bdd100k(tmp_path / "bdd100k")


def test_bdd100k(bdd):
    ds = open_reader("bdd100k", bdd, split="val")
    assert [ds.image_info(i)["file_name"] for i in range(3)] == [
        "images/10k/val/7d2f7975-e0c1c5a7.jpg", "images/100k/val/b1c66a42-6f7d68ca.jpg",
        "images/100k/val/b1c81faa-3df17267.jpg"]
    seg, det, night = ds.load(0), ds.load(1), ds.load(2)
    assert seg.labelled_tasks == {"segmentation", "super_resolution"}
    assert seg.semantic[20, 5] == 0 and seg.semantic[3, 5] == 10 and seg.semantic[3, 30] == 255
    assert det.labelled_tasks == {"detection", "super_resolution"}
    assert [ds.detection_classes[i] for i in det.labels] == ["car", "traffic light"]    # "other vehicle" dropped
    np.testing.assert_allclose(det.boxes, [[1.5, 2.25, 11.0, 9.75], [30, 0, 33, 6]])
    assert not det.night and night.night
    assert [ds.image_info(i)["night"] for i in range(3)] == [False, False, True]
    assert night.labelled_tasks == {"detection", "super_resolution"} and len(night.boxes) == 0   # no objects
    assert det.image.shape == (H, W, 3)


def test_bdd100k_bad_mask(bdd):
    png(bdd / "labels/sem_seg/masks/val/7d2f7975-e0c1c5a7.png", np.full((H, W), 19, np.uint8))
    with pytest.raises(ValueError, match=r"7d2f7975-e0c1c5a7.png: values \[19\] are not train ids"):
        open_reader("bdd100k", bdd, split="val").load(0)


# ---------------------------------------------------------------------------------------- COCO
@pytest.fixture()
def coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    write_rgb(root / "val2017/000000000139.jpg", photo(11))
    write_rgb(root / "val2017/000000000285.jpg", photo(12))
    doc = {
        "info": {"year": 2017}, "licenses": [],
        "images": [{"id": 139, "file_name": "000000000139.jpg", "width": W, "height": H},
                   {"id": 285, "file_name": "000000000285.jpg", "width": W, "height": H}],
        "categories": [{"supercategory": "person", "id": 1, "name": "person"},
                       {"supercategory": "vehicle", "id": 3, "name": "car"},
                       {"supercategory": "animal", "id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 139, "category_id": 18, "bbox": [2.5, 3.0, 10.0, 4.5], "area": 45.0,
             "iscrowd": 0, "segmentation": [[2.5, 3.0, 12.5, 3.0, 12.5, 7.5]]},
            {"id": 2, "image_id": 139, "category_id": 1, "bbox": [20.0, 1.0, 15.0, 20.0], "area": 300.0,
             "iscrowd": 1, "segmentation": {"counts": [0, 10], "size": [H, W]}},
            {"id": 3, "image_id": 139, "category_id": 3, "bbox": [5.0, 5.0, 0.0, 3.0], "area": 0.0, "iscrowd": 0},
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances_val2017.json").write_text(json.dumps(doc))
    return root


def test_coco(coco):
    ds = open_reader("coco", coco)
    assert ds.detection_classes == ("person", "car", "dog")
    s = ds.load(0)
    assert s.labels.tolist() == [2]
    np.testing.assert_allclose(s.boxes, [[2.5, 3.0, 12.5, 7.5]])
    np.testing.assert_allclose(s.crowd_boxes, [[20.0, 1.0, 35.0, 21.0]])
    assert s.crowd_labels.tolist() == [0]
    empty = ds.load(1)
    assert empty.labelled_tasks == {"detection", "super_resolution"} and len(empty.boxes) == 0


def test_coco_errors(coco):
    doc = json.loads((coco / "annotations/instances_val2017.json").read_text())
    doc["annotations"][0]["category_id"] = 99
    (coco / "annotations/instances_val2017.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"instances_val2017.json: annotations\[0\] has an unknown"):
        open_reader("coco", coco)
    with pytest.raises(FileNotFoundError, match="instances_train2017.json: not found"):
        open_reader("coco", coco, split="train2017")


# ------------------------------------------------------------------------ images and video
def test_image_folder(tmp_path):
    write_rgb(tmp_path / "photos/b.png", photo(13))
    write_rgb(tmp_path / "photos/sub/a.jpg", photo(14))
    (tmp_path / "photos/notes.txt").write_text("not an image")
    ds = open_reader("images", tmp_path / "photos")
    assert [ds.image_info(i)["file_name"] for i in range(len(ds))] == ["b.png", "sub/a.jpg"]
    s = ds.load(0)
    np.testing.assert_array_equal(s.image, photo(13))
    assert s.labelled_tasks == {"super_resolution"} and (s.semantic == 255).all() and np.isnan(s.depth).all()


def test_video(tmp_path):
    path = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for i in range(10):
        writer.write(np.full((H, W, 3), i * 20, np.uint8))
    writer.release()
    ds = open_reader("video", path, every=3)
    assert len(ds) == 4
    assert [round(float(ds.load(i).image.mean()) / 20) for i in (0, 1, 2, 3, 1, 0)] == [0, 3, 6, 9, 3, 0]
    assert round(float(pickle.loads(pickle.dumps(ds)).load(2).image.mean()) / 20) == 6


# ------------------------------------------------------------------------------ registry, CLI
def test_registry_errors(tmp_path):
    assert set(READERS) == {"cityscapes", "kitti", "kitti_depth", "nyuv2", "bdd100k", "coco", "images", "video"}
    with pytest.raises(ValueError, match="unknown dataset format 'voc'"):
        open_reader("voc", tmp_path)
    with pytest.raises(ValueError, match="format images takes no option.*split"):
        open_reader("images", tmp_path, split="val")
    with pytest.raises(ValueError, match="unknown task kind"):
        open_reader("images", tmp_path, tasks=["boxes"])


def test_readers_are_torch_free():
    code = ("import sys, mtl_perception.data.readers, mtl_perception.data.readers.convert; "
            "bad = {'torch', 'rclpy', 'h5py', 'training'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_convert_cityscapes(cityscapes, tmp_path, capsys):
    from mtl_perception.cli import main

    out = tmp_path / "converted"
    assert main(["convert", "cityscapes", str(cityscapes), "--split", "val", "--out", str(out), "--no-progress"]) == 0
    assert "2 frames from cityscapes" in capsys.readouterr().out
    source = open_reader("cityscapes", cityscapes, split="val")
    ds = MultiTaskDataset(out)
    assert ds.semantic_classes == TRAIN_CLASSES and ds.detection_classes == INSTANCE_CLASSES
    for i in range(2):
        a, b = source.load(i), ds.load(i)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.semantic, b.semantic)
        np.testing.assert_allclose(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist()
        assert ds.image_info(i)["labelled"] == sorted(a.labelled_tasks)
        assert b.labelled_tasks == frozenset(a.labelled_tasks)  # read back: unlabelled stays unlabelled
    s = ds.load(0)
    assert s.depth[5, 7] == pytest.approx(40.0) and np.isnan(s.depth[3, 3])   # 400 m: beyond the 16-bit range
    assert s.camera["baseline"] == 0.2 and s.camera["cx"] == 20.5
    assert "depth_file" not in ds.image_info(1) and "semantic_file" in ds.image_info(1)
    doc = json.loads((out / "dataset.json").read_text())
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert [(c["bbox"], c["category_id"]) for c in crowd] == [([0, 20, 6, 3], 3)]
    with pytest.raises(SystemExit):
        main(["convert", "pascal", str(cityscapes), "--out", str(tmp_path / "x")])
    assert main(["convert", "cityscapes", str(cityscapes), "--split", "val", "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_convert_options_and_limit(kitti_depth, tmp_path, capsys):
    from mtl_perception.cli import main

    root, raw = kitti_depth
    out = tmp_path / "kd"
    assert main(["convert", "kitti_depth", str(root), "--out", str(out), "-o", f"raw_root={raw}",
                 "-o", "skip_missing=true", "--limit", "5", "--no-progress"]) == 0
    ds = MultiTaskDataset(out)
    assert len(ds) == 1 and ds.load(0).depth[10, 20] == 12.5
    assert main(["convert", "kitti_depth", str(root), "--out", str(tmp_path / "k2"), "-o", "raw_root"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_evaluate_format_skips_what_a_frame_is_not_labelled_for(tmp_path, capsys):
    """`evaluate --format kitti` with the bright-box model (it finds the red rectangle, class 0,
    score 0.9): a frame without a label file is left out of detection, so map50 stays 1; the same
    frame with an empty label file means "no objects" and its detection is a false positive."""
    pytest.importorskip("onnx")
    from mtl_perception.cli import main
    from tests.runtime.model_factory import export_bright_box_model

    model = tmp_path / "bright.onnx"
    export_bright_box_model(model, (64, 48), tasks=("detection",))
    root = tmp_path / "kitti"
    for stem in ("000000", "000001"):
        rgb = np.zeros((48, 64, 3), np.uint8)
        rgb[10:30, 8:24] = (255, 0, 0)
        write_rgb(root / f"training/image_2/{stem}.png", rgb)
    (root / "training/label_2").mkdir(parents=True)
    (root / "training/label_2/000001.txt").write_text(   # 000000 first: its detection ranks first on a tie
        "Car 0.00 0 -1.58 8.00 10.00 24.00 30.00 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n")
    reports = {}
    for case in ("unlabelled", "no objects"):
        if case == "no objects":
            (root / "training/label_2/000000.txt").write_text("")
        out = tmp_path / f"{case}.json"
        assert main(["evaluate", "--model", str(model), "--no-progress", "--data", str(root), "--format", "kitti",
                     "--json", str(out)]) == 0
        reports[case] = json.loads(out.read_text())
    capsys.readouterr()
    assert reports["unlabelled"]["frames"] == 2
    assert reports["unlabelled"]["tasks"]["detection"]["map50"] == pytest.approx(1.0)
    assert reports["no objects"]["tasks"]["detection"]["map50"] < 0.9
