"""PreNmsSelect: per-level RPN proposal selection (the seed's GeneratePreNMSUprightBoxes), fixed-size output.

Shapes:
    B   images
    A   anchors of this level (H*W*anchors-per-location)
    K   min(top_k, A) selected slots

    pre_nms_select(anchors [A,4], objectness [B,A] (logits), deltas [B,A,4], image_sizes [B,2] int (h, w),
                   top_k, min_size, weights=(1,1,1,1), clip=log(1000/16))
        -> boxes [B,K,4], scores [B,K] (sigmoid of the logits, sorted descending), valid [B,K] bool

Steps are exactly torchvision's RegionProposalNetwork for one level: top-k by objectness logit (`topk`, sorted),
decode the selected deltas on their anchors, clip to the unpadded image, mark boxes with a side < min_size invalid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mrcnn.ops.boxes import box_sizes_at_least, clip_boxes, decode_boxes


def pre_nms_select(
    anchors: Tensor,
    objectness: Tensor,
    deltas: Tensor,
    image_sizes: Tensor,
    top_k: int,
    min_size: float,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = math.log(1000.0 / 16),
) -> tuple[Tensor, Tensor, Tensor]:
    B, A = objectness.shape
    k = min(int(top_k), int(A))
    # 1. top-k anchors by objectness logit, sorted descending
    logits, idx = objectness.topk(k, dim=1)
    # 2. decode the selected deltas on their anchors
    sel_deltas = torch.gather(deltas, 1, idx[..., None].expand(B, k, 4))
    sel_anchors = anchors[idx]  # [B,K,4]
    boxes = decode_boxes(sel_deltas, sel_anchors, weights, clip)
    # 3. clip to the unpadded image, drop (mark) small boxes
    boxes = clip_boxes(boxes, image_sizes)
    valid = box_sizes_at_least(boxes, min_size)
    return boxes, torch.sigmoid(logits), valid
