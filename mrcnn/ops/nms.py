"""BoxNms: batched, class-aware greedy NMS with fixed-size outputs and valid counts.

Shapes:
    B   images
    N   candidate boxes per image
    K   max_output slots

    box_nms(boxes [B,N,4], scores [B,N], classes [B,N] int64, valid [B,N] bool,
            iou_threshold, score_threshold, max_output)
        -> boxes [B,K,4], scores [B,K], classes [B,K] int64, indices [B,K] int64, num [B] int64

Candidates are the `valid` entries with `score > score_threshold` (strict; pass -inf to disable). Boxes of
different classes never suppress each other; a box is suppressed by a higher-scored kept box of its class with
IoU > iou_threshold. Kept boxes come sorted by score (descending) in slots [0, num); padding slots hold boxes 0,
scores 0, classes 0 and indices -1. `indices` point into the N input candidates.

`box_nms` equals `torchvision.ops.batched_nms(...)[:max_output]` on the candidates in input order (it calls it, per
image: the torch peer); `box_nms_reference` is the naive float64 loop that defines the semantics for tests and for
the C++/CUDA kernels.
"""
from __future__ import annotations

import torch
import torchvision
from torch import Tensor

from mrcnn.ops.boxes import box_iou


def _pack(
    boxes: Tensor, scores: Tensor, classes: Tensor, keeps: list[Tensor], max_output: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    B = boxes.shape[0]
    K = int(max_output)
    device = boxes.device
    out_boxes = boxes.new_zeros((B, K, 4))
    out_scores = scores.new_zeros((B, K))
    out_classes = torch.zeros((B, K), dtype=torch.int64, device=device)
    out_idx = torch.full((B, K), -1, dtype=torch.int64, device=device)
    nums = []
    for i, keep in enumerate(keeps):
        keep = keep[:K]
        n = keep.numel()
        nums.append(n)
        if n:
            out_boxes[i, :n] = boxes[i, keep]
            out_scores[i, :n] = scores[i, keep]
            out_classes[i, :n] = classes[i, keep].to(torch.int64)
            out_idx[i, :n] = keep
    return out_boxes, out_scores, out_classes, out_idx, torch.tensor(nums, dtype=torch.int64, device=device)


def _candidates(scores: Tensor, valid: Tensor, score_threshold: float) -> Tensor:
    ok = valid.bool()
    if score_threshold != float("-inf"):
        ok = ok & (scores > score_threshold)
    return ok


def box_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    valid: Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_output: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    ok = _candidates(scores, valid, score_threshold)
    keeps = []
    for i in range(boxes.shape[0]):
        cand = torch.where(ok[i])[0]
        keep = torchvision.ops.batched_nms(
            boxes[i, cand], scores[i, cand], classes[i, cand], float(iou_threshold)
        )
        keeps.append(cand[keep[: int(max_output)]])
    return _pack(boxes, scores, classes, keeps, max_output)


def box_nms_reference(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    valid: Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_output: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Naive float64 greedy loop with the semantics of `box_nms` (ties: lower input index first): each kept box
    suppresses the later candidates of its class that it overlaps by more than `iou_threshold` (the IoUs of one
    kept box with all later candidates in one call)."""
    ok = _candidates(scores, valid, score_threshold)
    b64 = boxes.double()
    s64 = scores.double()
    keeps = []
    for i in range(boxes.shape[0]):
        cand = torch.where(ok[i])[0].tolist()
        cand.sort(key=lambda j: (-float(s64[i, j]), j))
        order = torch.tensor(cand, dtype=torch.int64, device=boxes.device)
        suppressed = torch.zeros(len(cand), dtype=torch.bool, device=boxes.device)
        keep = []
        for pos, j in enumerate(cand):
            if suppressed[pos]:
                continue
            keep.append(j)
            if len(keep) == max_output:
                break
            later = order[pos + 1:]
            iou = box_iou(b64[i, j][None], b64[i, later])[0]
            suppressed[pos + 1:] |= (iou > iou_threshold) & (classes[i, later] == classes[i, j])
        keeps.append(torch.tensor(keep, dtype=torch.int64, device=boxes.device))
    return _pack(boxes, scores, classes, keeps, max_output)
