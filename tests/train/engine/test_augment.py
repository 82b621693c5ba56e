"""Augmentation keeps image, semantics, boxes, depth, intrinsics and the SR pair consistent.

References are closed forms written here from the parameters alone (zoom about the origin by s,
shift by the crop origin, mirror about the width), not the module's affine."""
import numpy as np
import pytest

from mtl_perception.data.dataset import MultiTaskDataset
from mtl_perception.inference.preprocess import resize_image
from tests.train.tiny_mtl import tiny_recipe as shared_tiny_recipe
from training.engine.augment import (
    AugmentConfig,
    AugmentParams,
    ColorConfig,
    augment_sample,
    flip_coin,
    sample_params,
    transform_boxes,
    transform_intrinsics,
)
from training.engine.data import TaskDataset
from training.engine.trainer import Trainer, build_tasks
from training.recipe.config import ConfigError

pytestmark = pytest.mark.tiny_data(train=16, val=8)

W, H, R = 128, 96, 2  # input size, SR factor
RECT = (40.0, 30.0, 90.0, 70.0)  # x1, y1, x2, y2 in continuous input pixels
FULL = AugmentConfig(scale=(0.75, 1.25), crop=True, flip=0.5)


def synthetic_sample():
    """A bright rectangle in the HR image (hence the input), the semantic map and as a box;
    depth is a ramp with a distinct value in every pixel."""
    x1, y1, x2, y2 = (int(v) for v in RECT)
    hr = np.full((H * R, W * R, 3), 40, np.uint8)
    hr[y1 * R:y2 * R, x1 * R:x2 * R] = 220
    semantic = np.zeros((H, W), np.uint8)
    semantic[y1:y2, x1:x2] = 3
    depth = (1.0 + np.arange(H * W, dtype=np.float32).reshape(H, W) / 100.0).astype(np.float32)
    return {"image": resize_image(hr, (W, H)), "hr_image": hr, "semantic": semantic, "depth": depth,
            "boxes": np.array([RECT], np.float32), "labels": np.array([2], np.int64),
            "intrinsics": np.array([100.0, 90.0, 63.5, 47.5], np.float32)}


def expected_rect(params):
    """The rectangle after zoom, crop and flip, clipped to the input (closed form)."""
    s, (ox, oy) = params.scale, params.offset
    x1, y1, x2, y2 = RECT
    x1, x2, y1, y2 = s * x1 - ox, s * x2 - ox, s * y1 - oy, s * y2 - oy
    if params.flip:
        x1, x2 = W - x2, W - x1
    return np.clip([x1, y1, x2, y2], 0, [W, H, W, H])


def rect_mask(rect, shape=(H, W)):
    ys, xs = np.mgrid[:shape[0], :shape[1]] + 0.5
    return (xs > rect[0]) & (xs < rect[2]) & (ys > rect[1]) & (ys < rect[3])


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("index", range(12))
def test_image_semantics_and_box_coincide_after_scale_crop_flip(index):
    params = sample_params(FULL, seed=1, epoch=2, index=index, size=(W, H))
    out = augment_sample(synthetic_sample(), params)
    truth = expected_rect(params)
    reference = rect_mask(truth)
    assert iou(out["semantic"] == 3, reference) > 0.95
    assert iou(out["image"][..., 0] > 130, reference) > 0.95
    assert len(out["boxes"]) == 1 and out["labels"].tolist() == [2]
    assert box_iou(out["boxes"][0], truth) > 0.99


def test_parameters_cover_the_configured_ranges():
    params = [sample_params(FULL, 0, 0, i, (W, H)) for i in range(200)]
    scales = np.array([p.scale for p in params])
    assert 0.75 <= scales.min() < 0.8 and 1.2 < scales.max() <= 1.25
    assert 0.35 < np.mean([p.flip for p in params]) < 0.65
    assert any(p.offset[0] < 0 for p in params) and any(p.offset[0] > 0 for p in params)
    for p in params:  # the crop stays on the zoomed image (or the zoomed image inside the crop)
        slack = p.scale * W - W
        assert min(0, slack) <= p.offset[0] <= max(0, slack)


@pytest.mark.parametrize("mode", ["keep", "inverse"])
@pytest.mark.parametrize("flip", [False, True])
def test_intrinsics_match_projection_before_and_after(mode, flip):
    """A 3-D point projected with the old intrinsics, moved through the image transform, lands
    where the new intrinsics project it: the same point (keep) or at depth Z / s (inverse);
    a flip mirrors the scene (X -> -X)."""
    params = AugmentParams(1.2, (7.3, -4.1), flip, (W, H), depth_scale_mode=mode)
    fx, fy, cx, cy = 100.0, 90.0, 63.5, 47.5
    new = transform_intrinsics(np.array([fx, fy, cx, cy]), params)
    rng = np.random.default_rng(0)
    points = rng.uniform([-3, -2, 2], [3, 2, 30], (50, 3))
    u = fx * points[:, 0] / points[:, 2] + cx  # index coordinates (pixel centres at integers)
    v = fy * points[:, 1] / points[:, 2] + cy
    u2 = params.scale * (u + 0.5) - params.offset[0]
    v2 = params.scale * (v + 0.5) - params.offset[1]
    if flip:
        u2 = W - u2
    u2, v2 = u2 - 0.5, v2 - 0.5
    X = -points[:, 0] if flip else points[:, 0]
    Z = points[:, 2] if mode == "keep" else points[:, 2] / params.scale
    np.testing.assert_allclose(new[0] * X / Z + new[2], u2, atol=1e-3)
    np.testing.assert_allclose(new[1] * points[:, 1] / Z + new[3], v2, atol=1e-3)


@pytest.mark.parametrize("mode", ["keep", "inverse"])
def test_depth_is_the_nearest_source_value_or_its_inverse_scaling(mode):
    params = AugmentParams(1.37, (9.2, 5.6), False, (W, H), depth_scale_mode=mode)
    sample = synthetic_sample()
    out = augment_sample(sample, params)["depth"]
    ys, xs = np.mgrid[:H, :W] + 0.5  # output pixel centres -> source pixel (closed form)
    src_x = np.floor((xs + params.offset[0]) / params.scale).astype(int)
    src_y = np.floor((ys + params.offset[1]) / params.scale).astype(int)
    expected = sample["depth"][src_y, src_x] / (params.scale if mode == "inverse" else 1.0)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_padding_is_ignore_for_semantics_and_invalid_for_depth():
    params = AugmentParams(0.6, (-20.0, -10.0), False, (W, H))
    out = augment_sample(synthetic_sample(), params)
    inside = rect_mask((20.0, 10.0, 20.0 + 0.6 * W, 10.0 + 0.6 * H))
    outside = ~rect_mask((19.0, 9.0, 21.0 + 0.6 * W, 11.0 + 0.6 * H))  # a pixel of slack at the border
    assert (out["semantic"][outside] == 255).all() and not (out["semantic"][inside] == 255).any()
    assert np.isnan(out["depth"][outside]).all() and np.isfinite(out["depth"][inside]).all()
    assert (out["image"][outside] == 0).all()


def test_boxes_leaving_the_crop_are_dropped_and_partly_visible_ones_clipped():
    params = AugmentParams(1.0, (0.5, 0.0), False, (W, H))
    boxes = np.array([[-30, 10, -5, 20],  # left of the crop
                      [-20.5, 10, 19.5, 30],  # half inside
                      [-30.5, 10, 9.5, 30],  # a quarter inside
                      [10, 10, 30, 30]], np.float32)
    clipped, keep = transform_boxes(boxes, params, min_visible=0.3)
    assert keep.tolist() == [False, True, False, True]
    np.testing.assert_allclose(clipped[1], [0, 10, 19, 30])
    np.testing.assert_allclose(clipped[3], [9.5, 10, 29.5, 30])
    assert transform_boxes(boxes, params, min_visible=0.2)[1].tolist() == [False, True, True, True]
    sample = synthetic_sample()
    sample["boxes"], sample["labels"] = boxes, np.arange(4)
    out = augment_sample(sample, params, min_visible=0.3)
    assert out["labels"].tolist() == [1, 3] and out["boxes"].shape == (2, 4)


def test_same_seed_same_result_and_the_epoch_changes_it():
    config = AugmentConfig(scale=(0.75, 1.25), color=ColorConfig(0.2, 0.2, 0.2, 0.02))
    a = augment_sample(synthetic_sample(), sample_params(config, 4, 1, 5, (W, H)))
    b = augment_sample(synthetic_sample(), sample_params(config, 4, 1, 5, (W, H)))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    changed = [sample_params(config, 4, 1, i, (W, H)) != sample_params(config, 4, 2, i, (W, H)) for i in range(8)]
    assert all(changed)
    assert sample_params(config, 4, 1, 5, (W, H)) != sample_params(config, 5, 1, 5, (W, H))


def test_super_resolution_pair_is_derived_after_augmentation_with_colour():
    config = AugmentConfig(scale=(0.75, 1.25), color=ColorConfig(0.2, 0.2, 0.2, 0.02))
    sample = synthetic_sample()
    params = sample_params(config, 0, 0, 3, (W, H))
    out = augment_sample(sample, params)
    assert out["hr_image"].shape == (H * R, W * R, 3)
    np.testing.assert_array_equal(out["image"], resize_image(out["hr_image"], (W, H)))
    plain = augment_sample(sample, AugmentParams(params.scale, params.offset, params.flip, (W, H)))
    assert np.abs(out["hr_image"].astype(int) - plain["hr_image"]).mean() > 1  # the colours did change
    assert np.array_equal(out["semantic"], plain["semantic"])  # and labels did not


def test_flip_probability_keeps_the_fair_coin_at_one_half():
    for p in (0.0, 0.2, 0.5, 0.8, 1.0):
        flips = [sample_params(AugmentConfig(flip=p), 3, 0, i, (W, H)).flip for i in range(400)]
        assert abs(np.mean(flips) - p) < 0.08
    half = [sample_params(AugmentConfig(), 3, 0, i, (W, H)).flip for i in range(64)]
    assert half == [flip_coin(3, 0, i) for i in range(64)]


# -- the pipeline and the recipe -----------------------------------------------------------------
def tiny_recipe(data_root, out_dir, **data):
    """The shared tiny recipe for one epoch, with `data` added to its data section."""
    section = {"train": str(data_root / "train"), "val": str(data_root / "val"), "input_size": [64, 32], **data}
    return shared_tiny_recipe(data_root, out_dir, data=section,
                              optim={"epochs": 1, "batch_size": 8, "warmup_steps": 2, "lr": 0.003})


def legacy_flip(base):
    """The pipeline's flip before this module existed (copied verbatim as the reference)."""
    width = base["image"].shape[1]
    out = {k: np.ascontiguousarray(v[:, ::-1]) if isinstance(v, np.ndarray) else v  # (the labelled
           for k, v in base.items() if k not in ("boxes", "labels", "intrinsics")}  # kinds: no map)
    boxes = base["boxes"].copy()
    boxes[:, [0, 2]] = width - base["boxes"][:, [2, 0]]
    out["boxes"], out["labels"] = boxes, base["labels"]
    if "intrinsics" in base:  # (added since) a mirror about the width: cx -> width - 1 - cx
        fx, fy, cx, cy = base["intrinsics"]
        out["intrinsics"] = np.array([fx, fy, width - 1 - cx, cy], np.float32)
    return out


def test_default_recipe_reproduces_the_flip_only_pipeline_bit_for_bit(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path)
    assert recipe.data.augmentation == AugmentConfig()
    assert tiny_recipe(tiny_data, tmp_path, augment_flip=False).data.augmentation is None
    source = MultiTaskDataset(tiny_data / "train")
    tasks = build_tasks(recipe, source)
    dataset = TaskDataset(source, tasks, (64, 32), 2, augment=recipe.data.augmentation, seed=7)
    plain = TaskDataset(source, tasks, (64, 32), 2, augment=False)
    for epoch in range(3):
        for index in range(len(source)):
            base = plain.base(index)
            if flip_coin(7, epoch, index):
                base = legacy_flip(base)
            assert "intrinsics" in base  # the synthetic camera, at the input size
            expected = {"image": np.ascontiguousarray(base["image"].transpose(2, 0, 1)), "index": np.int64(index),
                        "intrinsics": base["intrinsics"]}
            for name, task in tasks.items():
                expected.update(task.prepare(base))
                expected[f"{name}_labelled"] = np.bool_(task.kind in base["labelled_tasks"])
            item = dataset[(epoch, index)]
            assert item.keys() == expected.keys()
            for key in item:
                assert np.array_equal(item[key], expected[key], equal_nan=item[key].dtype.kind == "f"), key


@pytest.mark.parametrize("data, message", [
    ({"augment": {"scale": [1.2, 0.8]}}, "data.augment: scale"),
    ({"augment": {"flip": 1.5}}, "data.augment: flip"),
    ({"augment": {"zoom": 2}}, "data.augment.zoom: unknown key"),
    ({"augment": {"depth_scale_mode": "half"}}, "data.augment.depth_scale_mode: expected one of"),
    ({"augment": {"color": {"hue": 0.7}}}, "data.augment.color: color.hue"),
    ({"augment": {"crop": "yes"}}, "data.augment.crop: expected true/false"),
])
def test_recipe_errors_name_the_dotted_key(tiny_data, tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        tiny_recipe(tiny_data, tmp_path, **data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_training_runs_end_to_end_with_full_augmentation(tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_data, tmp_path, augment={
        "scale": [0.75, 1.25], "crop": True, "flip": 0.5, "depth_scale_mode": "inverse",
        "color": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}})
    trainer = Trainer(recipe, progress=False)
    assert trainer.train_set.augment.scale == (0.75, 1.25)
    trainer.fit()
    row = trainer.history[-1]
    assert trainer.epoch == 1 and all(np.isfinite(v) for v in row.values() if isinstance(v, float))


@pytest.mark.parametrize("rgb, color, expected", [
    ((100, 100, 100), (0.2, 1.0, 1.0, 0.0), (151, 151, 151)),  # brightness: + 0.2 * 255
    ((200, 0, 0), (0.0, 1.0, 1.0, 1 / 3), (0, 200, 0)),  # hue: a third of the circle, red -> green
    ((200, 100, 100), (0.0, 1.0, 0.5, 0.0), (200, 150, 150)),  # saturation halved at the same value
    ((200, 100, 100), (0.0, 1.0, 1.0, 0.0), (200, 100, 100)),  # identity
])
def test_colour_jitter_matches_closed_forms_on_flat_images(rgb, color, expected):
    sample = synthetic_sample()
    sample["hr_image"] = np.full_like(sample["hr_image"], rgb)
    sample["image"] = resize_image(sample["hr_image"], (W, H))
    out = augment_sample(sample, AugmentParams(1.0, (0.0, 0.0), False, (W, H), color))
    for key in ("hr_image", "image"):
        assert np.abs(out[key].reshape(-1, 3).astype(int) - expected).max() <= 1, key


@pytest.mark.parametrize("mode", ["inverse", "keep"])
def test_reader_intrinsics_follow_the_resize_then_zoom_and_crop(tmp_path, mode):
    """Cityscapes camera JSON (fx 2000, fy 2010, u0 20.5, v0 12.25 on 40x24) -> the 80x48 input
    (x2: fx 4000, fy 4020; index coordinates cx' + 0.5 = 2 (cx + 0.5): cx 41.5, cy 25.0) -> a
    centred zoom by 2 (crop origin (80 - 40) ... (160 - 80) / 2 = 40, (96 - 48) / 2 = 24:
    cx'' + 0.5 = 2 (cx' + 0.5) - 40 -> 43.5, cy'' -> 26.5; fx doubled under keep only). The
    frame without a camera carries NaN, so a batch of both still collates."""
    import torch

    from mtl_perception.data.readers import open_reader
    from tests.dataset_trees import write_cityscapes

    source = open_reader("cityscapes", write_cityscapes(tmp_path / "cityscapes"), split="val")
    plain = TaskDataset(source, {}, (80, 48), 2)
    np.testing.assert_allclose(plain[0]["intrinsics"], [4000.0, 4020.0, 41.5, 25.0], rtol=1e-6)
    zoom = AugmentConfig(scale=(2.0, 2.0), crop=False, flip=0.0, depth_scale_mode=mode)
    zoomed = TaskDataset(source, {}, (80, 48), 2, augment=zoom)
    focal = 2.0 if mode == "keep" else 1.0
    np.testing.assert_allclose(zoomed[0]["intrinsics"], [4000.0 * focal, 4020.0 * focal, 43.5, 26.5], rtol=1e-6)
    flipped = TaskDataset(source, {}, (80, 48), 2, augment=AugmentConfig(flip=1.0))
    np.testing.assert_allclose(flipped[0]["intrinsics"], [4000.0, 4020.0, 79 - 41.5, 25.0], rtol=1e-6)
    assert np.isnan(zoomed[1]["intrinsics"]).all()
    batch = torch.utils.data.default_collate([zoomed[0], zoomed[1]])
    assert batch["intrinsics"].shape == (2, 4)


@pytest.mark.parametrize("resize, expected", [
    # 1280x720 into 512x256. letterbox: scale min(0.4, 0.3556) -> a 455x256 image at x = 28,
    # sx = 455/1280, sy = 256/720: cx' = sx * 640 + 28 - 0.5 = 255.0, cy' = sy * 360 - 0.5 = 127.5
    ("letterbox", [1000 * 455 / 1280, 1000 * 256 / 720, 255.0, 127.5]),
    # crop: scale 0.4, camera rows 40..680 seen: cy' = 0.4 * (360 - 40) - 0.5 = 127.5
    ("crop", [400.0, 400.0, 255.5, 127.5]),
    ("stretch", [400.0, 1000 * 256 / 720, 255.5, 127.5]),
])
def test_input_intrinsics_follow_the_resize_mode(resize, expected):
    from training.engine.data import input_intrinsics

    camera = {"fx": 1000.0, "fy": 1000.0, "cx": 639.5, "cy": 359.5}
    np.testing.assert_allclose(input_intrinsics(camera, (1280, 720), (512, 256), resize), expected, rtol=1e-6)
