"""The per-kind registry of the runtime (mtl_perception/kinds): one module per contract kind,
each table derived from it, and a kind's rendering read back by its decoding (closed form)."""
from __future__ import annotations

import importlib
import pkgutil

import cv2
import numpy as np
import pytest

import mtl_perception.kinds
from mtl_perception.bags.io import OUTPUT_TOPICS
from mtl_perception.contract import TASK_KINDS, TaskSpec
from mtl_perception.inference.preprocess import FrameMapping, model_input, resize_image
from mtl_perception.kinds import registry
from mtl_perception.kinds.base import QOS_CLASSES, Kind, RenderSettings
from mtl_perception.messages import types
from mtl_perception.messages.image import to_color

TASKS = {
    "seg": TaskSpec("segmentation", {}, class_names=("road", "car", "sky"), ignore_index=255),
    "depth": TaskSpec("depth", {}, min_depth=0.5, max_depth=8.0),
    "det": TaskSpec("detection", {}, class_names=("car", "person"), top_k=4),
    "sr": TaskSpec("super_resolution", {}, scale=2),
}


def test_every_contract_kind_has_exactly_one_kinds_module():
    modules = [m.name for m in pkgutil.iter_modules(mtl_perception.kinds.__path__)
               if m.name not in ("base", "registry")]
    assert sorted(modules) == sorted(TASK_KINDS)
    for name in modules:
        module = importlib.import_module(f"mtl_perception.kinds.{name}")
        kinds = [v for v in vars(module).values() if isinstance(v, Kind)]
        assert kinds == [module.KIND] and module.KIND.name == name
    assert list(registry.KINDS) == list(TASK_KINDS)
    with pytest.raises(ValueError, match="unknown task kind 'optical_flow'"):
        registry.kind("optical_flow")


def test_topics_are_declared_once_with_known_types_and_qos():
    names = [t.name for t in registry.topics()]
    assert len(names) == len(set(names))
    known = {v for k, v in vars(types).items() if k.isupper()}
    for topic in registry.topics():
        assert topic.msgtype in known and topic.qos in QOS_CLASSES, topic
    # the node's interface, unchanged by the registry
    assert names == ["segmentation", "segmentation/color", "label_info", "depth", "detections",
                     "super_resolution", "super_resolution/camera_info"]
    assert OUTPUT_TOPICS == tuple(n for n in names if n != "label_info")
    assert [t.name for t in registry.topics(recorded=True)] == [
        "segmentation", "depth", "detections", "super_resolution", "super_resolution/camera_info"]
    assert [t.name for t in registry.topics_for({"d": TASKS["depth"], "s": TASKS["sr"]})] == [
        "depth", "super_resolution", "super_resolution/camera_info"]


@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "rgba8", "mono8", "bgr16", "mono16"])
def test_model_input_resizes_in_the_camera_encoding_then_converts(encoding):
    """Against the composition it replaces in the node: resize_image, then to_color."""
    rng = np.random.default_rng(0)
    channels = {"bgr8": 3, "rgb8": 3, "rgba8": 4, "mono8": 1, "bgr16": 3, "mono16": 1}[encoding]
    dtype = np.uint16 if "16" in encoding else np.uint8
    shape = (90, 160) if channels == 1 else (90, 160, channels)
    frame = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    for order in ("rgb", "bgr"):
        prepared = model_input(frame, encoding, (32, 24), order)
        np.testing.assert_array_equal(prepared.image, to_color(resize_image(frame, (32, 24)), encoding, order))
        assert prepared.mapping == FrameMapping((160, 90), (32, 24))
        assert prepared.mapping.scale == (0.2, 24 / 90)


def test_frame_mapping_round_trips_boxes_and_dense_maps():
    mapping = FrameMapping((640, 360), (64, 48))
    np.testing.assert_allclose(mapping.boxes_to_model(np.array([[100, 75, 200, 225]])), [[10, 10, 20, 30]])
    ids = np.arange(64 * 48, dtype=np.float32).reshape(48, 64)
    integer = FrameMapping((640, 480), (64, 48))  # nearest up and down by a whole factor: the identity
    np.testing.assert_array_equal(integer.dense_to_model(integer.dense_to_camera(ids)), ids)
    assert mapping.dense_to_camera(ids).shape == (360, 640)


def _outputs():
    class_map = np.zeros((24, 32), np.uint8)
    class_map[6:18, 8:24] = 1
    class_map[0, :] = 255
    depth = np.full((24, 32), 4.0, np.float32)
    depth[:, :4] = 9.0  # beyond max_depth: NaN once published
    boxes = np.array([[4, 2, 12, 10], [16, 8, 30, 20], [0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
    sr = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return {"seg": {"class_map": class_map}, "depth": {"depth": depth},
            "det": {"boxes": boxes, "scores": np.array([0.9, 0.6, 0.2, 0.1], np.float32),
                    "classes": np.array([0, 1, 1, 0], np.int32)},
            "sr": {"image": sr}}


def test_output_bag_messages_decode_back_to_the_outputs(tmp_path):
    """render -> rosbags messages in a bag (OutputBag) -> RecordedOutputs -> decode is the identity
    at the model's resolution (depth outside the range NaN, detections above the threshold)."""
    from mtl_perception.bags.evaluate import OutputBag, RecordedOutputs
    from mtl_perception.bags.io import make_header

    camera = np.random.default_rng(2).integers(0, 256, (72, 128, 3), dtype=np.uint8)
    frame = model_input(camera, "rgb8", (32, 24), "rgb")
    outputs = _outputs()
    settings = RenderSettings(output_resolution="input", score_threshold=0.5, max_detections=10)
    bag = OutputBag(str(tmp_path / "out"), "sqlite3", "/p", TASKS, settings)
    stamp = 1_700_000_000_123_000_000
    bag.write(make_header(stamp, "cam"), stamp, outputs, frame)
    bag.close()
    recorded = RecordedOutputs(tmp_path / "out", "/p")
    msgs = recorded.take(stamp)
    recorded.close()
    assert sorted(msgs) == ["depth", "detections", "segmentation", "segmentation/color", "super_resolution"]
    assert (msgs["segmentation"].width, msgs["segmentation"].height) == (128, 72)  # at the camera's size
    back = registry.decode(TASKS, msgs, frame.mapping, "rgb")
    np.testing.assert_array_equal(back["seg"]["class_map"], outputs["seg"]["class_map"])
    expected_depth = outputs["depth"]["depth"].copy()
    expected_depth[:, :4] = np.nan
    np.testing.assert_array_equal(back["depth"]["depth"], expected_depth)
    np.testing.assert_allclose(back["det"]["boxes"], outputs["det"]["boxes"][:2], atol=1e-4)
    np.testing.assert_allclose(back["det"]["scores"], [0.9, 0.6], rtol=1e-6)
    assert back["det"]["classes"].tolist() == [0, 1]
    np.testing.assert_array_equal(back["sr"]["image"], outputs["sr"]["image"])
    colour = to_color(msgs["segmentation/color"], order="bgr")
    unlabelled = cv2.resize(outputs["seg"]["class_map"], (128, 72), interpolation=cv2.INTER_NEAREST) == 255
    np.testing.assert_array_equal(colour[unlabelled], camera[..., ::-1][unlabelled])  # ignore_index: the image


def test_scoring_and_baselines_against_closed_forms():
    seg = {"seg": TASKS["seg"]}
    scoring = registry.Scoring(seg)
    label = np.array([[0, 0, 1, 1]], np.uint8)
    frame = scoring.add({"seg": {"class_map": np.array([[0, 1, 1, 1]], np.uint8)}}, {"semantic": label})
    # class 0: TP 1, FN 1 -> IoU 1/2; class 1: TP 2, FP 1 -> 2/3; class 2 absent: excluded
    assert frame["seg"].compute()["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    scoring.add({"seg": {"class_map": label}}, {})  # no label: not scored, not kept
    assert scoring.label_counts() == {"segmentation": 1, "depth": 0}
    base = scoring.baselines()["seg"]
    assert base["name"] == "majority class (road)"  # a tie 2:2 goes to the first class
    # all road: road TP 2, FP 2 -> IoU 1/2; car TP 0 -> 0
    assert base["miou"] == pytest.approx(0.25) and base["pixel_acc"] == pytest.approx(0.5)
    depth = registry.baselines({"depth": TASKS["depth"]}, {"depth": [np.array([[1.0, 2.0, 7.0, np.nan]])]})
    assert depth["depth"]["name"] == "constant median depth (2.0 m)"
    assert depth["depth"]["abs_rel"] == pytest.approx((1.0 + 0.0 + 5 / 7) / 3)
    assert registry.baselines({"det": TASKS["det"]}, {})["det"]["map50"] == 0.0
