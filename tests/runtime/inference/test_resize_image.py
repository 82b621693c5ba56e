"""`resize_image`, the one resize of training, evaluation and the node, against an independent
area-averaging reference (each output pixel the overlap-weighted mean of the source pixels it
covers), for the exact 2x halvings and for the general ratios of camera frames."""
import cv2
import numpy as np
import pytest

from mtl_perception.inference.preprocess import resize_image


def _area_weights(source: int, target: int) -> np.ndarray:
    """[target, source]: the fraction of each source pixel inside each target pixel, rows summing to 1."""
    scale = source / target
    weights = np.zeros((target, source))
    for i in range(target):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), min(source, int(np.ceil(hi)))):
            weights[i, j] = min(hi, j + 1) - max(lo, j)
    return weights / scale


def area_reference(image: np.ndarray, size) -> np.ndarray:
    wy, wx = _area_weights(image.shape[0], size[1]), _area_weights(image.shape[1], size[0])
    h, w, c = image.shape
    rows = (wy @ image.reshape(h, w * c).astype(np.float64)).reshape(-1, w, c)  # [target_h, w, c]
    return np.einsum("ywc,xw->yxc", rows, wx)


def _photo(width: int, height: int) -> np.ndarray:
    """Smooth gradients plus sharp-edged blocks: what aliasing and rounding show on."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                      ((x // 37 + y // 23) % 2) * 255], axis=-1)
    return image.astype(np.uint8)


@pytest.mark.parametrize("camera, size", [((1024, 512), (256, 128)), ((768, 512), (96, 64))])
def test_power_of_two_shrink_is_the_exact_block_mean(camera, size):
    image = _photo(*camera)
    out = resize_image(image, size)
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8
    # every halving rounds to uint8 once: within one level per halving of the exact mean
    halvings = int(np.log2(camera[0] // size[0]))
    assert np.abs(out - area_reference(image, size)).max() <= halvings


@pytest.mark.parametrize("camera", [(640, 480), (1280, 720), (1920, 1080)])
@pytest.mark.parametrize("size", [(192, 128), (512, 256)])
def test_camera_frames_are_area_averaged(camera, size):
    """Non-integer ratios: halvings then one area step stay a box filter of the frame; they differ
    from the one-step area mean only near edges, far less than bilinear sampling (which aliases)."""
    image = _photo(*camera)
    reference = area_reference(image, size)
    diff = np.abs(resize_image(image, size) - reference).mean()
    aliased = np.abs(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) - reference).mean()
    assert diff < 2.0 and diff < 0.25 * aliased, (diff, aliased)


def test_same_size_and_enlarging():
    image = _photo(64, 48)
    assert resize_image(image, (64, 48)) is image
    big = resize_image(image, (128, 96))
    assert big.shape == (96, 128, 3)
    # bicubic through the pixel centres: the enlarged image's 2x2 block means stay near the source
    assert np.abs(big.reshape(48, 2, 64, 2, 3).mean(axis=(1, 3)) - image).mean() < 4


@pytest.mark.parametrize("camera, size", [((640, 480), (192, 128)), ((640, 360), (192, 128)), ((640, 480), (256, 192))])
@pytest.mark.parametrize("layout", ["rgb8", "mono8", "rgb16"])
def test_camera_ratios_with_a_short_period_are_the_exact_area_mean_rounded_once(camera, size, layout):
    """640x480 -> 192x128 (10:3 and 15:4) and 1280x720 after its halving (640x360: 10:3 and 45:16)
    take the period products: each output is the exact mean rounded once, for 8 and 16 bits,
    colour and mono; OpenCV's area path is within one level of it."""
    image = _photo(*camera)
    if layout == "mono8":
        image = np.ascontiguousarray(image[..., 0])
    elif layout == "rgb16":
        image = image.astype(np.uint16) * 257 + 13
    out = resize_image(image, size)
    assert out.shape == (size[1], size[0]) + image.shape[2:] and out.dtype == image.dtype
    reference = area_reference(image.reshape(image.shape[0], image.shape[1], -1), size).reshape(out.shape)
    assert np.abs(out - reference).max() <= 0.5 + 1e-3 * (257 if layout == "rgb16" else 1)
    opencv = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(np.int64) - opencv).max() <= 1


def test_a_long_period_falls_back_to_opencv_area():
    image = _photo(641, 481)  # 641:192 and 481:128 have no short period
    np.testing.assert_array_equal(resize_image(image, (192, 128)),
                                  cv2.resize(image, (192, 128), interpolation=cv2.INTER_AREA))
