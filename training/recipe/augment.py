"""The recipe's `data.augment` section (applied by `training.engine.augment`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Tuple

__all__ = ["ColorConfig", "AugmentConfig"]


@dataclass
class ColorConfig:
    """Colour jitter amplitudes; 0 turns a component off."""

    brightness: float = 0.0  # additive offset in [-b, b] on [0, 1] intensities
    contrast: float = 0.0  # factor in [1 - c, 1 + c] around the image mean
    saturation: float = 0.0  # factor in [1 - s, 1 + s]
    hue: float = 0.0  # shift in [-h, h] turns of the colour circle

    def check(self):
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"color.{name} must be in [0, 1)")
        if not 0 <= self.hue <= 0.5:
            raise ValueError("color.hue must be in [0, 0.5]")

    @property
    def active(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


@dataclass
class AugmentConfig:
    """The recipe's `data.augment` section. The defaults are a horizontal flip only.

    `depth_scale_mode`: zooming an image by s is what a camera of focal length s*f sees at the
    same depth. The network gets no intrinsics, so the only metric cue it has is apparent size,
    and a zoomed object looks like the same object 1/s as far: `inverse` (default) divides the
    depth target by s and keeps fx, fy, which keeps image, depth and intrinsics consistent for a
    network that infers depth from appearance. `keep` leaves depth unchanged and scales fx, fy by
    s: consistent only for a model that is given the intrinsics.
    """

    scale: Tuple[float, float] = (1.0, 1.0)  # zoom range, sampled uniformly
    crop: bool = True  # random crop/placement of the zoomed image; false: centred
    flip: float = 0.5  # horizontal flip probability
    color: ColorConfig = field(default_factory=ColorConfig)
    depth_scale_mode: Literal["keep", "inverse"] = "inverse"
    min_visible: float = 0.3  # a box keeps at least this fraction of its area inside the crop

    def check(self):
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"flip must be a probability in [0, 1], got {self.flip}")
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")

    @property
    def geometric(self) -> bool:
        return self.scale != (1.0, 1.0)
