"""Offline bag evaluation (`mtl-perception eval-bag`) against hand-computed metrics.

The model is `export_bright_box_model` (outputs known in closed form) and the bag is written by
`rosbags` (`write_bright_box_bag`): camera 128x96 = exactly twice the model's 64x48, so every
label maps to model pixels exactly and each metric can be worked out by hand below. A second
check runs eval-bag and `evaluate_dataset` on the same synthetic frames and expects the same
numbers (one scoring implementation, two input paths).
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from mtl_perception.bags.evaluate import EvalOptions, evaluate_bag
from mtl_perception.bags.io import BagError, detections_from_msg, open_bag
from mtl_perception.inference.loader import load_model
from tests.runtime.model_factory import (
    BRIGHT_BAG_DEPTH_ROWS,
    BRIGHT_BAG_GT_RECT,
    BRIGHT_BAG_IGNORED_ROWS,
    BRIGHT_BAG_RECT,
    export_bright_box_model,
    write_bright_box_bag,
)

MODEL_W, MODEL_H = 64, 48


# --------------------------------------------------------------------- hand-computed values
def expected_segmentation():
    gx1, gy1, gx2, gy2 = BRIGHT_BAG_GT_RECT
    x1, y1, x2, y2 = BRIGHT_BAG_RECT
    gt1 = (gx2 - gx1) * (gy2 - gy1)  # 25 x 20 = 500 pixels labelled "bright"
    pred1 = (x2 - x1) * (y2 - y1)  # 20 x 20 = 400 predicted "bright", all inside the label
    ignored = BRIGHT_BAG_IGNORED_ROWS * MODEL_W  # 256
    gt0 = MODEL_W * MODEL_H - gt1 - ignored  # 2316 labelled "background", all predicted background
    iou1 = pred1 / gt1  # TP 400, FN 100, FP 0
    iou0 = gt0 / (gt0 + (gt1 - pred1))  # TP 2316, FP 100 (the missed "bright" pixels)
    return {"miou": (iou0 + iou1) / 2, "pixel_acc": (pred1 + gt0) / (gt1 + gt0)}


def expected_depth(outside_prediction: float):
    """8 m labels inside the rectangle (predicted 255/32 m), 4 m labels in the bottom rows where the
    model predicts R/32 = 0 -> `outside_prediction` after the metric's clamping."""
    x1, y1, x2, y2 = BRIGHT_BAG_RECT
    n_in = (x2 - x1) * (y2 - y1)
    n_out = (BRIGHT_BAG_DEPTH_ROWS[1] - BRIGHT_BAG_DEPTH_ROWS[0]) * MODEL_W
    p_in, t_in, p_out, t_out = 255 / 32, 8.0, outside_prediction, 4.0
    n = n_in + n_out
    return {
        "abs_rel": (n_in * abs(p_in - t_in) / t_in + n_out * abs(p_out - t_out) / t_out) / n,
        "rmse": math.sqrt((n_in * (p_in - t_in) ** 2 + n_out * (p_out - t_out) ** 2) / n),
        "delta1": (n_in * (max(p_in / t_in, t_in / p_in) < 1.25)
                   + n_out * (max(p_out / t_out, t_out / p_out) < 1.25)) / n,
    }


# vehicle: the predicted box equals the label (AP 1 at every IoU); pedestrian: the fixed box has
# IoU exactly 0.5 with its label (AP 1 at IoU 0.50, 0 at 0.55..0.95); traffic_sign: no labels.
EXPECTED_DETECTION = {"map50": 1.0, "map50_95": (1.0 + 0.1) / 2}


@pytest.fixture(scope="module")
def bright_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "bright.onnx"
    export_bright_box_model(path, (MODEL_W, MODEL_H))
    return load_model(path)


def run(bag, out, model, **kw):
    return evaluate_bag(bag, out, model, EvalOptions(**kw))


def without_volatile(report):
    report = json.loads(json.dumps(report))
    report.pop("latency_ms", None)
    report["bag"].pop("path")
    report["bag"].pop("storage")
    report.pop("output_bag", None)
    return report


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_metrics_match_hand_computed_values(tmp_path, bright_model, storage):
    bag = tmp_path / "bag"
    write_bright_box_bag(bag, storage, frames=20, bad={5: "encoding", 11: "short"})
    report = run(bag, tmp_path / "report", bright_model, samples=2)

    frames = report["frames"]
    assert frames["considered"] == 20 and frames["evaluated"] == 18 and frames["skipped"] == 2
    assert frames["skipped_by_reason"] == {"unsupported_encoding": 1, "wrong_data_size": 1}
    assert [e["frame"] for e in frames["skipped_examples"]] == [5, 11]
    assert "nv24" in frames["skipped_examples"][0]["detail"]
    # the "bicycle" label of every scored frame is not a model class: counted, not scored
    assert frames["ground_truth_skipped"] == 0
    assert frames["ground_truth_boxes_of_unknown_classes"] == {"bicycle": 18}

    seg, depth, det, sr = (report["tasks"][k] for k in ("segmentation", "depth", "detection", "super_resolution"))
    for key, value in expected_segmentation().items():
        assert seg[key] == pytest.approx(value, rel=1e-12)
    assert seg["iou_per_class"]["bright"] == pytest.approx(0.8)
    for key, value in expected_depth(outside_prediction=0.5).items():  # 0 clamped to min_depth
        assert depth[key] == pytest.approx(value, rel=1e-9)
    for key, value in EXPECTED_DETECTION.items():
        assert det[key] == pytest.approx(value, abs=1e-9)
    assert det["ap50_per_class"]["traffic_sign"] is None  # NaN (no labels) written as null
    assert sr["psnr"] == 100.0  # pixel repetition of the area-downscaled frame rebuilds it exactly

    gt = report["bag"]["ground_truth"]
    assert {k: v["frames_scored"] for k, v in gt.items()} == {"segmentation": 18, "depth": 18, "detections": 18}
    assert report["bag"]["image_topic"] == "/camera/image_raw"
    assert report["bag"]["camera_info_topic"] == "/camera/camera_info"
    assert report["latency_ms"]["model"]["n"] == 18 and report["latency_ms"]["model"]["p50"] > 0

    out = tmp_path / "report"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["tasks"]["segmentation"]["miou"] == seg["miou"]
    rows = (out / "frames.csv").read_text().strip().splitlines()
    assert len(rows) == 21 and ",unsupported_encoding" in rows[6] and ",wrong_data_size" in rows[12]
    summary = (out / "summary.md").read_text()
    assert "unsupported_encoding" in summary and "latency.png" in summary and "samples/frame_" in summary
    for png in ["latency.png", "metrics_over_time.png"] + on_disk["files"]["samples"]:
        image = cv2.imread(str(out / png))
        assert image is not None and image.shape[0] > 100, png


def test_same_bag_same_metrics_and_both_storages_agree(tmp_path, bright_model):
    reports = []
    for storage in ("sqlite3", "mcap"):
        write_bright_box_bag(tmp_path / storage, storage, frames=6, bad={2: "short"})
        reports.append(run(tmp_path / storage, tmp_path / f"r_{storage}", bright_model, samples=0))
    again = run(tmp_path / "sqlite3", tmp_path / "r_again", bright_model, samples=0)
    assert without_volatile(again) == without_volatile(reports[0])
    assert without_volatile(reports[0]) == without_volatile(reports[1])
    first = json.loads((tmp_path / "r_sqlite3" / "metrics.json").read_text())
    second = json.loads((tmp_path / "r_again" / "metrics.json").read_text())
    first.pop("latency_ms"), second.pop("latency_ms")
    assert first == second  # byte-level determinism of the JSON document, latency aside


def test_output_bag_mirrors_the_node_and_can_be_rescored(tmp_path, bright_model):
    bag = tmp_path / "bag"
    stamps = write_bright_box_bag(bag, "mcap", frames=5)
    offline = run(bag, tmp_path / "offline", bright_model, samples=0, output_bag=str(tmp_path / "outputs"))
    assert offline["output_bag"]["storage"] == "mcap"  # same storage as the input by default

    with open_bag(tmp_path / "outputs") as reader:
        topics = {name: info.count for name, info in reader.topics.items()}
        assert topics == {f"/perception/{t}": 5 for t in ("segmentation", "segmentation/color", "depth", "detections",
                                                            "super_resolution", "super_resolution/camera_info")}
        seen = []
        for topic, msgtype, log_ns, raw in reader.messages(["/perception/segmentation", "/perception/detections",
                                                            "/perception/super_resolution/camera_info"]):
            msg = reader.deserialize(raw, msgtype)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert stamp == log_ns and msg.header.frame_id == "camera_optical_frame"
            seen.append(stamp)
            if topic.endswith("segmentation"):
                ids = np.frombuffer(msg.data, np.uint8).reshape(MODEL_H, MODEL_W)
                x1, y1, x2, y2 = BRIGHT_BAG_RECT
                assert (ids == 1).sum() == (x2 - x1) * (y2 - y1) and ids[y1:y2, x1:x2].all()
            elif topic.endswith("detections"):  # camera pixels, class names, threshold 0.3
                boxes, scores, labels, unknown = detections_from_msg(msg, ["vehicle", "pedestrian", "traffic_sign"])
                np.testing.assert_allclose(boxes, [[40, 20, 80, 60], [0, 0, 16, 16]])
                np.testing.assert_allclose(scores, [0.9, 0.4], rtol=1e-6)
                assert labels.tolist() == [0, 1] and unknown == []
            else:  # CameraInfo scaled from the 128x96 camera to the 128x96 SR image: unchanged
                assert (msg.width, msg.height) == (128, 96) and msg.k[0] == pytest.approx(100.0)
        assert sorted(set(seen)) == stamps

    # The same scoring reads recorded outputs: segmentation and detections match the offline
    # numbers; depth differs exactly as documented (the node writes NaN where the model's depth
    # is outside (min, max], and NaN is scored as max_depth).
    meta = bright_model.metadata
    recorded = evaluate_bag(bag, tmp_path / "recorded", metadata=meta, predictions=tmp_path / "outputs",
                            options=EvalOptions(samples=0))
    assert recorded["mode"] == "recorded" and recorded["frames"]["evaluated"] == 5
    assert recorded["tasks"]["segmentation"] == offline["tasks"]["segmentation"]
    assert recorded["tasks"]["detection"]["map50"] == offline["tasks"]["detection"]["map50"]
    for key, value in expected_depth(outside_prediction=8.0).items():
        assert recorded["tasks"]["depth"][key] == pytest.approx(value, rel=1e-6)


def test_eval_bag_equals_evaluate_on_the_same_frames(tmp_path, exported_models):
    """A dataset at exactly twice the model size, evaluated directly and through a bag."""
    from mtl_perception.bags.make import make_bag
    from mtl_perception.data.dataset import MultiTaskDataset
    from mtl_perception.data.synthetic import Camera, generate_dataset
    from mtl_perception.evaluation.evaluate import evaluate_dataset
    from mtl_perception.kinds.registry import Scoring

    exported_models.export_synthetic_world_model(tmp_path / "m.onnx", input_size=(64, 32))
    model = load_model(tmp_path / "m.onnx")
    generate_dataset(tmp_path / "ds", 5, seed=11, camera=Camera.default(128, 64), workers=1, progress=False)
    direct = evaluate_dataset(model, MultiTaskDataset(tmp_path / "ds"), Scoring.of(model.metadata), progress=False)
    make_bag(tmp_path / "bag", str(tmp_path / "ds"), storage="mcap")
    via_bag = run(tmp_path / "bag", tmp_path / "report", model, samples=1)
    assert via_bag["frames"]["evaluated"] == direct["frames"] == 5
    for task, values in direct["tasks"].items():
        for key, value in values.items():
            got = via_bag["tasks"][task][key]
            assert (got is None and math.isnan(value)) or got == pytest.approx(value, rel=1e-6, abs=1e-9), (task, key)
    assert via_bag["baselines"]["segmentation"]["miou"] == pytest.approx(direct["baselines"]["segmentation"]["miou"])


def test_compressed_camera_and_missing_labels(tmp_path, bright_model):
    from mtl_perception.bags.make import make_bag

    make_bag(tmp_path / "bag", frames=3, width=128, height=96, storage="sqlite3", compressed="jpeg")
    report = run(tmp_path / "bag", tmp_path / "report", bright_model, samples=1, gt_topics={
        "segmentation": "/ground_truth/segmentation", "depth": "", "detections": "/nothing/here"})
    assert report["bag"]["image_type"] == "sensor_msgs/msg/CompressedImage"
    assert report["frames"]["evaluated"] == 3
    assert report["bag"]["ground_truth_missing"] == ["detections"]
    # the synthetic labels have 10 classes, the bright-box model 2: unusable, counted, not fatal
    assert report["frames"]["ground_truth_skipped_by_reason"] == {"segmentation": 3}
    assert report["tasks"]["segmentation"]["miou"] is None
    assert report["tasks"]["super_resolution"]["psnr"] > 10


@pytest.mark.parametrize("encoding", ["bayer_grbg8", "yuyv", "nv12"])
def test_raw_sensor_encodings_are_evaluated_like_colour_frames(tmp_path, bright_model, encoding):
    """A bag whose camera sends a Bayer mosaic, 4:2:2 or 4:2:0 YUV (make-bag --encoding): every frame is
    converted and evaluated, and super-resolution scores within 5 dB of the same frames in bgr8."""
    from mtl_perception.bags.make import make_bag

    reports = {}
    for enc in ("bgr8", encoding):
        make_bag(tmp_path / enc, frames=3, width=128, height=96, storage="sqlite3", encoding=enc)
        reports[enc] = run(tmp_path / enc, tmp_path / f"report_{enc}", bright_model, samples=0)
    assert reports[encoding]["frames"]["evaluated"] == 3
    psnr = {enc: r["tasks"]["super_resolution"]["psnr"] for enc, r in reports.items()}
    assert psnr[encoding] > 20 and abs(psnr[encoding] - psnr["bgr8"]) < 5, psnr  # demosaicing smooths: higher


def test_bag_with_only_bad_frames_is_one_clear_error(tmp_path, bright_model):
    bag = tmp_path / "bag"
    write_bright_box_bag(bag, "sqlite3", frames=3, bad={0: "encoding", 1: "encoding", 2: "encoding"})
    with pytest.raises(BagError) as info:
        run(bag, tmp_path / "report", bright_model)
    message = str(info.value)
    assert "\n" not in message and str(bag) in message and "unsupported_encoding x3" in message
    assert "nv24" in message


def test_cli_eval_bag(tmp_path, capsys):
    from mtl_perception.cli import main

    model = tmp_path / "bright.onnx"
    export_bright_box_model(model, (MODEL_W, MODEL_H))
    write_bright_box_bag(tmp_path / "bag", "mcap", frames=4)
    code = main(["eval-bag", str(tmp_path / "bag"), "--model", str(model), "--out", str(tmp_path / "r"),
                 "--no-progress", "--samples", "1", "--output-bag", str(tmp_path / "o"), "--output-storage", "sqlite3"])
    out = capsys.readouterr().out
    assert code == 0 and "4 of 4 frames" in out and "segmentation: miou=" in out
    assert (tmp_path / "o" / "metadata.yaml").is_file() and list((tmp_path / "o").glob("*.db3"))

    for argv, needle in (
        (["eval-bag", str(tmp_path / "missing"), "--model", str(model)], "no such bag"),
        (["eval-bag", str(tmp_path / "bag"), "--model", str(model), "--image-topic", "/ground_truth/detections",
          "--out", str(tmp_path / "r2")], "not sensor_msgs/Image"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mtl-perception: error:") and "\n" not in err and needle in err, err


def test_make_bag_and_eval_bag_need_neither_torch_nor_rclpy(tmp_path):
    """What a vehicle or a laptop without ROS runs: both commands with torch and rclpy blocked."""
    import subprocess
    import sys
    import textwrap

    model = tmp_path / "bright.onnx"
    export_bright_box_model(model, (MODEL_W, MODEL_H))
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('torch', 'training', 'rclpy', 'sensor_msgs', 'vision_msgs'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        from mtl_perception.cli import main
        assert main(["make-bag", {str(tmp_path / 'bag')!r}, "--frames", "2", "--width", "128", "--height", "96",
                     "--storage", "mcap"]) == 0
        assert main(["eval-bag", {str(tmp_path / 'bag')!r}, "--model", {str(model)!r}, "--out",
                     {str(tmp_path / 'report')!r}, "--no-progress", "--samples", "1",
                     "--output-bag", {str(tmp_path / 'out')!r}]) == 0
        assert not any(m.split('.')[0] in ('torch', 'rclpy') for m in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report" / "metrics.json").is_file() and (tmp_path / "out" / "metadata.yaml").is_file()


def test_letterbox_model_scores_the_same_labels_and_publishes_camera_pixels(tmp_path):
    """A 64x64 letterbox model on the 128x96 camera: scale 1/2, image rows 8..56 of the model.
    The padding is ignored by every metric (labels: 255 / NaN there), so segmentation and depth
    score as the 64x48 stretch model does; the pedestrian label moves down 8 rows, away from the
    fixed box (AP 0); boxes come back in camera pixels, the fixed box clipped to the image."""
    path = tmp_path / "letterbox.onnx"
    export_bright_box_model(path, (64, 64), resize="letterbox")
    model = load_model(path)
    bag = tmp_path / "bag"
    write_bright_box_bag(bag, "mcap", frames=3)
    report = run(bag, tmp_path / "report", model, samples=0, output_bag=str(tmp_path / "outputs"))
    assert report["model"]["resize"] == "letterbox" and report["frames"]["evaluated"] == 3
    seg, depth, det, sr = (report["tasks"][k] for k in ("segmentation", "depth", "detection", "super_resolution"))
    for key, value in expected_segmentation().items():
        assert seg[key] == pytest.approx(value, rel=1e-12)
    for key, value in expected_depth(outside_prediction=0.5).items():
        assert depth[key] == pytest.approx(value, rel=1e-9)
    assert det["map50"] == pytest.approx(0.5) and det["map50_95"] == pytest.approx(0.5)
    assert sr["psnr"] == 100.0  # the SR target is letterboxed the same way at twice the size
    with open_bag(tmp_path / "outputs") as reader:
        for topic, msgtype, _, raw in reader.messages(["/perception/detections", "/perception/segmentation"]):
            msg = reader.deserialize(raw, msgtype)
            if topic.endswith("detections"):
                boxes, _, labels, _ = detections_from_msg(msg, ["vehicle", "pedestrian", "traffic_sign"])
                np.testing.assert_allclose(boxes, [[40, 20, 80, 60], [0, 0, 16, 0]])
                assert labels.tolist() == [0, 1]
            else:  # at the model's size; the padded rows carry the ignore id
                ids = np.frombuffer(msg.data, np.uint8).reshape(64, 64)
                assert (ids[:8] == 255).all() and (ids[56:] == 255).all() and (ids[8:56] != 255).all()
