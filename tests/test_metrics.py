"""Metrics against hand-computed values and, for mAP, against a second COCO implementation."""
import math

import cv2
import numpy as np
import pytest

from mtl_perception.evaluation.metrics import (
    METRIC_DIRECTIONS,
    DepthMetric,
    DetectionMetric,
    SegmentationMetric,
    SuperResolutionMetric,
    delta_m,
)

# ----------------------------------------------------------------------------- segmentation

# 4x4, 3 classes, bottom-right 2x2 ignored (their predictions must not count).
SEG_TARGET = np.array([
    [0, 0, 1, 1],
    [0, 0, 1, 1],
    [2, 2, 255, 255],
    [2, 2, 255, 255],
], dtype=np.uint8)
SEG_PRED = np.array([
    [0, 1, 1, 1],
    [0, 0, 1, 2],
    [2, 0, 0, 1],
    [2, 1, 2, 2],
], dtype=np.uint8)
# By hand (rows = true class, columns = predicted class), 12 valid pixels:
#   true 0: pred 0,1,0,0 -> [3, 1, 0]
#   true 1: pred 1,1,1,2 -> [0, 3, 1]
#   true 2: pred 2,0,2,1 -> [1, 1, 2]
SEG_CONFUSION = np.array([[3, 1, 0], [0, 3, 1], [1, 1, 2]])
# IoU = TP / (row + column - TP): 3/(4+4-3)=0.6, 3/(4+5-3)=0.5, 2/(4+3-2)=0.4
SEG_IOU = [0.6, 0.5, 0.4]


def test_segmentation_hand_computed():
    metric = SegmentationMetric(3, class_names=["road", "car", "sky"])
    metric.update(SEG_PRED, SEG_TARGET)
    np.testing.assert_array_equal(metric.confusion[:, :3], SEG_CONFUSION)
    assert metric.confusion[:, 3].sum() == 0
    result = metric.compute()
    assert result["iou_per_class"] == pytest.approx({"road": 0.6, "car": 0.5, "sky": 0.4})
    assert result["miou"] == pytest.approx(0.5)
    assert result["pixel_acc"] == pytest.approx(8 / 12)
    assert metric.compute() == result  # compute is repeatable


def test_segmentation_class_absent_from_both_is_excluded():
    metric = SegmentationMetric(4)  # class 3 never appears in target nor prediction
    metric.update(SEG_PRED, SEG_TARGET)
    result = metric.compute()
    assert math.isnan(result["iou_per_class"]["3"])
    assert result["miou"] == pytest.approx(0.5)


def test_segmentation_out_of_range_prediction_is_wrong_and_false_positive_counts():
    target = np.zeros((3, 3), dtype=np.uint8)
    pred = np.array([[0, 0, 0], [0, 0, 0], [9, 200, 1]], dtype=np.uint8)
    metric = SegmentationMetric(2)
    metric.update(pred, target)
    result = metric.compute()
    # class 0: TP 6, GT 9, predicted 6 -> 6/9; class 1: TP 0, union 1 (one FP) -> 0
    assert result["iou_per_class"] == pytest.approx({"0": 6 / 9, "1": 0.0})
    assert result["miou"] == pytest.approx((6 / 9 + 0) / 2)
    assert result["pixel_acc"] == pytest.approx(6 / 9)


def test_segmentation_ignore_only_and_bad_target():
    metric = SegmentationMetric(2)
    metric.update(np.zeros((2, 2)), np.full((2, 2), 255))
    result = metric.compute()
    assert math.isnan(result["miou"]) and math.isnan(result["pixel_acc"])
    with pytest.raises(ValueError):
        metric.update(np.zeros((2, 2)), np.full((2, 2), 7))
    with pytest.raises(ValueError):
        metric.update(np.zeros((2, 3)), np.zeros((2, 2)))


def test_segmentation_merge_and_batch_equal_one_shot():
    top, bottom = SegmentationMetric(3), SegmentationMetric(3)
    top.update(SEG_PRED[:2], SEG_TARGET[:2])
    bottom.update(SEG_PRED[2:], SEG_TARGET[2:])
    top.merge(bottom)
    np.testing.assert_array_equal(top.confusion[:, :3], SEG_CONFUSION)

    batch = SegmentationMetric(3)
    batch.update(np.stack([SEG_PRED, SEG_PRED]), np.stack([SEG_TARGET, SEG_TARGET]))
    np.testing.assert_array_equal(batch.confusion[:, :3], 2 * SEG_CONFUSION)
    assert batch.compute()["miou"] == pytest.approx(0.5)

    batch.reset()
    assert batch.confusion.sum() == 0
    with pytest.raises(ValueError):
        batch.merge(SegmentationMetric(4))


# ----------------------------------------------------------------------------- depth


def test_depth_hand_computed():
    target = np.array([[1.0, 2.0], [4.0, 8.0]])
    pred = np.array([[1.5, 2.0], [3.0, 8.0]])
    metric = DepthMetric()
    metric.update(pred, target)
    result = metric.compute()
    # |d|/t = 0.5, 0, 0.25, 0 ; d^2 = 0.25, 0, 1, 0 ; ratios 1.5, 1, 4/3, 1
    assert result["abs_rel"] == pytest.approx(0.75 / 4)
    assert result["sq_rel"] == pytest.approx((0.25 / 1 + 1 / 4) / 4)
    assert result["rmse"] == pytest.approx(math.sqrt(1.25 / 4))
    assert result["rmse_log"] == pytest.approx(math.sqrt((math.log(1.5) ** 2 + math.log(0.75) ** 2) / 4))
    assert result["delta1"] == pytest.approx(0.5)  # 1.5 and 1.333 are not < 1.25
    assert result["delta2"] == pytest.approx(1.0)  # both < 1.5625
    assert result["delta3"] == pytest.approx(1.0)


def test_depth_invalid_targets_ignored_and_predictions_clamped():
    metric = DepthMetric(max_depth=80.0)
    # only (0, 0) is valid: NaN, 0 and beyond max_depth are not
    metric.update(np.array([[2.0, 5.0], [5.0, 5.0]]), np.array([[1.0, np.nan], [0.0, 100.0]]))
    result = metric.compute()
    assert result["abs_rel"] == pytest.approx(1.0)
    assert result["rmse"] == pytest.approx(1.0)
    assert result["delta1"] == 0.0

    metric = DepthMetric(min_depth=1e-3, max_depth=80.0)
    # pred 200 -> 80 (exact for target 80); pred 0 -> 1e-3; pred NaN -> 80
    metric.update(np.array([200.0, 0.0, np.nan, 10.0]).reshape(2, 2), np.array([80.0, 1.0, 40.0, 10.0]).reshape(2, 2))
    assert metric.compute()["abs_rel"] == pytest.approx((0 + (1 - 1e-3) / 1 + 40 / 40 + 0) / 4)


def test_depth_per_image_average_and_empty_image_skipped():
    metric = DepthMetric()
    # image A: one valid pixel, abs_rel 1.0; image B: three valid pixels, all exact
    metric.update(np.array([[2.0, 9.0]]), np.array([[1.0, np.nan]]))
    metric.update(np.array([[3.0, 4.0, 5.0]]), np.array([[3.0, 4.0, 5.0]]))
    metric.update(np.ones((2, 2)), np.zeros((2, 2)))  # no valid pixel: skipped
    assert metric.num_images == 2
    # per image then over images: (1 + 0) / 2, not pooled pixels 1 / 4
    assert metric.compute()["abs_rel"] == pytest.approx(0.5)


def test_depth_merge_batch_and_empty():
    assert math.isnan(DepthMetric().compute()["rmse"])
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 50, size=(3, 5, 6))
    pred = target * rng.uniform(0.8, 1.3, size=target.shape)
    one_shot, first, second = DepthMetric(), DepthMetric(), DepthMetric()
    one_shot.update(pred, target)
    first.update(pred[:1], target[:1])
    second.update(pred[1:], target[1:])
    first.merge(second)
    assert first.compute() == pytest.approx(one_shot.compute())


# ----------------------------------------------------------------------------- detection

GT_BOX = [0.0, 0.0, 10.0, 10.0]


def test_detection_perfect_predictions():
    metric = DetectionMetric(["car", "person"])
    metric.update([[0, 0, 10, 10], [20, 20, 40, 50]], [0.9, 0.8], [0, 1],
                  [[0, 0, 10, 10], [20, 20, 40, 50]], [0, 1])
    metric.update([[5, 5, 30, 30]], [0.7], [1], [[5, 5, 30, 30]], [1])
    result = metric.compute()
    assert result["map50"] == pytest.approx(1.0)
    assert result["map50_95"] == pytest.approx(1.0)
    assert result["ap50_per_class"] == pytest.approx({"car": 1.0, "person": 1.0})


def test_detection_fp_ranked_above_tp():
    # one GT; an FP (score 0.9) ranked above a TP at IoU 0.6 ([0,0,10,6] vs [0,0,10,10]: 60/100).
    # PR points: (recall 0, precision 0), (recall 1, precision 1/2); interpolated precision is
    # 1/2 at every one of the 101 recall thresholds -> AP50 = 0.5.
    metric = DetectionMetric(["car"])
    metric.update([[50, 50, 60, 60], [0, 0, 10, 6]], [0.9, 0.8], [0, 0], [GT_BOX], [0])
    assert metric.compute()["map50"] == pytest.approx(0.5)


def test_detection_two_gt_interpolated_pr_curve():
    # two GTs; ranked TP, FP, TP -> (r, p) = (1/2, 1), (1/2, 1/2), (1, 2/3).
    # Interpolated: recall thresholds 0.00..0.50 (51 points) -> 1, 0.51..1.00 (50 points) -> 2/3.
    metric = DetectionMetric(["car"])
    metric.update([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], [0.9, 0.8, 0.7], [0, 0, 0],
                  [[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0])
    assert metric.compute()["map50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_detection_iou_04_misses_and_map50_95_by_hand():
    miss = DetectionMetric(["car"])
    miss.update([[0, 0, 10, 4]], [0.9], [0], [GT_BOX], [0])  # IoU 0.4
    assert miss.compute()["map50"] == 0.0
    # IoU 0.73: matched at thresholds 0.50..0.70 (5 of 10) -> map50_95 = 0.5
    partial = DetectionMetric(["car"])
    partial.update([[0, 0, 10, 7.3]], [0.9], [0], [GT_BOX], [0])
    result = partial.compute()
    assert result["map50"] == pytest.approx(1.0)
    assert result["map50_95"] == pytest.approx(0.5)


def test_detection_two_classes_and_class_without_gt():
    metric = DetectionMetric(["car", "person", "bike"])
    metric.update([[0, 0, 10, 10]], [0.9], [0], [GT_BOX], [0])  # car: AP 1
    metric.update([[50, 50, 60, 60], [0, 0, 10, 6], [70, 70, 80, 80]], [0.9, 0.8, 0.95], [1, 1, 2],
                  [GT_BOX], [1])  # person: AP 0.5 ; bike: detections only, no GT
    result = metric.compute()
    assert result["ap50_per_class"]["car"] == pytest.approx(1.0)
    assert result["ap50_per_class"]["person"] == pytest.approx(0.5)
    assert math.isnan(result["ap50_per_class"]["bike"])
    assert result["map50"] == pytest.approx(0.75)


def test_detection_empty_predictions_and_no_gt():
    metric = DetectionMetric(["car"])
    metric.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0), [GT_BOX], [0])
    assert metric.compute()["map50"] == 0.0
    nothing = DetectionMetric(["car"])
    assert math.isnan(nothing.compute()["map50"])
    nothing.update([[0, 0, 5, 5]], [0.5], [0], np.zeros((0, 4)), [])
    result = nothing.compute()
    assert math.isnan(result["map50"]) and math.isnan(result["map50_95"])
    assert math.isnan(result["ap50_per_class"]["car"])


def test_detection_prints_nothing(capsys):
    metric = DetectionMetric(["car"])
    metric.update([[0, 0, 10, 10]], [0.9], [0], [GT_BOX], [0])
    metric.compute()
    assert capsys.readouterr().out == ""


def test_detection_image_ids_and_merge():
    first, second = DetectionMetric(["car"]), DetectionMetric(["car"])
    first.update([[0, 0, 10, 10]], [0.9], [0], [GT_BOX], [0], image_id=3)
    with pytest.raises(ValueError):
        first.update([[0, 0, 10, 10]], [0.9], [0], [GT_BOX], [0], image_id=3)
    second.update([[50, 50, 60, 60], [0, 0, 10, 6]], [0.85, 0.8], [0, 0], [GT_BOX], [0], image_id=4)
    first.merge(second)
    # merged: GTs 2; ranked 0.9 TP, 0.85 FP, 0.8 TP -> same PR shape as the two-GT case
    assert first.compute()["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    clash = DetectionMetric(["car"])
    clash.update([], [], [], [GT_BOX], [0], image_id=4)
    with pytest.raises(ValueError):
        first.merge(clash)
    with pytest.raises(ValueError):
        first.update([[0, 0, 1, 1]], [0.5], [5], [], [])


def _random_detection_set(seed: int, num_images: int = 30, num_classes: int = 3):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num_images):
        n_gt = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, size=(n_gt, 2))
        wh = rng.uniform(5, 80, size=(n_gt, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        gt_labels = rng.integers(0, num_classes, size=n_gt)
        # jittered copies of some GTs (some labelled wrong) plus random false positives
        keep = rng.random(n_gt) < 0.8
        jitter = gt_boxes[keep] + rng.normal(0, 6, size=(int(keep.sum()), 4))
        jitter_labels = np.where(rng.random(int(keep.sum())) < 0.9, gt_labels[keep], rng.integers(0, num_classes))
        n_fp = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 200, size=(n_fp, 2))
        fp_boxes = np.concatenate([fxy, fxy + rng.uniform(5, 80, size=(n_fp, 2))], axis=1)
        boxes = np.concatenate([jitter, fp_boxes])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.concatenate([jitter_labels, rng.integers(0, num_classes, size=n_fp)])
        scores = rng.uniform(0.05, 1.0, size=len(boxes))
        images.append((boxes, scores, labels, gt_boxes, gt_labels))
    return images


def test_detection_matches_faster_coco_eval_on_random_boxes():
    fce = pytest.importorskip("faster_coco_eval")
    images = _random_detection_set(seed=7)
    metric = DetectionMetric(["a", "b", "c"])
    gt_json = {"images": [], "annotations": [], "categories": [{"id": c} for c in (1, 2, 3)]}
    detections = []
    for image_id, (boxes, scores, labels, gt_boxes, gt_labels) in enumerate(images, start=1):
        metric.update(boxes, scores, labels, gt_boxes, gt_labels, image_id=image_id)
        gt_json["images"].append({"id": image_id})
        for (x1, y1, x2, y2), label in zip(gt_boxes, gt_labels):
            gt_json["annotations"].append({"id": len(gt_json["annotations"]) + 1, "image_id": image_id,
                                           "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                           "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            detections.append({"image_id": image_id, "category_id": int(label) + 1,
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    coco_gt = fce.COCO(gt_json)
    coco_dt = coco_gt.loadRes(detections)
    evaluator = fce.COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ours = metric.compute()
    assert 0.2 < ours["map50"] < 0.95  # a non-trivial case
    assert ours["map50"] == pytest.approx(evaluator.stats[1], abs=1e-6)
    assert ours["map50_95"] == pytest.approx(evaluator.stats[0], abs=1e-6)


# ----------------------------------------------------------------------------- super-resolution


def test_psnr_known_mse():
    metric = SuperResolutionMetric()
    target = np.zeros((4, 4, 3), dtype=np.uint8)
    pred = np.full((4, 4, 3), 10, dtype=np.uint8)  # MSE 100
    metric.update(pred, target)
    expected = 20 * math.log10(255) - 10 * math.log10(100)  # 28.1308 dB
    assert metric.compute()["psnr"] == pytest.approx(expected)
    one_channel = pred.copy()
    one_channel[..., 1:] = 0
    one_channel[..., 0] = 30  # MSE over all channels: 900 / 3 = 300
    assert metric.psnr(one_channel, target) == pytest.approx(10 * math.log10(255**2 / 300))
    # averaged over images: (expected + cap) / 2
    metric.update(target, target)
    assert metric.compute()["psnr"] == pytest.approx((expected + SuperResolutionMetric.PSNR_CAP) / 2)
    assert math.isnan(metric.compute()["psnr_bicubic"])


def test_psnr_border_and_identical_capped():
    target = np.full((6, 6, 3), 100, dtype=np.uint8)
    pred = target.copy()
    pred[0, :] = 0  # differs only on the border
    assert SuperResolutionMetric(border=1).psnr(pred, target) == 100.0
    assert SuperResolutionMetric(border=0).psnr(pred, target) < 100.0


def test_bicubic_baseline_matches_cv2_and_gain_sign():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
    lowres = cv2.resize(target, (10, 8), interpolation=cv2.INTER_AREA)
    bicubic = cv2.resize(lowres, (20, 16), interpolation=cv2.INTER_CUBIC)
    mse = np.mean((bicubic.astype(np.float64) - target) ** 2)
    psnr_bicubic = 10 * math.log10(255**2 / mse)

    good = SuperResolutionMetric()
    good.update(target, target, lowres=lowres)  # perfect: capped at 100
    assert good.compute()["psnr_bicubic"] == pytest.approx(psnr_bicubic)
    assert good.compute()["psnr_gain"] == pytest.approx(100.0 - psnr_bicubic)

    bad = SuperResolutionMetric()
    worse = np.clip(bicubic.astype(np.int32) + rng.integers(-60, 61, size=bicubic.shape), 0, 255).astype(np.uint8)
    bad.update(worse, target, lowres=lowres)
    result = bad.compute()
    assert result["psnr_gain"] < 0
    assert result["psnr_gain"] == pytest.approx(result["psnr"] - result["psnr_bicubic"])

    good.merge(bad)
    merged = good.compute()
    assert merged["psnr_bicubic"] == pytest.approx(psnr_bicubic)
    assert merged["psnr"] == pytest.approx((100.0 + result["psnr"]) / 2)


# ----------------------------------------------------------------------------- delta_m


def test_delta_m_hand_computed_mixed_directions():
    single = {"miou": 0.50, "abs_rel": 0.10, "psnr": 30.0, "rmse": 4.0}
    multi = {"miou": 0.45, "abs_rel": 0.08, "psnr": 33.0, "map50": 0.7}
    # miou -10 %, abs_rel lower is better: +20 %, psnr +10 %; rmse / map50 not in both
    assert delta_m(multi, single) == pytest.approx((-10 + 20 + 10) / 3)
    assert delta_m(single, single) == 0.0


def test_delta_m_prefixes_nested_and_errors():
    single = {"seg/miou": 0.5, "depth/rmse": 4.0, "iou_per_class": {"a": 0.1}}
    multi = {"seg/miou": 0.6, "depth/rmse": 5.0, "iou_per_class": {"a": 0.2}}
    assert delta_m(multi, single) == pytest.approx((20 - 25) / 2)
    with pytest.raises(KeyError):
        delta_m({"mystery": 1.0}, {"mystery": 2.0})
    with pytest.raises(ValueError):
        delta_m({"miou": 1.0}, {"rmse": 1.0})
    assert set(METRIC_DIRECTIONS) >= {"miou", "pixel_acc", "abs_rel", "sq_rel", "rmse", "rmse_log",
                                      "delta1", "delta2", "delta3", "map50", "map50_95", "psnr", "psnr_gain"}


def test_each_kind_builds_its_metric_from_the_task_spec():
    from mtl_perception.contract import TaskSpec
    from mtl_perception.kinds.registry import metric_for

    seg = metric_for(TaskSpec("segmentation", {}, class_names=("a", "b", "c"), ignore_index=7))
    assert isinstance(seg, SegmentationMetric) and (seg.num_classes, seg.ignore_index) == (3, 7)
    depth = metric_for(TaskSpec("depth", {}, min_depth=0.5, max_depth=10.0))
    assert isinstance(depth, DepthMetric) and (depth.min_depth, depth.max_depth) == (0.5, 10.0)
    assert isinstance(metric_for(TaskSpec("detection", {}, class_names=("a",))), DetectionMetric)
    assert isinstance(metric_for(TaskSpec("super_resolution", {}, scale=2)), SuperResolutionMetric)
    with pytest.raises(ValueError, match="unknown task kind 'optical_flow'"):
        metric_for(TaskSpec("optical_flow", {}))


def test_runtime_metrics_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mtl_perception.evaluation.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
