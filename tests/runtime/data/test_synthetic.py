"""The procedural synthetic world: labels checked against independent references.

The references here are written from the documented conventions (world frame X right, Y
forward, Z up; camera frame x right, y down, z forward; pixel (col, row) samples the ray through
(col + 0.5, row + 0.5); depth is planar z), not by calling the renderer's own geometry code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest

from mtl_perception.data.synthetic import (
    DETECTION_CLASSES,
    MAX_DEPTH,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SEMANTIC_CLASSES,
    Camera,
    Scene,
    render_frame,
    render_scene,
    scene_for,
)
from mtl_perception.data.synthetic.generate import generate_dataset, is_night

SMALL = Camera.default(192, 128)
C = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
GROUND = (C["road"], C["sidewalk"], C["lane_marking"])


# ----------------------------------------------------------------- independent camera geometry
def camera_axes(cam: Camera) -> np.ndarray:
    """Columns: camera x (right), y (down), z (forward) in the world frame (Z up, Y forward)."""
    p = math.radians(cam.pitch_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, -math.sin(p), math.cos(p)], [0.0, -math.cos(p), -math.sin(p)]])


def backproject(cam: Camera, depth: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """World points of pixels (rows, cols) with planar depth."""
    x = (cols + 0.5 - cam.cx) / cam.fx
    y = (rows + 0.5 - cam.cy) / cam.fy
    pc = np.stack([x, y, np.ones_like(x)], 1) * depth[:, None]
    return pc @ camera_axes(cam).T + np.array([0.0, 0.0, cam.mount_height])


def plane_depth(cam: Camera, rows: np.ndarray) -> np.ndarray:
    """Closed-form planar depth of the ground plane Z = 0 seen through rows ``rows``."""
    p = math.radians(cam.pitch_deg)
    y = (rows + 0.5 - cam.cy) / cam.fy
    with np.errstate(divide="ignore"):
        return cam.mount_height / (y * math.cos(p) + math.sin(p))


def box_surface_distance(points: np.ndarray, center, size, yaw) -> np.ndarray:
    """Distance of points to the surface of an oriented box (own implementation)."""
    d = points - np.asarray(center)
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    q = np.abs(local) - np.asarray(size) / 2
    outside = np.linalg.norm(np.maximum(q, 0), axis=1)
    inside = np.minimum(q.max(axis=1), 0)
    return np.abs(outside + inside)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


# ------------------------------------------------------------------------------------- camera
def test_camera_default_scaled_and_intrinsics():
    cam = Camera.default()
    assert (cam.width, cam.height) == (384, 256)
    assert math.degrees(2 * math.atan(cam.width / 2 / cam.fx)) == pytest.approx(70.0)
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (192, 128)
    assert (half.fx, half.fy, half.cx, half.cy) == pytest.approx((cam.fx / 2, cam.fy / 2, cam.cx / 2, cam.cy / 2))
    K = cam.K()
    assert K.shape == (3, 3) and K[0, 0] == cam.fx and K[1, 2] == cam.cy and K[2, 2] == 1
    assert cam.K_opencv()[0, 2] == pytest.approx(cam.cx - 0.5)
    # a world point projects (corner convention) to the pixel whose ray passes through it
    f = render_frame(0, 1, SMALL)
    rows, cols = np.nonzero(np.isfinite(f.depth))
    pick = np.linspace(0, len(rows) - 1, 50).astype(int)
    P = backproject(f.camera, f.depth[rows[pick], cols[pick]].astype(np.float64), rows[pick], cols[pick])
    uvz = f.camera.project(P)
    np.testing.assert_allclose(uvz[:, 0], cols[pick] + 0.5, atol=1e-3)
    np.testing.assert_allclose(uvz[:, 1], rows[pick] + 0.5, atol=1e-3)


# -------------------------------------------------------------------------------------- depth
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_ground_depth_is_the_ray_plane_intersection(index):
    f = render_frame(7, index, SMALL)
    cam = f.camera
    assert 1.35 <= cam.mount_height <= 1.75 and -2.0 <= cam.pitch_deg <= 3.0
    ground = np.isin(f.semantic, GROUND)
    assert ground.sum() > 0.15 * ground.size
    rows, cols = np.nonzero(ground)
    expected = plane_depth(cam, rows.astype(np.float64))
    got = f.depth[rows, cols]
    near = expected <= MAX_DEPTH * (1 - 1e-6)
    far = expected > MAX_DEPTH * (1 + 1e-6)
    np.testing.assert_allclose(got[near], expected[near], rtol=2e-5)
    assert np.isnan(got[far]).all()
    # back-projected ground pixels lie on Z = 0
    P = backproject(cam, got[near].astype(np.float64), rows[near], cols[near])
    assert np.abs(P[:, 2]).max() < 2e-3


@pytest.mark.parametrize("index", [0, 5])
def test_object_pixels_lie_on_the_surfaces_of_their_boxes(index):
    cam = SMALL
    f = render_frame(11, index, cam)
    scene = scene_for(11, index, cam)
    assert f.camera == scene.camera
    checked = 0
    for cls in ("vehicle", "pedestrian", "traffic_sign", "pole", "building"):
        rows, cols = np.nonzero((f.semantic == C[cls]) & np.isfinite(f.depth))
        if not len(rows):
            continue
        P = backproject(f.camera, f.depth[rows, cols].astype(np.float64), rows, cols)
        boxes = [b for b in scene.boxes if b.semantic == C[cls]]
        dist = np.min([box_surface_distance(P, b.center, b.size, b.yaw) for b in boxes], axis=0)
        depth = f.depth[rows, cols]
        assert (dist < 2e-3 + 2e-5 * depth).all(), (cls, float(dist.max()))
        checked += len(rows)
    assert checked > 1000


def test_vehicle_face_backprojection_constructed_scene():
    scene = Scene.empty(SMALL)
    iid = scene.add_vehicle(1.0, 12.0, yaw=0.4, kind="car")
    f = render_scene(scene)
    body = scene.boxes[0]
    rows, cols = np.nonzero(f.instances == iid)
    assert len(rows) > 200
    P = backproject(scene.camera, f.depth[rows, cols].astype(np.float64), rows, cols)
    own = [b for b in scene.boxes if b.instance == iid]
    dist = np.min([box_surface_distance(P, b.center, b.size, b.yaw) for b in own], axis=0)
    assert dist.max() < 2e-3
    # the body's visible side and rear faces: points satisfy the face plane equations
    c, s = math.cos(body.yaw), math.sin(body.yaw)
    d = P - np.array(body.center)
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    half = np.array(body.size) / 2
    on_body = box_surface_distance(P, body.center, body.size, body.yaw) < 2e-3
    rear = on_body & (np.abs(local[:, 1] + half[1]) < 2e-3)
    assert rear.sum() > 20
    assert (np.abs(local[rear, 0]) <= half[0] + 2e-3).all() and (np.abs(local[rear, 2]) <= half[2] + 2e-3).all()


def test_sky_and_out_of_range_are_nan():
    for i in range(3):
        f = render_frame(3, i, SMALL)
        sky = f.semantic == C["sky"]
        assert sky.any() and np.isnan(f.depth[sky]).all()
        valid = np.isfinite(f.depth)
        assert (f.depth[valid] > 0).all() and (f.depth[valid] <= MAX_DEPTH).all()
        assert f.depth.dtype == np.float32 and f.semantic.dtype == np.uint8 and f.instances.dtype == np.int32
        assert f.image.dtype == np.uint8 and f.image.shape == (SMALL.height, SMALL.width, 3)
        assert set(np.unique(f.semantic)) <= set(range(len(SEMANTIC_CLASSES)))


# -------------------------------------------------------------------------------------- boxes
def _alone(scene: Scene, iid: int) -> Scene:
    """The same scene with only instance ``iid`` (its primitives), nothing else."""
    return dataclasses.replace(scene, boxes=[b for b in scene.boxes if b.instance == iid], ellipsoids=[],
                               instances=[i for i in scene.instances if i.id == iid], lamps=[])


@pytest.mark.parametrize("index", [0, 2, 4])
def test_boxes_are_tight_around_instance_masks(index):
    f = render_frame(5, index, SMALL)
    scene = scene_for(5, index, SMALL)
    label_of = {i.id: i.label for i in scene.instances}
    det_sem = {0: C["vehicle"], 1: C["pedestrian"], 2: C["traffic_sign"]}
    assert len(f.boxes) == len(f.labels) == len(f.instance_ids) == len(f.visible_fraction)
    for box, label, iid, frac in zip(f.boxes, f.labels, f.instance_ids, f.visible_fraction):
        mask = f.instances == iid
        assert tuple(box) == tight_box(mask)
        assert label == label_of[int(iid)]
        assert (f.semantic[mask] == det_sem[int(label)]).all()
        assert mask.sum() >= MIN_VISIBLE_PIXELS and MIN_VISIBLE_FRACTION <= frac <= 1.0
    # every instance that passes the rule has a box; the unoccluded count comes from rendering the
    # instance alone
    boxed = set(int(i) for i in f.instance_ids)
    for iid in np.unique(f.instances[f.instances > 0]):
        visible = int((f.instances == iid).sum())
        alone = render_scene(_alone(scene, int(iid)))
        unoccluded = int((alone.instances == iid).sum())
        assert unoccluded >= visible
        frac = visible / unoccluded
        passes = visible >= MIN_VISIBLE_PIXELS and frac >= MIN_VISIBLE_FRACTION
        assert passes == (int(iid) in boxed), (iid, visible, frac)
        if passes:
            j = list(f.instance_ids).index(iid)
            assert f.visible_fraction[j] == pytest.approx(frac, abs=1e-6)


def test_occluded_object_has_truncated_box_and_partial_visibility():
    scene = Scene.empty(SMALL)
    front = scene.add_vehicle(0.0, 10.0, kind="car", color=(0.5, 0.02, 0.02))
    back = scene.add_vehicle(1.2, 20.0, kind="van", color=(0.6, 0.6, 0.6))
    f = render_scene(scene)
    alone = render_scene(_alone(scene, back))
    ids = list(f.instance_ids)
    assert front in ids and back in ids
    jf, jb = ids.index(front), ids.index(back)
    assert f.visible_fraction[jf] == pytest.approx(1.0)
    assert MIN_VISIBLE_FRACTION < f.visible_fraction[jb] < 0.9
    full_box = alone.boxes[list(alone.instance_ids).index(back)]
    vis_box = f.boxes[jb]
    assert vis_box[0] > full_box[0] and vis_box[2] == full_box[2]  # left part hidden behind the car
    assert tuple(vis_box) == tight_box(f.instances == back)
    # the hidden pixels of the rear van are the car's, which is nearer there
    hidden = (alone.instances == back) & (f.instances != back)
    assert hidden.any() and (f.instances[hidden] == front).all()
    assert (f.depth[hidden] < alone.depth[hidden]).all()


# -------------------------------------------------------------------------------- determinism
def test_frames_are_deterministic_and_depend_on_the_seed():
    a = render_frame(3, 5, SMALL)
    b = render_frame(3, 5, SMALL)
    for name in ("image", "semantic", "depth", "instances", "boxes", "labels", "visible_fraction"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = render_frame(4, 5, SMALL)
    assert not np.array_equal(a.image, c.image)
    d = render_frame(3, 6, SMALL)
    assert not np.array_equal(a.semantic, d.semantic)


def test_day_and_night_share_labels_and_night_is_darker():
    day_means, night_means = [], []
    for i in range(4):
        day = render_frame(9, i, SMALL)
        night = render_frame(9, i, SMALL, night=True)
        assert night.night and not day.night
        n2 = render_frame(9, i, SMALL, night=True)
        np.testing.assert_array_equal(night.image, n2.image)
        for name in ("semantic", "depth", "instances", "boxes", "labels"):
            np.testing.assert_array_equal(getattr(day, name), getattr(night, name))
        assert not np.array_equal(day.image, night.image)
        day_means.append(day.image.mean())
        night_means.append(night.image.mean())
    assert np.mean(night_means) < 0.5 * np.mean(day_means)


def test_night_fraction_is_deterministic_and_about_right():
    flags = [is_night(0, i, 0.25) for i in range(4000)]
    assert flags == [is_night(0, i, 0.25) for i in range(4000)]
    assert 0.22 < np.mean(flags) < 0.28
    assert not any(is_night(0, i, 0.0) for i in range(100)) and all(is_night(0, i, 1.0) for i in range(100))


def test_scenes_vary_and_populate_all_classes():
    seen = np.zeros(len(SEMANTIC_CLASSES), int)
    labels = np.zeros(len(DETECTION_CLASSES), int)
    for i in range(12):
        f = render_frame(1, i, SMALL)
        seen += np.bincount(f.semantic.ravel(), minlength=len(SEMANTIC_CLASSES))[: len(SEMANTIC_CLASSES)] > 0
        labels += np.bincount(f.labels, minlength=len(DETECTION_CLASSES))
    assert (seen > 0).all(), dict(zip(SEMANTIC_CLASSES, seen))
    assert (labels > 0).all(), dict(zip(DETECTION_CLASSES, labels))


# --------------------------------------------------------------------------------- generation
def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_dataset_is_identical_for_any_worker_count(tmp_path):
    cam = Camera.default(128, 96)
    one = generate_dataset(tmp_path / "w1", 6, seed=2, night_fraction=0.5, camera=cam, workers=1, progress=False)
    two = generate_dataset(tmp_path / "w2", 6, seed=2, night_fraction=0.5, camera=cam, workers=2, progress=False)
    d1, d2 = _digest(one), _digest(two)
    assert len(d1) == 1 + 3 * 6
    assert d1 == d2


def test_generation_throughput_384x256_two_workers(tmp_path):
    from mtl_perception.data.dataset import MultiTaskDataset

    n = 200
    t0 = time.perf_counter()
    root = generate_dataset(tmp_path / "ds", n, seed=0, workers=2, progress=False)
    dt = time.perf_counter() - t0
    print(f"\nsynthetic generation: {n} frames of 384x256 with 2 workers in {dt:.1f} s = {n / dt:.1f} frames/s")
    ds = MultiTaskDataset(root)
    assert len(ds) == n
    nights = sum(bool(ds.image_info(i).get("night")) for i in range(n))
    assert 0.12 * n < nights < 0.38 * n
    s = ds.load(n - 1)
    assert s.image.shape == (256, 384, 3) and s.semantic.shape == (256, 384)
