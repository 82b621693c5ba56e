"""Training augmentation that keeps every label consistent: random scale, crop, flip, colour.

One geometric transform is sampled per (seed, epoch, index) and applied to everything a sample
carries, before any task encodes its targets (detection heatmaps, the SR pair), so labels and
image never disagree:

- the super-resolution HR image is warped (bilinear) and the network input is derived from it
  afterwards by an area downscale (`resize_image`); the pair is never augmented apart;
- the semantic map is sampled nearest, padding 255 (ignored by the loss and the metric);
- depth is sampled nearest, padding NaN (the pipeline's "invalid"); under `depth_scale_mode:
  inverse` it is divided by the zoom (see `AugmentConfig`);
- boxes go through the transform, are clipped to the crop and dropped when less than
  `min_visible` of their area stays inside;
- intrinsics (fx, fy, cx, cy at the input resolution), when a sample has them, follow the
  transform so that they stay consistent with the depth labels.

Colour jitter (kornia.enhance) changes the HR image before the input is derived from it: the
network sees jittered colours and the SR target has the same colours, so the pair stays a pure
resolution pair (jittering only the input would teach colour correction, not super-resolution).

Coordinates: boxes live in continuous pixel coordinates (pixel i covers [i, i+1]); intrinsics
and kornia's `align_corners=True` warps in index coordinates (pixel centres at integers).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from kornia.color import hsv_to_rgb, rgb_to_hsv
from kornia.enhance import (
    adjust_brightness,
    adjust_contrast_with_mean_subtraction,
    adjust_hue_raw,
    adjust_saturation_raw,
)
from kornia.geometry.transform import warp_affine

from mtl_perception.inference.preprocess import resize_image
from training.recipe.augment import AugmentConfig, ColorConfig

__all__ = ["ColorConfig", "AugmentConfig", "AugmentParams", "flip_coin", "sample_params", "augment_sample",
           "transform_boxes", "transform_intrinsics"]

IGNORE = 255  # semantic padding (the segmentation loss's ignore index)


@dataclass(frozen=True)
class AugmentParams:
    """One sample's transform: u' = ax * u + bx, v' = ay * v + by in continuous input pixels."""

    scale: float
    offset: Tuple[float, float]  # crop origin in the zoomed image (negative: zoomed image is smaller)
    flip: bool
    size: Tuple[int, int]  # (w, h) of the input
    color: Optional[Tuple[float, float, float, float]] = None  # brightness, contrast, saturation, hue
    depth_scale_mode: str = "inverse"

    @property
    def affine(self) -> Tuple[float, float, float, float]:
        s, (ox, oy), width = self.scale, self.offset, self.size[0]
        if self.flip:
            return -s, width + ox, s, -oy
        return s, -ox, s, -oy

    @property
    def resamples(self) -> bool:
        """Whether pixels must be interpolated (a zoom or a sub-pixel shift), not just mirrored."""
        return self.scale != 1.0 or self.offset != (0.0, 0.0)


def flip_coin(seed: int, epoch: int, index: int) -> bool:
    """A fair coin that depends only on (seed, epoch, index): resumable and rank-independent."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=1).digest()
    return digest[0] & 1 == 1


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    digest = hashlib.blake2b(f"augment/{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _flip(probability: float, coin: bool, u: float) -> bool:
    """Flip with `probability`, built on the fair coin so that p = 0.5 is exactly the coin
    (the flips of recipes written before scale/colour augmentation existed are unchanged)."""
    if probability <= 0.5:
        return coin and u < 2 * probability
    return coin or u < 2 * probability - 1


def sample_params(config: AugmentConfig, seed: int, epoch: int, index: int, size: Tuple[int, int]) -> AugmentParams:
    """The transform of sample `index` in `epoch`: a pure function of its arguments."""
    rng = _rng(seed, epoch, index)
    flip = _flip(config.flip, flip_coin(seed, epoch, index), float(rng.random()))
    low, high = config.scale
    s = float(rng.uniform(low, high)) if high > low else float(low)
    offset = []
    for extent in size:  # crop origin in the zoomed image; outside [0, s*extent - extent] pads
        slack = s * extent - extent
        lo, hi = min(0.0, slack), max(0.0, slack)
        offset.append(float(rng.uniform(lo, hi)) if config.crop and hi > lo else slack / 2)
    color = None
    if config.color.active:
        c = config.color
        color = (float(rng.uniform(-c.brightness, c.brightness)), float(rng.uniform(1 - c.contrast, 1 + c.contrast)),
                 float(rng.uniform(1 - c.saturation, 1 + c.saturation)), float(rng.uniform(-c.hue, c.hue)))
    return AugmentParams(s, (offset[0], offset[1]), flip, tuple(size), color, config.depth_scale_mode)


def transform_boxes(boxes: np.ndarray, params: AugmentParams, min_visible: float) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes (xyxy, continuous input pixels) through the transform, clipped to the crop;
    returns them and the mask of those kept (at least `min_visible` of the area inside)."""
    ax, bx, ay, by = params.affine
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    xs = boxes[:, [0, 2]] * ax + bx
    ys = boxes[:, [1, 3]] * ay + by
    x1, x2 = xs.min(1), xs.max(1)
    y1, y2 = ys.min(1), ys.max(1)
    area = (x2 - x1) * (y2 - y1)
    width, height = params.size
    cx1, cx2 = np.clip(x1, 0, width), np.clip(x2, 0, width)
    cy1, cy2 = np.clip(y1, 0, height), np.clip(y2, 0, height)
    visible = np.clip(cx2 - cx1, 0, None) * np.clip(cy2 - cy1, 0, None)
    keep = (visible > 0) & (visible >= min_visible * area)
    return np.stack([cx1, cy1, cx2, cy2], 1).astype(np.float32), keep


def transform_intrinsics(intrinsics: np.ndarray, params: AugmentParams) -> np.ndarray:
    """(fx, fy, cx, cy) at the input resolution after the transform, consistent with the depth
    labels: `keep` scales the focal lengths, `inverse` keeps them (the depth absorbs the zoom).
    A flip mirrors the scene (X -> -X) and keeps fx positive."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    ax, bx, ay, by = params.affine
    focal = params.scale if params.depth_scale_mode == "keep" else 1.0
    # index coordinates: x' + 0.5 = a (x + 0.5) + b
    new_cx = ax * cx + 0.5 * ax + bx - 0.5
    new_cy = ay * cy + 0.5 * ay + by - 0.5
    return np.array([fx * focal, fy * focal, new_cx, new_cy], np.float32)


def _index_matrix(params: AugmentParams, resolution: float) -> torch.Tensor:
    """kornia's 2x3 source -> destination matrix in index coordinates at `resolution` times
    the input size (the HR image)."""
    ax, bx, ay, by = params.affine
    bx, by = bx * resolution, by * resolution
    return torch.tensor([[[ax, 0.0, 0.5 * ax + bx - 0.5], [0.0, ay, 0.5 * ay + by - 0.5]]], dtype=torch.float32)


def _warp(array: np.ndarray, matrix: torch.Tensor, mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """HxW or HxWxC array warped to its own size; also the mask of pixels that came from inside."""
    h, w = array.shape[:2]
    planes = torch.from_numpy(np.ascontiguousarray(array, np.float32).reshape(h, w, -1)).permute(2, 0, 1)[None]
    ones = torch.ones(1, 1, h, w)
    out = warp_affine(torch.cat([planes, ones], 1), matrix, (h, w), mode=mode, padding_mode="zeros",
                      align_corners=True)[0]
    values = out[:-1].permute(1, 2, 0).numpy().reshape(array.shape)
    inside = out[-1].numpy() > (0.5 if mode == "nearest" else 0.0)
    return values, inside


def _warp_nearest(array: np.ndarray, matrix: torch.Tensor, fill) -> np.ndarray:
    finite = np.nan_to_num(array.astype(np.float32), nan=0.0)  # a NaN neighbour must not leak
    nan = np.isnan(array) if array.dtype.kind == "f" else np.zeros(array.shape, bool)
    values, inside = _warp(np.concatenate([finite.reshape(*array.shape[:2], -1),
                                           nan.reshape(*array.shape[:2], -1)], 2), matrix, "nearest")
    channels = values.shape[2] // 2
    out = values[..., :channels].reshape(array.shape)
    out = np.where(values[..., channels:].reshape(array.shape) > 0.5, np.nan, out)
    mask = inside.reshape(inside.shape + (1,) * (array.ndim - 2))
    return np.where(mask, out, fill).astype(array.dtype)


def _jitter(image: np.ndarray, color: Tuple[float, float, float, float]) -> np.ndarray:
    """Brightness, contrast, then saturation and hue in one HSV round trip (kornia), uint8 out;
    a component at its identity value is skipped (exactly what applying it would give)."""
    brightness, contrast, saturation, hue = color
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    if brightness != 0:
        x = adjust_brightness(x, brightness)
    if contrast != 1:
        x = adjust_contrast_with_mean_subtraction(x, contrast).clamp(0, 1)
    if saturation != 1 or hue != 0:
        hsv = adjust_hue_raw(adjust_saturation_raw(rgb_to_hsv(x), saturation), hue * 2 * math.pi)
        x = hsv_to_rgb(hsv).clamp(0, 1)
    return (x[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()


def _mirror(sample: Mapping[str, np.ndarray], width: int) -> Dict[str, np.ndarray]:
    """The exact horizontal flip (array reversal) of every map; boxes mirrored."""
    out = {k: (np.ascontiguousarray(v[:, ::-1]) if _is_map(v, sample) else v) for k, v in sample.items()
           if k not in ("boxes", "labels", "intrinsics")}
    boxes = np.asarray(sample["boxes"], np.float32).copy()
    boxes[:, [0, 2]] = width - sample["boxes"][:, [2, 0]]
    out["boxes"], out["labels"] = boxes, sample["labels"]
    return out


def _is_map(value, sample: Mapping[str, np.ndarray]) -> bool:
    """A per-pixel array at the input size or at an integer multiple of it (the HR image)."""
    if not isinstance(value, np.ndarray) or value.ndim < 2:
        return False
    h, w = sample["image"].shape[:2]
    return value.shape[0] * w == value.shape[1] * h and value.shape[0] % h == 0


def _resample(sample: Mapping[str, np.ndarray], params: AugmentParams) -> Dict[str, np.ndarray]:
    """Every map through the zoom and crop: images bilinear, labels nearest with their padding."""
    height = sample["image"].shape[0]
    out = {}
    for key, value in sample.items():
        if key in ("boxes", "labels", "intrinsics") or not _is_map(value, sample):
            out[key] = value
            continue
        if key == "image" and "hr_image" in sample:
            continue  # derived from the warped HR image by `augment_sample`
        matrix = _index_matrix(params, value.shape[0] / height)
        if key in ("image", "hr_image"):
            warped, _ = _warp(value, matrix, "bilinear")
            out[key] = np.clip(np.round(warped), 0, 255).astype(np.uint8)
        else:
            fill = IGNORE if key == "semantic" else (np.nan if value.dtype.kind == "f" else 0)
            out[key] = _warp_nearest(value, matrix, fill)
    if "depth" in out and params.depth_scale_mode == "inverse":
        out["depth"] = (out["depth"] / np.float32(params.scale)).astype(np.float32)
    return out


def augment_sample(sample: Mapping[str, np.ndarray], params: AugmentParams, min_visible: float = 0.3
                   ) -> Dict[str, np.ndarray]:
    """`sample` (as `resize_sample` makes it, optionally with `intrinsics`) under one transform.

    Without zoom or shift the geometry is an exact array flip (or nothing); the network input is
    re-derived from the HR image only when that image changed (zoom or colour), so a flip-only
    configuration gives exactly the arrays it always gave."""
    width, height = params.size
    if params.resamples:
        out = _resample(sample, params)
        boxes, keep = transform_boxes(sample["boxes"], params, min_visible)
        out["boxes"], out["labels"] = boxes[keep], np.asarray(sample["labels"])[keep]
    elif params.flip:
        out = _mirror(sample, width)
    else:
        out = dict(sample)
    if "intrinsics" in sample:
        out["intrinsics"] = transform_intrinsics(sample["intrinsics"], params)
    source = "hr_image" if "hr_image" in out else "image"
    if params.color is not None:
        out[source] = _jitter(out[source], params.color)
    if source == "hr_image" and (params.resamples or params.color is not None):
        out["image"] = resize_image(out["hr_image"], (width, height))
    return out
