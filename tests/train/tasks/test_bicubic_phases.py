"""Super-resolution's bicubic base as one strided convolution + depth-to-space (instead of a
cubic Resize, slow in onnxruntime on the CPU) must equal PyTorch's bicubic upsampling, borders
included: the head starts exactly there."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.models.collapse import compact_copy
from training.models.light_heads import depthwise_heads
from training.tasks.super_resolution import (
    PartwiseBody,
    SuperResolutionHead,
    SuperResolutionImage,
    SuperResolutionTask,
    bicubic_cells,
    bicubic_phases,
    cubic_weight,
    space_to_depth_kernel,
)


def test_kernel_rows_are_the_cubic_weights_and_sum_to_one():
    kernel, left, right = bicubic_phases(2)
    assert kernel.shape == (16, 1, 6, 6) and (left, right) == (2, 2)
    # first output pixel of a block: input coordinate -0.25, taps -2 .. 1 -> kernel columns 0 .. 3
    expected = torch.tensor([cubic_weight(1.75), cubic_weight(0.75), cubic_weight(0.25), cubic_weight(1.25)])
    row = kernel[0, 0].sum(dim=0)  # summing over y leaves the x weights (the y weights sum to one)
    torch.testing.assert_close(row[:4], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(kernel.sum(dim=(1, 2, 3)), torch.ones(16), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(8, 12), (64, 96)])
def test_base_equals_pytorch_bicubic(scale, size):
    head = SuperResolutionHead(16, 32, scale)
    image = torch.rand(2, 3, *size)
    reference = F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(head.shuffle(head.bicubic_base(head.image_cells(image))), reference, rtol=0, atol=2e-5)
    # an untrained head (zero output layer) is exactly bicubic
    height, width = size
    features = {"s2": torch.rand(2, 16, height // 2, width // 2), "s4": torch.rand(2, 32, height // 4, width // 4)}
    torch.testing.assert_close(head(features, image), reference, rtol=0, atol=2e-5)


def test_the_fixed_kernel_is_not_a_parameter_nor_in_the_state_dict():
    head = SuperResolutionHead(16, 32, 2)
    assert all("bicubic" not in name for name, _ in head.named_parameters())
    assert all("bicubic" not in key for key in head.state_dict())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_cell_kernel_is_the_phase_kernel_rearranged(scale):
    """The groups=3 convolution on 2x2 cells of the padded image = the stride-2 one on its pixels."""
    phases, left, right = bicubic_phases(scale)
    cells, cell_left, cell_right = bicubic_cells(scale)
    assert cell_left % 2 == 0 and cell_right % 2 == 0 and cells.shape[1] == 4
    image = torch.rand(1, 3, 20, 28)
    by_pixels = F.conv2d(F.pad(image, (left, right, left, right), mode="replicate"), phases.repeat(3, 1, 1, 1),
                         stride=2, groups=3)
    padded = F.pad(image, (cell_left, cell_right, cell_left, cell_right), mode="replicate")
    torch.testing.assert_close(F.conv2d(F.pixel_unshuffle(padded, 2), cells, groups=3), by_pixels, rtol=0, atol=1e-6)


def _trained_like(head: nn.Module) -> nn.Module:
    """Random weights and BN statistics (an untrained head is plain bicubic), then BN folded."""
    torch.manual_seed(1)
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.05)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return compact_copy(head)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("style", ["standard", "depthwise"])
def test_export_form_is_head_plus_decode(scale, style):
    """The exported form (255 and the rounding folded into its convolutions) gives decode's image
    up to rounding ties: at most one level, on a handful of pixels."""
    head = SuperResolutionHead(16, 32, scale)
    if style == "depthwise":
        depthwise_heads(head)
    head = _trained_like(head)
    features = {"s2": torch.randn(2, 16, 16, 24), "s4": torch.randn(2, 32, 8, 12)}
    image = torch.rand(2, 3, 32, 48)
    task = SuperResolutionTask.__new__(SuperResolutionTask)
    with torch.no_grad():
        pred = head(features, image)
        expected = task.decode(pred, image)["image"]
        got = task.export_head(head)(features, image)["image"]
    assert isinstance(task.export_head(head), SuperResolutionImage)
    assert got.dtype == torch.uint8 and got.shape == (2, 32 * scale, 48 * scale, 3)
    assert 0.01 < float(((pred < 0) | (pred > 1)).float().mean())  # the clip is exercised
    difference = (got.int() - expected.int()).abs()
    assert int(difference.max()) <= 1 and float((difference > 0).float().mean()) < 1e-3


def test_one_hot_convolution_is_the_space_to_depth():
    """The exported form's cells: a stride-2 convolution with one-hot weights copies the pixels
    exactly, in pixel_unshuffle's channel order."""
    image = torch.rand(2, 3, 10, 14)
    torch.testing.assert_close(F.conv2d(image, space_to_depth_kernel(3, 2), stride=2), F.pixel_unshuffle(image, 2),
                               rtol=0, atol=0)



@pytest.mark.parametrize("kind", ["dense", "depthwise", "other"])
def test_partwise_body_equals_the_body_on_the_concatenation(kind):
    """Split per part (dense first layer, or depthwise + 1x1), the body gives what it gives on
    the concatenated parts, also with the last part widened by zero channels; a body it cannot
    split (here one that starts with a BatchNorm) stays whole, is not widened, and still equals."""
    torch.manual_seed(0)
    sizes = [5, 3, 12]
    cin = sum(sizes)
    if kind == "dense":
        body = nn.Sequential(nn.Conv2d(cin, 8, 3, padding=1), nn.ReLU())
    elif kind == "depthwise":
        body = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, 8, 1), nn.ReLU())
    else:
        body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, 8, 3, padding=1)).eval()
    parts = [torch.randn(2, n, 6, 7) for n in sizes]
    expected = body(torch.cat(parts, dim=1))
    partwise = PartwiseBody(body, sizes).eval()
    with torch.no_grad():
        torch.testing.assert_close(partwise(parts), expected, rtol=1e-5, atol=1e-5)
        widened = partwise.widen_last(16)
        assert widened == (kind != "other")
        last = torch.cat([parts[-1], torch.randn(2, 4, 6, 7)], dim=1) if widened else parts[-1]
        torch.testing.assert_close(partwise(parts[:-1] + [last]), expected, rtol=1e-5, atol=1e-5)
