"""Super-resolution's bicubic base as one strided convolution + depth-to-space (instead of a
cubic Resize, slow in onnxruntime on the CPU) must equal PyTorch's bicubic upsampling, borders
included: the head starts exactly there."""
import pytest
import torch
import torch.nn.functional as F

from training.tasks.super_resolution import SuperResolutionHead, bicubic_phases, cubic_weight


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
    torch.testing.assert_close(head.shuffle(head.bicubic_base(image)), reference, rtol=0, atol=2e-5)
    # an untrained head (zero output layer) is exactly bicubic
    height, width = size
    features = {"s2": torch.rand(2, 16, height // 2, width // 2), "s4": torch.rand(2, 32, height // 4, width // 4)}
    torch.testing.assert_close(head(features, image), reference, rtol=0, atol=2e-5)


def test_the_fixed_kernel_is_not_a_parameter_nor_in_the_state_dict():
    head = SuperResolutionHead(16, 32, 2)
    assert all("bicubic" not in name for name, _ in head.named_parameters())
    assert all("bicubic" not in key for key in head.state_dict())
