"""BoxIou and the box coder: pairwise IoU, delta encoding/decoding, clipping. Pure torch, any float dtype.

Shapes:
    N, M    boxes in the two sets
    ...     any leading batch dimensions (broadcast)

    box_iou(a [...,N,4], b [...,M,4]) -> iou [...,N,M]     (xyxy, no +1; 0 where the union is 0)
    encode_boxes(reference [...,4], proposals [...,4], weights) -> deltas [...,4]
    decode_boxes(deltas [...,4], boxes [...,4], weights, clip) -> boxes [...,4]
    clip_boxes(boxes [B,N,4], image_sizes [B,2] (h, w)) -> boxes [B,N,4]

The coder math is torchvision's BoxCoder (`encode_single` / `decode_single`) written element-wise with the same
operation order, so results are bitwise identical for the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _upcast(t: Tensor) -> Tensor:
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU [...,N,M] of xyxy boxes a [...,N,4] and b [...,M,4] (torchvision semantics, 0/0 -> 0)."""
    a = _upcast(a)
    b = _upcast(b)
    area_a = box_area(a)
    area_b = box_area(b)
    lt = torch.max(a[..., :, None, :2], b[..., None, :, :2])  # [...,N,M,2]
    rb = torch.min(a[..., :, None, 2:], b[..., None, :, 2:])  # [...,N,M,2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    iou = inter / union
    return torch.where(union > 0, iou, torch.zeros_like(iou))


def encode_boxes(reference: Tensor, proposals: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets [...,4] that move `proposals` onto `reference` (torchvision `encode_boxes`).
    x and y go through the same element-wise formula together as (x, y) pairs: fewer ops, the same bits."""
    wx, wy, ww, wh = (float(w) for w in weights)
    ex_wh = proposals[..., 2:] - proposals[..., :2]
    ex_ctr = proposals[..., :2] + 0.5 * ex_wh
    gt_wh = reference[..., 2:] - reference[..., :2]
    gt_ctr = reference[..., :2] + 0.5 * gt_wh
    w_ctr = wx if wx == wy else proposals.new_tensor((wx, wy))
    w_size = ww if ww == wh else proposals.new_tensor((ww, wh))
    d_ctr = w_ctr * (gt_ctr - ex_ctr) / ex_wh
    d_size = w_size * torch.log(gt_wh / ex_wh)
    return torch.cat((d_ctr, d_size), dim=-1)


def decode_boxes(
    deltas: Tensor,
    boxes: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Apply deltas [...,4] to boxes [...,4] (broadcast); dw/dh are clamped at `clip` (torchvision `decode_single`)."""
    boxes = boxes.to(deltas.dtype)
    wx, wy, ww, wh = (float(w) for w in weights)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights

    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)

    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    c_to_c_w = 0.5 * pred_w
    c_to_c_h = 0.5 * pred_h
    return torch.stack(
        (pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h, pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h), dim=-1
    )


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clamp boxes [B,N,4] into [0,w]x[0,h] of each image; image_sizes [B,2] (h, w)."""
    hw = image_sizes.to(boxes.dtype)
    h = hw[:, 0].view(-1, 1)
    w = hw[:, 1].view(-1, 1)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x1 = torch.min(torch.max(boxes[..., 0], zero), w)
    y1 = torch.min(torch.max(boxes[..., 1], zero), h)
    x2 = torch.min(torch.max(boxes[..., 2], zero), w)
    y2 = torch.min(torch.max(boxes[..., 3], zero), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def box_sizes_at_least(boxes: Tensor, min_size: float) -> Tensor:
    """bool [...]: both sides >= min_size (torchvision `remove_small_boxes` as a mask)."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)
