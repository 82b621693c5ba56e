"""Output helpers of the node against closed forms: detection selection and mapping, depth
validity, the segmentation overlay, and the messages they become."""
from __future__ import annotations

import numpy as np
import pytest

from mtl_perception.inference.postprocess import (
    PALETTE_BGR,
    overlay_segmentation,
    select_detections,
    valid_depth,
)
from mtl_perception.inference.preprocess import FrameMapping


def test_select_detections_thresholds_sorts_caps_and_maps_to_input_pixels():
    boxes = np.array([[10, 10, 20, 30], [0, 0, 64, 48], [5, 5, 6, 6], [30, 2, 40, 4]], np.float32)
    scores = np.array([0.5, 0.9, 0.2, np.nan], np.float32)
    classes = np.array([2, 0, 1, 1], np.int32)
    dets = select_detections(boxes, scores, classes, mapping=FrameMapping((640, 360), (64, 48)), threshold=0.3,
                             max_detections=5)
    np.testing.assert_allclose(dets.boxes, [[0, 0, 640, 360], [100, 75, 200, 225]])
    np.testing.assert_allclose(dets.scores, [0.9, 0.5], rtol=1e-6)
    assert dets.classes.tolist() == [0, 2]
    same = FrameMapping((64, 48), (64, 48))
    capped = select_detections(boxes, scores, classes, mapping=same, threshold=0.0, max_detections=1)
    assert capped.classes.tolist() == [0]
    clipped = select_detections(np.array([[-5, -5, 70, 50]], np.float32), np.array([1.0]), np.array([0]),
                                mapping=same, threshold=0.5, max_detections=10)
    np.testing.assert_allclose(clipped.boxes, [[0, 0, 64, 48]])


def test_valid_depth_is_nan_outside_the_open_closed_range():
    depth = np.array([[0.0, 0.5, 0.50001, 10.0], [80.0, 80.1, np.nan, np.inf]], np.float32)
    out = valid_depth(depth.copy(), 0.5, 80.0)
    expected = np.array([[np.nan, np.nan, 0.50001, 10.0], [80.0, np.nan, np.nan, np.nan]], np.float32)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out[~np.isnan(out)], expected[~np.isnan(expected)])
    assert out.dtype == np.float32


def test_overlay_blends_class_colours_and_keeps_unlabelled_pixels():
    image = np.full((4, 6, 3), 100, np.uint8)
    class_map = np.array([[0, 1, 255], [2, 2, 255]], np.uint8)  # half resolution: resized nearest
    out = overlay_segmentation(image, class_map, alpha=0.5)
    assert out.shape == image.shape
    expected_01 = np.round(0.5 * 100 + 0.5 * PALETTE_BGR[1].astype(float))
    np.testing.assert_allclose(out[0, 2], expected_01, atol=1)
    np.testing.assert_array_equal(out[0, 5], [100, 100, 100])  # 255: unlabelled, image kept
    np.testing.assert_array_equal(overlay_segmentation(image, class_map, alpha=0.0), image)
    assert len({tuple(c) for c in PALETTE_BGR[:20]}) == 20


def test_messages_carry_fields_with_humble_types():
    pytest.importorskip("rclpy")
    pytest.importorskip("vision_msgs.msg")
    from std_msgs.msg import Header

    from mtl_perception.inference.postprocess import Detections
    from mtl_perception.messages.outputs import detection_array, label_info

    header = Header(frame_id="cam")
    dets = Detections(np.array([[10.0, 20.0, 30.0, 60.0]]), np.array([0.75]), np.array([5]))
    msg = detection_array(header, dets, ["car", "person"])
    (det,) = msg.detections
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x, det.bbox.size_y) == (
        20.0, 40.0, 20.0, 40.0)
    assert det.results[0].hypothesis.class_id == "5"  # no name for class 5: its index
    assert det.results[0].hypothesis.score == 0.75 and det.header.frame_id == "cam"
    labels = label_info(header, ["road", "sky"], 0.25)
    assert [(c.class_id, c.class_name) for c in labels.class_map] == [(0, "road"), (1, "sky")]
    assert labels.threshold == pytest.approx(0.25)


def test_image_checks():
    pytest.importorskip("rclpy")
    pytest.importorskip("vision_msgs.msg")
    from sensor_msgs.msg import Image

    from mtl_perception.messages.image import ImageConversionError, array_to_image
    from mtl_perception.ros.node import check_image

    check_image(array_to_image(np.zeros((4, 4, 3), np.uint8), "bgr8"))
    for encoding in ("nv24", "32FC1"):
        with pytest.raises(ImageConversionError, match=encoding):
            check_image(Image(encoding=encoding, width=4, height=4, step=16))


def test_parameter_validation():
    from mtl_perception.ros.parameters import validate

    assert validate("score_threshold", 0.5) == ""
    assert "[0, 1]" in validate("score_threshold", 1.5)
    assert "model, input" in validate("output_resolution", "x")
    assert "best_effort" in validate("image_qos", "fast")
    assert "unknown execution provider" in validate("providers", ["cpu", "quantum"])
    assert "[1, 10000]" in validate("max_detections", 0)
    assert validate("use_sim_time", True) == ""  # not ours: ROS checks it


def test_node_command_line_is_built_from_the_parameter_table():
    """One place builds the node's -p arguments: typed values are formatted as ROS parses them,
    unknown names and invalid values are refused before any process starts."""
    from mtl_perception.ros.processes import node_command

    cmd = node_command("/ns", {"model_path": "/m.onnx", "providers": ["cuda", "cpu"], "score_threshold": 0,
                               "max_detections": 7, "fp16": True, "use_sim_time": "true",
                               "overlay_alpha": "0.25"}, remaps=[("image", "/cam")])
    assert cmd[1:] == ["-m", "mtl_perception.ros.node", "--ros-args", "-r", "__ns:=/ns", "-r", "image:=/cam",
                       "-p", "model_path:=/m.onnx", "-p", "providers:=[cuda,cpu]", "-p", "score_threshold:=0.0",
                       "-p", "max_detections:=7", "-p", "fp16:=true", "-p", "use_sim_time:=true",
                       "-p", "overlay_alpha:=0.25"]
    with pytest.raises(ValueError, match="unknown perception_node parameter 'score_treshold'"):
        node_command("/ns", {"score_treshold": 0.5})
    with pytest.raises(ValueError, match=r"max_detections: must be an integer in \[1, 10000\], got 0"):
        node_command("/ns", {"max_detections": 0})
