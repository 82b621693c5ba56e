"""The live node's extra topics in the kinds registry (depth/camera_info, points,
detections/image): listed and rendered only for the live node, at the sizes and in the pixels
the messages need (no ROS: the registry's payloads)."""
from __future__ import annotations

import numpy as np

from mtl_perception.contract import TaskSpec
from mtl_perception.inference.postprocess import draw_detections, select_detections
from mtl_perception.inference.preprocess import FrameMapping, model_input
from mtl_perception.kinds import registry
from mtl_perception.kinds.base import ImageOut, PointsOut, RenderSettings, ScaledCameraInfo

TASKS = {
    "depth": TaskSpec("depth", {}, min_depth=0.5, max_depth=8.0),
    "det": TaskSpec("detection", {}, class_names=("car", "person"), top_k=2),
}
LIVE = ("depth/camera_info", "points", "detections/image")


def outputs():
    depth = np.full((24, 32), 4.0, np.float32)
    depth[:, :4] = 20.0  # beyond max_depth: NaN
    return {"depth": {"depth": depth},
            "det": {"boxes": np.array([[[2.0, 3.0, 10.0, 12.0], [0.0, 0.0, 4.0, 4.0]]], np.float32),
                    "scores": np.array([[0.9, 0.1]], np.float32), "classes": np.array([[1, 0]], np.int32)}}


def test_live_only_topics_are_listed_only_for_the_live_node():
    default = [t.name for t in registry.topics_for(TASKS)]
    live = [t.name for t in registry.topics_for(TASKS, live=True)]
    assert default == ["depth", "detections"]  # bags, benchmark and demo: unchanged
    assert live == ["depth", "depth/camera_info", "points", "detections", "detections/image"]
    assert [t.name for t in registry.topics(recorded=True, live=True) if t.name in LIVE] == ["depth/camera_info"]
    camera = np.zeros((72, 128, 3), np.uint8)
    frame = model_input(camera, "rgb8", (32, 24), "rgb")
    assert not set(LIVE) & set(registry.render(TASKS, outputs(), frame, RenderSettings()))  # default wanted


def test_live_payloads_at_model_and_input_resolution():
    rng = np.random.default_rng(0)
    camera = rng.integers(0, 256, (72, 128, 3), dtype=np.uint8)
    frame = model_input(camera, "rgb8", (32, 24), "rgb")
    for resolution, size in (("model", (32, 24)), ("input", (128, 72))):
        settings = RenderSettings(output_resolution=resolution, score_threshold=0.5)
        out = registry.render(TASKS, outputs(), frame, settings, lambda topic: topic in LIVE)
        assert sorted(out) == sorted(LIVE)
        expected = frame.mapping if resolution == "model" else FrameMapping((128, 72), (128, 72))
        assert out["depth/camera_info"] == ScaledCameraInfo(expected) and out["depth/camera_info"].size == size
        points = out["points"]
        assert isinstance(points, PointsOut) and points.mapping == expected
        assert points.depth.shape == size[::-1] and points.rgb.shape == size[::-1] + (3,)
        expected_rgb = camera if resolution == "input" else frame.resized_color("rgb")
        np.testing.assert_array_equal(points.rgb, expected_rgb)
        assert np.isnan(points.depth[:, : size[0] // 8]).all() and (points.depth[:, size[0] // 4:] == 4.0).all()
        image = out["detections/image"]
        dets = select_detections(outputs()["det"]["boxes"], outputs()["det"]["scores"], outputs()["det"]["classes"],
                                 mapping=FrameMapping((128, 72), (32, 24)), threshold=0.5, max_detections=100)
        np.testing.assert_allclose(dets.boxes, [[8.0, 9.0, 40.0, 36.0]])  # x * 4, y * 3
        assert isinstance(image, ImageOut) and image.encoding == "bgr8"
        np.testing.assert_array_equal(image.array, draw_detections(camera[..., ::-1], dets, ("car", "person")))
