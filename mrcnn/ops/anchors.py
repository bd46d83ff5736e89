"""AnchorGrid: the anchors of one FPN level, from the runtime shapes of the feature map and the padded image.

Shapes (detectron2-style shorthand):
    B   images in the batch
    C   feature channels
    H, W    feature map height / width of this level
    Hi, Wi  padded image height / width
    A   anchors per location = len(sizes) * len(aspect_ratios)

    anchor_grid(feature [B,C,H,W], image [B,3,Hi,Wi], sizes, aspect_ratios, stride=0) -> anchors [H*W*A, 4] float32

Only the *shapes* of `feature` and `image` are read (an ONNX/TensorRT node takes them as shape inputs).
Order: for each location (row-major: y, then x), each base anchor (ratio-major, then size), exactly like
torchvision's AnchorGenerator: base anchors are `round([-w, -h, w, h] / 2)` with `h = size * sqrt(ratio)`,
`w = size / sqrt(ratio)` computed in float32, shifted by `(x * stride_w, y * stride_h)`.
`stride = 0` means torchvision's rule `stride_h = Hi // H`, `stride_w = Wi // W` (so P6 of an 800-px image has
stride 800 // 13 = 61, not 64); a positive `stride` forces both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], device=None) -> Tensor:
    """[A,4] zero-centred anchors, float32, rounded exactly like torchvision's `generate_anchors`."""
    scales = torch.as_tensor(list(sizes), dtype=torch.float32, device=device)
    ratios = torch.as_tensor(list(aspect_ratios), dtype=torch.float32, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def anchor_grid(
    feature: Tensor,
    image: Tensor,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    stride: int = 0,
) -> Tensor:
    """Anchors [H*W*A, 4] (float32, xyxy, padded-image pixels) of one feature level. See the module docstring."""
    H, W = feature.shape[-2], feature.shape[-1]
    Hi, Wi = image.shape[-2], image.shape[-1]
    device = feature.device
    if stride > 0:
        stride_h, stride_w = stride, stride
    else:
        stride_h, stride_w = Hi // H, Wi // W
    cell = base_anchors(sizes, aspect_ratios, device=device)
    # 1. integer shifts of every location (torchvision: int32 arange * int64 stride)
    shifts_x = torch.arange(0, W, dtype=torch.int64, device=device) * stride_w
    shifts_y = torch.arange(0, H, dtype=torch.int64, device=device) * stride_h
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x = shift_x.reshape(-1)
    shift_y = shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    # 2. every (location, base anchor) pair
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)
