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

`box_nms` runs `torchvision.ops.nms` once per class on the candidates' own coordinates (what torchvision's
`batched_nms` does above 1,000 boxes on the CPU); the naive float64 loop that defines the semantics for the tests
and for the C++/CUDA kernels (which compute each IoU as torchvision's nms does, bit for bit) is tests/references.py's
`box_nms_reference`.

Not torchvision's `batched_nms` as such: at or below 1,000 boxes on the CPU (100,000 on a GPU) it shifts every box
by class x (largest coordinate + 1) and runs one nms on the shifted boxes. In float32 the shift rounds each
coordinate to the grid of the shifted value (1/128 px at 100,000), so an IoU within about 1e-4 of the threshold can
land on the other side of it: torchvision keeps a box that the IoU of its true coordinates suppresses, or the
reverse. tests/ops/test_ops.py builds such a pair (float64 IoU 0.500001 > 0.5: torchvision's batched_nms keeps
both, nms on the class alone, the kernels and the reference suppress one); the ONNX flavours decide on the
boxes' own coordinates too (portable: NonMaxSuppression with one score row per class); docs/design.md says more.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor


def pack_kept(
    boxes: Tensor, scores: Tensor, classes: Tensor, keeps: list[Tensor], max_output: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fixed-size outputs of box_nms from each image's kept indices (in score order): slots [0, num) hold the
    kept boxes, the padding boxes 0, scores 0, classes 0 and indices -1."""
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


def nms_candidates(scores: Tensor, valid: Tensor, score_threshold: float) -> Tensor:
    """The entries NMS considers: `valid`, with a score above `score_threshold` (strict; -inf: all valid ones)."""
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
    ok = nms_candidates(scores, valid, score_threshold)
    keeps = []
    for i in range(boxes.shape[0]):
        cand = torch.where(ok[i])[0]
        kept = [
            cand[ids[torchvision.ops.nms(boxes[i, cand[ids]], scores[i, cand[ids]], float(iou_threshold))]]
            for ids in _per_class(classes[i, cand])
        ]
        keep = torch.cat(kept) if kept else cand
        keep = keep.sort().values  # input order, so that the stable sort below puts ties lower index first
        order = torch.sort(scores[i, keep], descending=True, stable=True).indices
        keeps.append(keep[order][: int(max_output)])
    return pack_kept(boxes, scores, classes, keeps, max_output)


def _per_class(classes: Tensor) -> list[Tensor]:
    """Indices of each class's entries (classes in ascending order)."""
    if classes.numel() == 0:
        return []
    order = torch.sort(classes, stable=True).indices
    counts = torch.unique_consecutive(classes[order], return_counts=True)[1]
    return list(order.split(counts.tolist()))
