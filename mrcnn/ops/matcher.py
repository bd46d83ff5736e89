"""Proposal matching (torchvision `Matcher` semantics), written without in-place indexing.

Shapes:
    G   ground-truth boxes
    P   predictions (anchors / proposals)

    match_proposals(iou [G,P], high, low, allow_low_quality) -> matches [P] int64
        matches[p] = index of the best ground truth when its IoU >= high,
                     -1 (BELOW_LOW) when the best IoU < low,
                     -2 (BETWEEN) when low <= best IoU < high;
        with allow_low_quality, every prediction that is the best match (ties included) of some ground truth keeps
        its best ground truth. G = 0 gives all -1 (an all-background image).
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match_proposals(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    G, P = iou.shape
    if G == 0:
        return torch.full((P,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
    if P == 0:
        return torch.zeros((0,), dtype=torch.int64, device=iou.device)
    # 1. best ground truth per prediction
    vals, best = iou.max(dim=0)
    below = torch.full_like(best, BELOW_LOW_THRESHOLD)
    between = torch.full_like(best, BETWEEN_THRESHOLDS)
    matches = torch.where(vals < low, below, torch.where(vals < high, between, best))
    # 2. low-quality matches: predictions that are some ground truth's best (ties included)
    if allow_low_quality:
        highest = iou.max(dim=1).values
        is_best = (iou == highest[:, None]).any(dim=0)
        matches = torch.where(is_best, best, matches)
    return matches
