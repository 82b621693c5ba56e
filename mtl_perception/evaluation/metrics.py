"""Per-task evaluation metrics, shared by training validation, bag evaluation and benchmarks.

One implementation so that a number printed by the trainer, by ``mtl-perception`` on a bag and
by a benchmark mean the same thing. Torch-free: inputs are numpy arrays (callers convert
tensors with ``.cpu().numpy()``); detection mAP is delegated to pycocotools so it matches the
numbers people quote.

Every metric follows the same small protocol: ``update(...)`` accumulates, ``compute()``
returns a dict of floats and may be called any number of times, ``reset()`` clears, and
``merge(other)`` adds another instance's accumulators (evaluate shards in several processes,
then merge). Conventions are documented on each class and in the README's "Metrics" section.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "SegmentationMetric",
    "DepthMetric",
    "DetectionMetric",
    "SuperResolutionMetric",
    "METRIC_DIRECTIONS",
    "delta_m",
]


def _check_merge(self, other) -> None:
    if type(other) is not type(self):
        raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")


class SegmentationMetric:
    """Confusion-matrix mIoU and pixel accuracy over a whole dataset.

    Pixels whose target is ``ignore_index`` are skipped. A predicted id outside
    ``[0, num_classes)`` is a wrong prediction for the pixel's true class (it is a false
    negative of that class and a false positive of none). A target id outside the range (other
    than ``ignore_index``) is a labelling bug and raises.

    IoU_c = TP_c / (TP_c + FP_c + FN_c), accumulated over all pixels of all images (not averaged
    per image). mIoU is the mean over classes whose union is non-zero: a class absent from both
    the ground truth and the predictions has no defined IoU (reported as NaN) and is excluded
    rather than counted as 0 or 1.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = ([str(n) for n in class_names] if class_names is not None
                            else [str(i) for i in range(num_classes)])
        self.reset()

    def reset(self) -> None:
        # rows: true class; columns: predicted class, last column = "invalid prediction id"
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
        k = self.num_classes
        target = target.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        if target.size and (target.min() < 0 or target.max() >= k):
            raise ValueError(f"target ids must be in [0, {k}) or {self.ignore_index}")
        pred = np.where((pred < 0) | (pred >= k), k, pred)
        counts = np.bincount(target * (k + 1) + pred, minlength=k * (k + 1))
        self.confusion += counts.reshape(k, k + 1)

    def compute(self) -> dict:
        tp = np.diag(self.confusion[:, : self.num_classes]).astype(np.float64)
        gt = self.confusion.sum(axis=1).astype(np.float64)
        predicted = self.confusion[:, : self.num_classes].sum(axis=0).astype(np.float64)
        union = gt + predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        total = gt.sum()
        present = union > 0
        return {
            "miou": float(iou[present].mean()) if present.any() else math.nan,
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "iou_per_class": {name: float(v) for name, v in zip(self.class_names, iou)},
        }

    def merge(self, other: SegmentationMetric) -> None:
        _check_merge(self, other)
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge metrics with different num_classes")
        self.confusion += other.confusion


_DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


class DepthMetric:
    """Standard monocular-depth errors (Eigen et al. 2014), in metres.

    Valid pixels: finite target with ``min_depth < target <= max_depth``. Predictions are
    clamped to ``[min_depth, max_depth]`` (non-finite ones too: +inf and NaN become
    ``max_depth``, -inf ``min_depth``), so a missing prediction is scored as an error, never
    skipped. Each error is computed per image over its valid pixels and then averaged over
    images (the KITTI / Eigen convention, so every image weighs the same whatever its number
    of valid pixels); rmse and rmse_log take the square root per image. Images without any
    valid pixel are skipped.
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 80.0):
        if not 0 < min_depth < max_depth:
            raise ValueError("need 0 < min_depth < max_depth")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(_DEPTH_KEYS, 0.0)
        self.num_images = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred = np.asarray(pred, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        elif pred.ndim != 3:
            raise ValueError("depth maps must be HxW or NxHxW")
        for p, t in zip(pred, target):
            self._update_one(p, t)

    def _update_one(self, pred: np.ndarray, target: np.ndarray) -> None:
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(target) & (target > self.min_depth) & (target <= self.max_depth)
        if not valid.any():
            return
        t = target[valid]
        p = np.nan_to_num(pred[valid], nan=self.max_depth, posinf=self.max_depth, neginf=self.min_depth)
        p = np.clip(p, self.min_depth, self.max_depth)
        ratio = np.maximum(p / t, t / p)
        diff = p - t
        values = {
            "abs_rel": np.mean(np.abs(diff) / t),
            "sq_rel": np.mean(diff**2 / t),
            "rmse": np.sqrt(np.mean(diff**2)),
            "rmse_log": np.sqrt(np.mean((np.log(p) - np.log(t)) ** 2)),
            "delta1": np.mean(ratio < 1.25),
            "delta2": np.mean(ratio < 1.25**2),
            "delta3": np.mean(ratio < 1.25**3),
        }
        for key, value in values.items():
            self.sums[key] += float(value)
        self.num_images += 1

    def compute(self) -> dict:
        n = self.num_images
        return {key: (self.sums[key] / n if n else math.nan) for key in _DEPTH_KEYS}

    def merge(self, other: DepthMetric) -> None:
        _check_merge(self, other)
        if (other.min_depth, other.max_depth) != (self.min_depth, self.max_depth):
            raise ValueError("cannot merge depth metrics with different depth ranges")
        for key in _DEPTH_KEYS:
            self.sums[key] += other.sums[key]
        self.num_images += other.num_images


class DetectionMetric:
    """COCO box mAP through pycocotools, so the numbers match published ones.

    Boxes arrive as xyxy pixels with 0-based labels and are converted to COCO's xywh and
    1-based category ids. ``map50`` is AP at IoU 0.5, ``map50_95`` the COCO mean over IoU
    0.50:0.05:0.95, both with COCO's 101-point interpolated precision, area range "all" and at
    most ``max_dets`` detections per image (highest scores kept). The mean is over classes that
    have ground truth; a class without ground truth gets AP NaN in ``ap50_per_class`` and does
    not count (its detections are simply unmatched). With no ground truth at all every value is
    NaN. No GT box is marked crowd.

    Each ``update`` is one image. ``image_id`` is optional; if given it must be unique (it
    guards against evaluating an image twice, also across ``merge``).
    """

    def __init__(self, class_names: Sequence[str], max_dets: int = 100):
        if len(class_names) == 0:
            raise ValueError("need at least one class")
        self.class_names = [str(n) for n in class_names]
        self.max_dets = int(max_dets)
        self.reset()

    def reset(self) -> None:
        # one record per image: (image_id or None, pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels)
        self.images: list[tuple] = []
        self._ids: set[int] = set()

    def update(self, pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, image_id: int | None = None) -> None:
        pb = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
        ps = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        pl = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
        gb = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        gl = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        if not len(pb) == len(ps) == len(pl):
            raise ValueError("pred_boxes, pred_scores and pred_labels differ in length")
        if len(gb) != len(gl):
            raise ValueError("gt_boxes and gt_labels differ in length")
        n = len(self.class_names)
        for labels in (pl, gl):
            if labels.size and (labels.min() < 0 or labels.max() >= n):
                raise ValueError(f"labels must be in [0, {n})")
        if image_id is not None:
            image_id = int(image_id)
            if image_id in self._ids:
                raise ValueError(f"image_id {image_id} was already evaluated")
            self._ids.add(image_id)
        self.images.append((image_id, pb, ps, pl, gb, gl))

    def merge(self, other: DetectionMetric) -> None:
        _check_merge(self, other)
        if other.class_names != self.class_names:
            raise ValueError("cannot merge detection metrics with different classes")
        if self._ids & other._ids:
            raise ValueError(f"image ids evaluated twice: {sorted(self._ids & other._ids)[:5]}")
        self.images.extend(other.images)
        self._ids |= other._ids

    def _coco_dicts(self) -> tuple[dict, dict]:
        """GT and detection datasets in COCO json form; image ids are 1..N in update order."""
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.class_names)]
        images, gts, dts = [], [], []
        for index, (_, pb, ps, pl, gb, gl) in enumerate(self.images, start=1):
            images.append({"id": index})
            for box, label in zip(gb, gl):
                x, y, w, h = _xywh(box)
                # annotation ids start at 1: pycocotools uses 0 for "unmatched"
                gts.append({"id": len(gts) + 1, "image_id": index, "category_id": int(label) + 1,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for box, score, label in zip(pb, ps, pl):
                x, y, w, h = _xywh(box)
                dts.append({"id": len(dts) + 1, "image_id": index, "category_id": int(label) + 1,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "score": float(score)})
        gt = {"images": images, "categories": categories, "annotations": gts}
        dt = {"images": images, "categories": categories, "annotations": dts}
        return gt, dt

    def compute(self) -> dict:
        nan_result = {"map50": math.nan, "map50_95": math.nan,
                      "ap50_per_class": dict.fromkeys(self.class_names, math.nan)}
        if not any(len(record[4]) for record in self.images):
            return nan_result
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt_json, dt_json = self._coco_dicts()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset, coco_dt.dataset = gt_json, dt_json
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
            evaluator.params.maxDets = [1, 10, self.max_dets]
            evaluator.evaluate()
            evaluator.accumulate()
        # precision[T, R, K, A, M]: IoU thresholds, recall points, classes, area ranges, maxDets;
        # -1 marks a class without ground truth. Area index 0 = "all", maxDets index -1 = max_dets.
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        has_gt = (precision > -1).all(axis=(0, 1))
        ap_per_iou_class = np.where(has_gt, precision.mean(axis=1), np.nan)  # T x K
        ap50 = ap_per_iou_class[0]
        return {
            "map50": float(np.nanmean(ap50)),
            "map50_95": float(np.nanmean(ap_per_iou_class.mean(axis=0))),
            "ap50_per_class": {name: float(v) for name, v in zip(self.class_names, ap50)},
        }


def _xywh(box: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)


class SuperResolutionMetric:
    """PSNR of the super-resolved image, and of plain bicubic upsampling as the baseline.

    PSNR = 10 log10(255^2 / MSE), MSE over all pixels and channels of one image (RGB/BGR, no
    Y-channel conversion), after cropping ``border`` pixels from each side; averaged over
    images. Identical images have infinite PSNR, so every PSNR is capped at ``PSNR_CAP`` dB.
    If ``lowres`` is given, the baseline is ``cv2.resize(lowres, (W, H), INTER_CUBIC)``.
    ``psnr_bicubic`` and ``psnr_gain`` (= mean over those images of psnr - psnr_bicubic, which
    equals ``psnr - psnr_bicubic`` when every image had a ``lowres``) are NaN without one.
    """

    PSNR_CAP = 100.0

    def __init__(self, border: int = 0):
        if border < 0:
            raise ValueError("border must be >= 0")
        self.border = int(border)
        self.reset()

    def reset(self) -> None:
        self.psnr_sum = 0.0
        self.num_images = 0
        self.paired_psnr_sum = 0.0  # PSNR of the network on images that also have a baseline
        self.bicubic_psnr_sum = 0.0
        self.num_paired = 0

    def psnr(self, pred: np.ndarray, target: np.ndarray) -> float:
        """PSNR of one image pair in dB (peak 255, border cropped, capped)."""
        pred = np.asarray(pred, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
        b = self.border
        if b:
            pred, target = pred[b:-b, b:-b], target[b:-b, b:-b]
        mse = float(np.mean((pred - target) ** 2))
        if mse == 0.0:
            return self.PSNR_CAP
        return min(10.0 * math.log10(255.0**2 / mse), self.PSNR_CAP)

    def update(self, pred: np.ndarray, target: np.ndarray, lowres: np.ndarray | None = None) -> None:
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.ndim == 4:  # batch NxHxWxC
            for i in range(len(pred)):
                self.update(pred[i], target[i], None if lowres is None else lowres[i])
            return
        value = self.psnr(pred, target)
        self.psnr_sum += value
        self.num_images += 1
        if lowres is not None:
            import cv2

            height, width = target.shape[:2]
            bicubic = cv2.resize(np.asarray(lowres), (width, height), interpolation=cv2.INTER_CUBIC)
            self.paired_psnr_sum += value
            self.bicubic_psnr_sum += self.psnr(bicubic.reshape(target.shape), target)
            self.num_paired += 1

    def compute(self) -> dict:
        n, m = self.num_images, self.num_paired
        return {
            "psnr": self.psnr_sum / n if n else math.nan,
            "psnr_bicubic": self.bicubic_psnr_sum / m if m else math.nan,
            "psnr_gain": (self.paired_psnr_sum - self.bicubic_psnr_sum) / m if m else math.nan,
        }

    def merge(self, other: SuperResolutionMetric) -> None:
        _check_merge(self, other)
        if other.border != self.border:
            raise ValueError("cannot merge SR metrics with different borders")
        self.psnr_sum += other.psnr_sum
        self.num_images += other.num_images
        self.paired_psnr_sum += other.paired_psnr_sum
        self.bicubic_psnr_sum += other.bicubic_psnr_sum
        self.num_paired += other.num_paired


METRIC_DIRECTIONS: dict[str, int] = {
    # +1: higher is better, -1: lower is better
    "miou": +1, "pixel_acc": +1,
    "abs_rel": -1, "sq_rel": -1, "rmse": -1, "rmse_log": -1,
    "delta1": +1, "delta2": +1, "delta3": +1,
    "map50": +1, "map50_95": +1,
    "psnr": +1, "psnr_bicubic": +1, "psnr_gain": +1,
}


def delta_m(multi_task: Mapping[str, float], single_task: Mapping[str, float],
            directions: Mapping[str, int] = METRIC_DIRECTIONS) -> float:
    """Multi-task performance Δm in percent (Maninis et al. 2019; Vandenhende et al. 2021).

    Δm = 100/K · Σ_k (-1)^{l_k} (M_mt,k - M_st,k) / M_st,k, with l_k = 1 when lower is better,
    over the K metric keys present in both dicts. Positive means the multi-task model is better
    than its single-task baselines on average. Values that are mappings (per-class breakdowns
    from ``compute()``) are skipped, so whole ``compute()`` results can be passed. A key
    prefixed ``"task/metric"`` takes the direction of ``metric`` when it has none of its own,
    which lets two tasks of the same kind share one dict.
    """
    keys = [k for k in multi_task if k in single_task
            and not isinstance(multi_task[k], Mapping) and not isinstance(single_task[k], Mapping)]
    if not keys:
        raise ValueError("no metric keys in common")
    total = 0.0
    for key in keys:
        direction = directions.get(key, directions.get(key.rsplit("/", 1)[-1]))
        if direction not in (1, -1):
            raise KeyError(f"no direction (+1/-1) known for metric {key!r}")
        mt, st = float(multi_task[key]), float(single_task[key])
        if st == 0.0:
            raise ValueError(f"single-task value of {key!r} is 0: relative change undefined")
        total += direction * (mt - st) / st
    return 100.0 * total / len(keys)
