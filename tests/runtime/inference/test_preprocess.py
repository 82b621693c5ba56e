"""The resize modes of `preprocess` (stretch, letterbox, crop) against hand-computed geometry:
scale and offset, boxes both ways, dense maps both ways, the model input itself, the training
sample equal to the node's input, and the contract field (old metadata reads as stretch)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mtl_perception.contract import RESIZE_MODES, ContractError, InputSpec, ModelMetadata, TaskSpec
from mtl_perception.inference.preprocess import (
    PAD_VALUE,
    FrameMapping,
    model_input,
    resize_image,
    resize_sample,
)
from mtl_perception.messages.image import scale_camera_info


# ------------------------------------------------------------------ closed forms (1280x720 -> 512x256)
def test_letterbox_1280x720_into_512x256():
    """scale min(512/1280, 256/720) = 0.3556: 1280x720 -> 455x256 (round(455.1)), centred with
    (512 - 455) // 2 = 28 columns of padding on the left."""
    m = FrameMapping((1280, 720), (512, 256), "letterbox")
    assert m.camera_window == (0, 0, 1280, 720) and m.valid_region == (28, 0, 455, 256)
    assert m.scale == pytest.approx((455 / 1280, 256 / 720)) and m.offset == (28.0, 0.0)
    box = np.array([[100, 72, 740, 648]], np.float32)
    model = m.boxes_to_model(box)
    np.testing.assert_allclose(model, [[100 * 455 / 1280 + 28, 25.6, 740 * 455 / 1280 + 28, 230.4]], rtol=1e-6)
    np.testing.assert_allclose(m.boxes_to_camera(model), box, atol=1e-3)
    # a box in the left padding is clipped to the image's edge: x 0..0, y to 50 / (256/720)
    np.testing.assert_allclose(m.boxes_to_camera(np.array([[0, 0, 20, 50]])), [[0, 0, 0, 140.625]])
    # camera boxes leaving the frame are clipped to the valid region in model pixels
    np.testing.assert_allclose(m.boxes_to_model(np.array([[-100, -50, 1400, 800]])), [[28, 0, 483, 256]])


def test_crop_1280x720_into_512x256():
    """scale max(0.4, 0.3556) = 0.4: the model sees camera rows 40..680 (640 = 256 / 0.4),
    every column; model = camera * 0.4 - (0, 16)."""
    m = FrameMapping((1280, 720), (512, 256), "crop")
    assert m.camera_window == (0, 40, 1280, 640) and m.valid_region == (0, 0, 512, 256)
    assert m.scale == pytest.approx((0.4, 0.4)) and m.offset == pytest.approx((0.0, -16.0))
    np.testing.assert_allclose(m.boxes_to_model(np.array([[100, 20, 500, 700]])), [[40, 0, 200, 256]])
    np.testing.assert_allclose(m.boxes_to_camera(np.array([[40, 0, 200, 256]])), [[100, 40, 500, 680]])
    np.testing.assert_allclose(m.boxes_to_camera(np.array([[40, -10, 200, 300]])), [[100, 40, 500, 680]])
    boxes, labels = m.labelled_boxes_to_model(np.array([[0, 0, 50, 30], [0, 0, 50, 60], [5, 5, 5, 5]]),
                                              np.array([3, 4, 5]))
    # outside the crop (rows 0..30): dropped; half inside: clipped; degenerate from the start: kept
    np.testing.assert_allclose(boxes, [[0, 0, 20, 8], [2, 0, 2, 0]])
    assert labels.tolist() == [4, 5]


def test_stretch_is_the_old_per_axis_scaling():
    m = FrameMapping((640, 360), (64, 48))
    assert m.mode == "stretch" and m.scale == (0.1, 48 / 360) and m.offset == (0.0, 0.0)
    np.testing.assert_allclose(m.boxes_to_model(np.array([[100, 75, 200, 225]])), [[10, 10, 20, 30]])


@pytest.mark.parametrize("mode", list(RESIZE_MODES))
@pytest.mark.parametrize("camera", [(1280, 720), (640, 480), (333, 517), (512, 256)])
def test_boxes_round_trip_inside_what_the_model_sees(mode, camera):
    m = FrameMapping(camera, (512, 256), mode)
    x, y, w, h = m.camera_window
    rng = np.random.default_rng(0)
    corners = rng.uniform([x, y], [x + w, y + h], (50, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    np.testing.assert_allclose(m.boxes_to_camera(m.boxes_to_model(boxes)), boxes, atol=1e-3)
    vx, vy, vw, vh = m.valid_region
    assert vx >= 0 and vy >= 0 and vx + vw <= 512 and vy + vh <= 256
    assert (vw == 512 or vh == 256) and (mode != "crop" or (vw, vh) == (512, 256))
    if mode != "stretch":  # one scale for both axes, up to the rounding of the integer rectangle
        assert abs(m.scale[0] - m.scale[1]) <= 1.0 / min(w, h)


def test_unknown_mode_is_one_line():
    with pytest.raises(ValueError, match=r"^resize must be one of stretch, letterbox, crop, got 'fit'$"):
        FrameMapping((10, 10), (4, 4), "fit")


# ------------------------------------------------------------------------------------ dense maps
def test_dense_maps_letterbox_exact_factor():
    """Camera 128x64 into 32x32: scale 0.25, image rows 8..24 of the model, padding above and below."""
    m = FrameMapping((128, 64), (32, 32), "letterbox")
    assert m.valid_region == (0, 8, 32, 16)
    out = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    np.testing.assert_array_equal(m.dense_to_camera(out, np.nan), np.kron(out[8:24], np.ones((4, 4))))
    labels = np.random.default_rng(1).integers(0, 9, (64, 128)).astype(np.uint8)
    model = m.dense_to_model(labels, 255)
    assert (model[:8] == 255).all() and (model[24:] == 255).all()
    np.testing.assert_array_equal(model[8:24], labels[::4, ::4])
    masked = m.mask_padding(out, np.nan)
    assert np.isnan(masked[:8]).all() and np.isnan(masked[24:]).all()
    np.testing.assert_array_equal(masked[8:24], out[8:24])
    assert not np.isnan(out).any()  # a copy


def test_dense_maps_crop_exact_factor():
    """Camera 128x64 into 32x32: scale 0.5, the model sees camera columns 32..96."""
    m = FrameMapping((128, 64), (32, 32), "crop")
    assert m.camera_window == (32, 0, 64, 64)
    out = np.random.default_rng(2).integers(0, 9, (32, 32)).astype(np.uint8)
    camera = m.dense_to_camera(out, 255)
    assert camera.shape == (64, 128) and (camera[:, :32] == 255).all() and (camera[:, 96:] == 255).all()
    np.testing.assert_array_equal(camera[:, 32:96], np.kron(out, np.ones((2, 2), np.uint8)))
    depth = np.random.default_rng(3).uniform(1, 50, (64, 128)).astype(np.float32)
    np.testing.assert_array_equal(m.dense_to_model(depth, np.nan), depth[:, 32:96][::2, ::2])
    assert m.mask_padding(out, 255) is out  # nothing padded
    sr = m.scaled(2)
    assert sr.size == (64, 64) and sr.valid_region == (0, 0, 64, 64) and sr.scale == (1.0, 1.0)
    np.testing.assert_array_equal(sr.dense_to_model(depth, np.nan), depth[:, 32:96])


# ------------------------------------------------------------------------------- the model input
def test_model_input_letterbox_and_crop_arrays():
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    box = model_input(frame, "bgr8", (512, 256), "rgb", "letterbox")
    assert box.image.shape == (256, 512, 3) and box.mapping.mode == "letterbox"
    assert (box.image[:, :28] == PAD_VALUE).all() and (box.image[:, 483:] == PAD_VALUE).all()
    np.testing.assert_array_equal(box.image[:, 28:483], resize_image(frame, (455, 256))[..., ::-1])
    crop = model_input(frame, "rgb8", (512, 256), "rgb", "crop")
    np.testing.assert_array_equal(crop.image, resize_image(frame[40:680], (512, 256)))
    # 16-bit and mono frames: the padding is the same grey once converted
    mono16 = rng.integers(0, 65536, (720, 1280), dtype=np.uint16)
    image = model_input(mono16, "mono16", (512, 256), "bgr", "letterbox").image
    assert (image[:, :28] == PAD_VALUE).all()


class _Sample(SimpleNamespace):
    pass


def _photo_sample(width=1280, height=720):
    rng = np.random.default_rng(5)
    return _Sample(image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                   semantic=rng.integers(0, 9, (height, width)).astype(np.uint8),
                   depth=rng.uniform(1, 80, (height, width)).astype(np.float32),
                   boxes=np.array([[100, 10, 300, 30], [100, 300, 400, 500]], np.float32),
                   labels=np.array([1, 2]))


@pytest.mark.parametrize("mode", list(RESIZE_MODES))
def test_training_sample_is_the_node_input_for_the_same_photo(mode):
    """resize_sample's network input == model_input of the same photo (rgb8 from a dataset,
    bgr8 from a camera driver), and the SR target is the same geometry at twice the size."""
    sample = _photo_sample()
    out = resize_sample(sample, (512, 256), 2, resize=mode)
    node = model_input(sample.image, "rgb8", (512, 256), "rgb", mode)
    np.testing.assert_array_equal(out["image"], node.image)
    np.testing.assert_array_equal(out["image"], model_input(sample.image[..., ::-1].copy(), "bgr8", (512, 256),
                                                            "rgb", mode).image)
    sr = node.mapping.scaled(2)
    x, y, w, h = sr.valid_region
    assert out["hr_image"].shape == (512, 1024, 3) and (x, y, w, h) == tuple(2 * v for v in node.mapping.valid_region)
    cx, cy, cw, ch = node.mapping.camera_window
    np.testing.assert_array_equal(out["hr_image"][y:y + h, x:x + w], resize_image(sample.image[cy:cy + ch, cx:cx + cw],
                                                                                  (w, h)))
    np.testing.assert_array_equal(out["semantic"], node.mapping.dense_to_model(sample.semantic, 255))
    np.testing.assert_array_equal(out["boxes"], node.mapping.boxes_to_model(sample.boxes)[out["labels"] - 1])
    if mode == "letterbox":
        assert (out["hr_image"][:, :56] == PAD_VALUE).all() and (out["semantic"][:, :28] == 255).all()
        assert np.isnan(out["depth"][:, :28]).all() and not np.isnan(out["depth"][:, 28:483]).any()
    if mode == "crop":  # the first box lies above camera row 40: outside the crop, dropped
        assert out["labels"].tolist() == [2]
    else:
        assert out["labels"].tolist() == [1, 2]


def test_resize_sample_keeps_its_positional_call():
    sample = _photo_sample(128, 64)
    sample.boxes = np.array([[10, 4, 100, 60]], np.float32)
    sample.labels = np.array([1])
    out = resize_sample(sample, (64, 32), 2)
    np.testing.assert_array_equal(out["image"], resize_image(sample.image, (64, 32)))
    np.testing.assert_allclose(out["boxes"], sample.boxes / 2)


# --------------------------------------------------------------------------------- intrinsics
def test_intrinsics_follow_the_letterbox_offset():
    info = SimpleNamespace(width=1280, height=720, k=[600.0, 0, 640.0, 0, 600.0, 360.0, 0, 0, 1],
                           p=[600.0, 0, 640.0, 0, 0, 600.0, 360.0, 0, 0, 0, 1, 0],
                           roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))
    m = FrameMapping((1280, 720), (512, 256), "letterbox")
    (sx, sy), (ox, oy) = m.scale, m.offset
    out = scale_camera_info(info, sx, sy, width=512, height=256, offset_x=ox, offset_y=oy)
    np.testing.assert_allclose(out.k, [600 * sx, 0, 640 * sx + 28, 0, 600 * sy, 360 * sy, 0, 0, 1])
    np.testing.assert_allclose(np.asarray(out.p)[[0, 2, 5, 6]], [600 * sx, 640 * sx + 28, 600 * sy, 360 * sy])
    # the principal point (camera centre) lands on the model input's centre
    assert out.k[2] == pytest.approx(455 / 2 + 28) and out.k[5] == pytest.approx(128)


def test_a_set_roi_follows_the_letterbox_and_a_crop_cuts_it():
    """A CameraInfo ROI moves with the image: shifted by the letterbox padding, clipped where a
    crop cuts the frame; an all-zero ROI (the full image) stays all zero."""
    def info(roi):
        return SimpleNamespace(width=1280, height=720, k=[600.0, 0, 640.0, 0, 600.0, 360.0, 0, 0, 1],
                               p=[600.0, 0, 640.0, 0, 0, 600.0, 360.0, 0, 0, 0, 1, 0],
                               roi=SimpleNamespace(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3]))

    def mapped(mode, roi):
        m = FrameMapping((1280, 720), (512, 256), mode)
        (sx, sy), (ox, oy) = m.scale, m.offset
        out = scale_camera_info(info(roi), sx, sy, width=512, height=256, offset_x=ox, offset_y=oy)
        return (out.roi.x_offset, out.roi.y_offset, out.roi.width, out.roi.height), (sx, sy, ox, oy)

    roi, (sx, sy, ox, oy) = mapped("letterbox", (0, 0, 1280, 720))  # the whole frame, set explicitly
    assert ox > 0 and oy == 0
    assert roi == (int(ox), 0, int(1280 * sx), int(720 * sy))  # the picture, not the padding
    roi, (sx, sy, ox, oy) = mapped("crop", (100, 10, 400, 200))  # the crop cuts the top of the frame
    assert ox == 0 and oy < 0
    assert roi[1] == 0 and roi[3] == int(200 * sy) + int(10 * sy + oy)  # what is left of it
    assert (roi[0], roi[2]) == (int(100 * sx), int(400 * sx))
    assert mapped("crop", (0, 0, 1280, 20))[0][3] == 0  # entirely cut away: empty
    assert mapped("letterbox", (0, 0, 0, 0))[0] == (0, 0, 0, 0)


# ------------------------------------------------------------------------------------- contract
def _metadata(**input_fields) -> ModelMetadata:
    return ModelMetadata(name="m", input=InputSpec(name="image", height=32, width=64, **input_fields),
                         tasks={"seg": TaskSpec("segmentation", {"class_map": "seg"}, class_names=("a", "b"))})


def test_metadata_without_resize_reads_as_stretch():
    doc = json.loads(_metadata().to_json())
    del doc["input"]["resize"], doc["input"]["dense_outputs"]  # a model exported before the field
    meta = ModelMetadata.from_json(json.dumps(doc))
    assert meta.input.resize == "stretch"
    written = _metadata(resize="letterbox", dense_outputs=RESIZE_MODES["letterbox"])
    letterbox = ModelMetadata.from_json(written.to_json())
    assert letterbox.input.resize == "letterbox" and "padded border is not image" in letterbox.input.dense_outputs


def test_metadata_with_an_unknown_resize_is_one_line():
    doc = json.loads(_metadata().to_json())
    doc["input"]["resize"] = "fit"
    with pytest.raises(ContractError) as info:
        ModelMetadata.from_json(json.dumps(doc))
    assert str(info.value) == ("metadata field input.resize is 'fit', not one of ('stretch', 'letterbox', 'crop')")


def test_a_model_file_from_before_the_field_loads_as_stretch(tmp_path):
    """An ONNX file whose metadata document has no input.resize (as exported before it existed)."""
    onnx = pytest.importorskip("onnx")
    from mtl_perception.contract import METADATA_KEY
    from mtl_perception.inference.loader import load_model
    from tests.runtime.model_factory import export_bright_box_model

    path = tmp_path / "old.onnx"
    export_bright_box_model(path, (64, 48), resize="letterbox")
    model = onnx.load(str(path))
    entry = next(e for e in model.metadata_props if e.key == METADATA_KEY)
    doc = json.loads(entry.value)
    assert doc["input"].pop("resize") == "letterbox"
    doc["input"].pop("dense_outputs")
    entry.value = json.dumps(doc)
    onnx.save(model, str(path))
    assert load_model(path).metadata.input.resize == "stretch"
