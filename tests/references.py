"""What the tests compare against: the pure-torch references of the custom ops (mrcnn.ops.REFERENCE, whatever
backend a model would choose), and the naive float64 loop that defines box_nms's semantics (the kernels equal it bit
for bit where they compute the same IoUs)."""

from __future__ import annotations

import torch
from torch import Tensor

from mrcnn.ops import REFERENCE, clip_boxes, decode_boxes, encode_boxes
from mrcnn.ops.boxes import box_iou
from mrcnn.ops.nms import nms_candidates, pack_kept

anchor_grid = REFERENCE["anchor_grid"]
pre_nms_select = REFERENCE["pre_nms_select"]
box_nms = REFERENCE["box_nms"]
match_proposals = REFERENCE["match_proposals"]

__all__ = [
    "anchor_grid",
    "box_iou",
    "box_nms",
    "box_nms_reference",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "match_proposals",
    "pre_nms_select",
]


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
    ok = nms_candidates(scores, valid, score_threshold)
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
            later = order[pos + 1 :]
            iou = box_iou(b64[i, j][None], b64[i, later])[0]
            suppressed[pos + 1 :] |= (iou > iou_threshold) & (classes[i, later] == classes[i, j])
        keeps.append(torch.tensor(keep, dtype=torch.int64, device=boxes.device))
    return pack_kept(boxes, scores, classes, keeps, max_output)
