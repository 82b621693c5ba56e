"""Super-resolution (x scale): pixel-shuffle residual over bicubic upsampling of the input."""
from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_perception.contract import TaskSpec
from mtl_perception.evaluation.metrics import SuperResolutionMetric
from training.models.blocks import ConvBNAct
from training.tasks.base import Task, labelled_mask, labelled_rows, register_task


def cubic_weight(distance: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (a = -0.75, PyTorch's and OpenCV's bicubic)."""
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def bicubic_phases(scale: int, stride: int = 2) -> "tuple[torch.Tensor, int, int]":
    """Bicubic upsampling by `scale` as a stride-`stride` convolution whose (stride * scale)^2
    output channels per colour are the output pixels of one input block, in PixelShuffle order:
    ([(stride*scale)^2, 1, K, K] weights, left pad, right pad), to be applied to the image
    padded by edge replication.

    Output pixel o of a row reads input coordinate (o + 0.5) / scale - 0.5 (half-pixel centres,
    `align_corners=False`) through the four taps around it, indices clamped to the image:
    exactly `F.interpolate(mode="bicubic", scale_factor=scale)`, in one convolution and one
    depth-to-space instead of a Resize node (onnxruntime's cubic Resize is slow on the CPU:
    about 11 ms of the head's 20 at 1024x512)."""
    phases = stride * scale
    taps = []  # per phase: (first tap relative to the block's first input pixel, 4 weights)
    for r in range(phases):
        x = (r + 0.5) / scale - 0.5
        first = int(np.floor(x)) - 1
        taps.append((first, [cubic_weight(x - (first + k)) for k in range(4)]))
    lo = min(first for first, _ in taps)
    hi = max(first for first, _ in taps) + 3
    size = hi - lo + 1
    row = torch.zeros(phases, size, dtype=torch.float64)
    for r, (first, weights) in enumerate(taps):
        row[r, first - lo:first - lo + 4] = torch.tensor(weights, dtype=torch.float64)
    kernel = torch.einsum("yi,xj->yxij", row, row).reshape(phases * phases, 1, size, size)
    return kernel.float(), -lo, hi - (stride - 1)


def bicubic_cells(scale: int, stride: int = 2) -> "tuple[torch.Tensor, int, int]":
    """`bicubic_phases` as a convolution on image cells: ([3 (stride*scale)^2, stride^2, k, k]
    weights for a groups=3 convolution, valid, of the space-to-depth (stride x stride cells, one
    group per colour) of the image padded by edge replication; left pad, right pad), both pads
    multiples of `stride` so that the cells of the padded image are those of the image.

    One cell-level convolution, 4 input channels per group, instead of a stride-2 6x6 one with
    one input channel per group: in onnxruntime at 1024x512, with the residual's sum fused in,
    2.4-2.7 ms against 3.3 + 1.0 for the separate addition; the same cells feed the head's
    pixel branch."""
    kernel, left, right = bicubic_phases(scale, stride)
    front = -left % stride  # zero taps in front so that the left pad is a whole number of cells
    size = kernel.shape[-1] + front
    back = -size % stride
    kernel = F.pad(kernel, (front, back, front, back))
    left, right = left + front, right + back
    cells = kernel.shape[-1] // stride
    # tap (stride * a + dy, stride * b + dx) of the phase kernel -> cell (a, b), channel (dy, dx)
    cell_kernel = kernel.reshape(-1, cells, stride, cells, stride).permute(0, 2, 4, 1, 3)
    cell_kernel = cell_kernel.reshape(-1, stride * stride, cells, cells)
    return cell_kernel.repeat(3, 1, 1, 1), left, right


class SuperResolutionHead(nn.Module):
    """Works at stride 2 on the stem features, the upsampled pyramid and the input pixels
    themselves (space-to-depth, 2x2 -> 12 channels), then pixel-shuffles by 2*scale to the output
    size; predicts only the residual over bicubic upsampling, in units of `RESIDUAL_UNIT`.

    The input pixels: a compact trunk's stem (8-16 channels after BN + ReLU) cannot carry all 12
    values of each 2x2 block of the image, and the detail super-resolution restores is exactly
    what it drops. The residual unit: with Adam every weight moves by about lr per step whatever
    its gradient, and bicubic's error is a few hundredths of full range (L1 about 0.02), so an
    output layer in full-range units overshoots the residual it learns by an order of magnitude
    at the usual learning rates (measured: no gain over bicubic until the cosine schedule had
    nearly reached zero)."""

    RESIDUAL_UNIT = 0.03  # of full range; about bicubic's typical error on photos and synthetic frames
    PIXEL_CHANNELS = 12  # the input image, 2x2 space-to-depth
    PIXEL_GAIN, PIXEL_OFFSET = 4.0, -2.0  # the pixel branch reads cells * gain + offset: centred, about unit spread

    def __init__(self, stem_channels: int, pyramid_channels: int, scale: int, width: int = 32):
        super().__init__()
        self.scale = scale
        self.reduce = nn.Conv2d(pyramid_channels, width - stem_channels, 1) if width > stem_channels else None
        cin = (width if self.reduce is not None else stem_channels) + self.PIXEL_CHANNELS
        self.body = ConvBNAct(cin, width)
        self.out = nn.Conv2d(width, 3 * (2 * scale) ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2 * scale)
        nn.init.zeros_(self.out.weight)  # start as plain bicubic
        nn.init.zeros_(self.out.bias)
        kernel, self._pad_left, self._pad_right = bicubic_cells(scale)
        self.register_buffer("bicubic", kernel, persistent=False)  # fixed, not in checkpoints

    def forward(self, features, image01):
        cells = self.image_cells(image01)
        residual = self.out(self.hidden(features, cells)) * self.RESIDUAL_UNIT
        return self.shuffle(residual + self.bicubic_base(cells))  # [0, 1] scale, unclamped for the loss

    def image_cells(self, image01: torch.Tensor) -> torch.Tensor:
        """2x2 space-to-depth of `padded_image`."""
        return F.pixel_unshuffle(self.padded_image(image01), 2)

    def padded_image(self, image01: torch.Tensor) -> torch.Tensor:
        """The image padded by edge replication, by `bicubic_cells`' pads."""
        left, right = self._pad_left, self._pad_right
        return F.pad(image01, (left, right, left, right), mode="replicate")

    def hidden(self, features, cells: torch.Tensor) -> torch.Tensor:
        """The body's output: stem, upsampled pyramid and the image's own cells, one layer."""
        return self.body(torch.cat(self.body_inputs(features, cells), dim=1))

    def body_sizes(self) -> "list[int]":
        """The channels of each of `body_inputs`."""
        stem = self.body[0].in_channels - self.PIXEL_CHANNELS - (self.reduce.out_channels if self.reduce else 0)
        return [stem] + ([self.reduce.out_channels] if self.reduce is not None else []) + [self.PIXEL_CHANNELS]

    def body_inputs(self, features, cells: torch.Tensor) -> "list[torch.Tensor]":
        """What the body reads, concatenated: the stem features, the pyramid upsampled to
        stride 2 (where the stem is narrower than the head) and the image's 2x2 cells."""
        pixels = self.cell_window(cells, features["s2"]) * self.PIXEL_GAIN + self.PIXEL_OFFSET
        return self.feature_inputs(features) + [pixels]

    def feature_inputs(self, features) -> "list[torch.Tensor]":
        """The body's inputs from the trunk: the stem features and the reduced, upsampled pyramid."""
        x = features["s2"]
        parts = [x]
        if self.reduce is not None:
            # 1x1 reduction before the bilinear upsampling: both are linear (and the bilinear
            # weights sum to one, so the bias commutes too), so this equals upsample-then-reduce
            # while interpolating width - stem channels instead of all pyramid channels
            parts.append(F.interpolate(self.reduce(features["s4"]), size=x.shape[-2:], mode="bilinear",
                                       align_corners=False))
        return parts

    def cell_window(self, cells: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The cells of the unpadded image (those aligned with the stride-2 features `like`)."""
        c = self._pad_left // 2
        return cells[:, :, c:c + like.shape[-2], c:c + like.shape[-1]]

    def bicubic_base(self, cells: torch.Tensor) -> torch.Tensor:
        """Bicubic upsampling of the input, per input block in PixelShuffle order, from `image_cells`."""
        return F.conv2d(cells, self.bicubic.to(cells.dtype), groups=3)


class SuperResolutionImage(nn.Module):
    """A (BN-folded) head with its decode folded in, for the exported graph: (features, image01)
    -> {"image": uint8 NHWC}, the same image as `decode(head(...))` up to rounding ties.

    The exported image costs one convolution + sum (bicubic base and residual, the clip fused in),
    a depth-to-space, a truncating cast and the NHWC transpose at full resolution:
    - the 255 of the uint8 scale goes into the last convolution and the bicubic one, the 0.5 of
      rounding into the bicubic one's bias, so onnxruntime fuses the two with the clip;
    - the image's cells come from one-hot stride-2 convolutions (exact copies of the pixels)
      instead of the reshape + 6-D transpose a space-to-depth exports as: one on the edge-padded
      image for the bicubic base, one on the image itself for the pixel branch, with that
      branch's gain and offset and widened by zero channels to `PIXEL_BLOCK`, so that onnxruntime
      keeps the branch in its blocked layout (12 channels cost a slice and two layout reorders).
    Measured on ResNet-18 at 512x256: docs/backbone_sharing_cost.md."""

    PIXEL_BLOCK = 16  # a multiple of onnxruntime's blocked-layout width (8 with AVX2, 16 with AVX-512)

    def __init__(self, head: SuperResolutionHead):
        super().__init__()
        self.head = head
        self.body = PartwiseBody(head.body, head.body_sizes())
        self.levels = copy.deepcopy(head.out)
        last = self.levels if isinstance(self.levels, nn.Conv2d) else [
            m for m in self.levels.modules() if isinstance(m, nn.Conv2d)][-1]
        gain = 255.0 * head.RESIDUAL_UNIT
        with torch.no_grad():
            last.weight.mul_(gain)
            if last.bias is not None:
                last.bias.mul_(gain)
        self.register_buffer("cell_copy", space_to_depth_kernel(3, 2), persistent=False)
        self.register_buffer("bicubic", head.bicubic * 255.0, persistent=False)
        self.register_buffer("rounding", torch.full((head.bicubic.shape[0],), 0.5), persistent=False)
        n = head.PIXEL_CHANNELS
        width = self.PIXEL_BLOCK if self.body.widen_last(self.PIXEL_BLOCK) else n
        pixel_kernel = torch.zeros(width, 3, 2, 2)
        pixel_kernel[:n] = space_to_depth_kernel(3, 2) * head.PIXEL_GAIN
        pixel_bias = torch.zeros(width)
        pixel_bias[:n] = head.PIXEL_OFFSET
        self.register_buffer("pixel_kernel", pixel_kernel, persistent=False)
        self.register_buffer("pixel_bias", pixel_bias, persistent=False)

    def forward(self, features, image01):
        head = self.head
        cells = F.conv2d(head.padded_image(image01), self.cell_copy, stride=2)  # = head.image_cells
        base = F.conv2d(cells, self.bicubic, self.rounding, groups=3)
        pixels = F.conv2d(image01, self.pixel_kernel, self.pixel_bias, stride=2)  # = the branch's cells, widened
        levels = (self.levels(self.body(head.feature_inputs(features) + [pixels])) + base).clamp(0, 255)
        image = head.shuffle(levels).to(torch.uint8)  # truncation of x + 0.5: rounding
        return {"image": image.permute(0, 2, 3, 1)}  # NHWC, the input's colour order


def space_to_depth_kernel(channels: int, block: int) -> torch.Tensor:
    """One-hot weights of a stride-`block` convolution equal to `F.pixel_unshuffle(x, block)`."""
    kernel = torch.zeros(channels * block * block, channels, block, block)
    for c in range(channels):
        for dy in range(block):
            for dx in range(block):
                kernel[(c * block + dy) * block + dx, c, dy, dx] = 1.0
    return kernel


class PartwiseBody(nn.Module):
    """`body(torch.cat(parts, 1))` without the concatenation, for a (BN-folded) body that starts
    with a dense convolution or with a depthwise one followed by a 1x1: that dense layer is split
    by input channels into one convolution per part, summed (onnxruntime fuses the sums into the
    convolutions), a depthwise one before it into one per part. A concatenation of feature maps
    costs onnxruntime a copy plus a layout reorder on each side of it. Other bodies: concatenated."""

    def __init__(self, body: nn.Module, sizes: "list[int]"):
        super().__init__()
        layers = [m for m in body.children() if not isinstance(m, nn.Identity)]
        first = layers[0] if layers else None
        depthwise = (isinstance(first, nn.Conv2d) and first.groups == first.in_channels == first.out_channels
                     and len(layers) > 1 and isinstance(layers[1], nn.Conv2d) and layers[1].kernel_size == (1, 1)
                     and layers[1].groups == 1)
        dense = isinstance(first, nn.Conv2d) and first.groups == 1
        self.whole = None if (dense or depthwise) else copy.deepcopy(body)
        self.spatial = nn.ModuleList()
        self.mixing = nn.ModuleList()
        self.rest = nn.Sequential()
        if self.whole is not None:
            return
        mixing = layers[1] if depthwise else first
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        with torch.no_grad():
            for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
                if depthwise:
                    self.spatial.append(_conv_slice(first, lo, hi, outputs=True, bias=True))
                self.mixing.append(_conv_slice(mixing, lo, hi, outputs=False, bias=i == 0))
        self.rest = nn.Sequential(*[copy.deepcopy(m) for m in layers[(2 if depthwise else 1):]])

    def widen_last(self, channels: int) -> bool:
        """Let the last part have `channels` channels, the added ones ignored (zero weights); False
        (and nothing changed) for a concatenated body."""
        if self.whole is not None:
            return False
        with torch.no_grad():
            if len(self.spatial):
                self.spatial[-1] = _widened(self.spatial[-1], channels, depthwise=True)
            self.mixing[-1] = _widened(self.mixing[-1], channels, depthwise=False)
        return True

    def forward(self, parts: "list[torch.Tensor]") -> torch.Tensor:
        if self.whole is not None:
            return self.whole(torch.cat(parts, dim=1))
        total = None
        for i, part in enumerate(parts):
            if len(self.spatial):
                part = self.spatial[i](part)
            y = self.mixing[i](part)
            total = y if total is None else total + y
        return self.rest(total)


def _conv_slice(conv: nn.Conv2d, lo: int, hi: int, outputs: bool, bias: bool) -> nn.Conv2d:
    """Channels lo:hi of a convolution: of its inputs and outputs (depthwise) or of its inputs."""
    n = hi - lo
    groups = n if outputs else 1
    part = nn.Conv2d(n, n if outputs else conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, groups, bias=bias and conv.bias is not None)
    part.weight.copy_(conv.weight[lo:hi] if outputs else conv.weight[:, lo:hi])
    if part.bias is not None:
        part.bias.copy_(conv.bias[lo:hi] if outputs else conv.bias)
    return part


def _widened(conv: nn.Conv2d, channels: int, depthwise: bool) -> nn.Conv2d:
    """`conv` reading `channels` input channels, the added ones with zero weights (a depthwise
    one also gains as many zero outputs)."""
    out = channels if depthwise else conv.out_channels
    wide = nn.Conv2d(channels, out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     channels if depthwise else 1, bias=conv.bias is not None)
    wide.weight.zero_()
    n = conv.in_channels
    if depthwise:
        wide.weight[:n] = conv.weight
    else:
        wide.weight[:, :n] = conv.weight
    if wide.bias is not None:
        wide.bias.zero_()
        wide.bias[:conv.out_channels] = conv.bias
    return wide


def super_resolution_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 to the teacher's output image ([0, 1] scale, unclamped as the heads return it)."""
    return (student.float() - teacher.float()).abs().mean()


@register_task
class SuperResolutionTask(Task):
    name = "super_resolution"
    kind = "super_resolution"
    main_metric = "psnr"

    def build_head(self, feature_channels):
        return SuperResolutionHead(feature_channels["s2"], feature_channels["s4"], self.info.sr_scale)

    def prepare(self, sample):
        return {"super_resolution_target": np.ascontiguousarray(sample["hr_image"].transpose(2, 0, 1))}

    def loss(self, pred, batch):
        """Mean L1 over the labelled samples (zero, graph-connected, without any)."""
        error = (pred - batch["super_resolution_target"].float() / 255.0).abs()
        keep = labelled_mask(batch, self.name, error)
        if bool(keep.all()):  # the plain mean (bit for bit what it was before partial labels)
            return error.mean()
        per_sample = error.mean(dim=(1, 2, 3))
        keep = keep.to(per_sample.dtype)
        return (per_sample * keep).sum() / keep.sum().clamp(min=1)

    def decode(self, pred, image01):
        image = (pred.clamp(0, 1) * 255.0).round().to(torch.uint8)
        return {"image": image.permute(0, 2, 3, 1)}  # NHWC, the input's colour order

    def export_head(self, head):
        return SuperResolutionImage(head)

    def spec(self, output_names: Mapping[str, str]) -> TaskSpec:
        return TaskSpec(kind=self.kind, outputs=dict(output_names), scale=self.info.sr_scale)

    def new_metric(self):
        return SuperResolutionMetric()

    def update_metric(self, metric, decoded, batch):
        for i in labelled_rows(batch, decoded["image"].shape[0], self.name):
            target = batch["super_resolution_target"][i].transpose(1, 2, 0)
            metric.update(decoded["image"][i], target, lowres=batch["image"][i].transpose(1, 2, 0))

    def distill_loss(self, student, teacher, config):
        return super_resolution_kd(student, teacher)
