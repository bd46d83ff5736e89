"""Region proposal network: head, anchors, fixed-size proposals (eval and train) and per-image losses.

Shapes:
    B   images;  L   FPN levels (P2..P6);  A_l   anchors of level l (H_l*W_l*a);  A = sum A_l
    P   proposal slots (post-NMS top-n);  G_i   ground-truth boxes of image i

    head([P_l]) -> objectness [B, a, H_l, W_l], deltas [B, 4a, H_l, W_l] per level
    flatten -> objectness [B, A_l], deltas [B, A_l, 4] in (y, x, anchor) order, like torchvision
    proposals(...) -> boxes [B, P, 4], valid [B, P] (sorted by objectness, padding at the end)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrcnn.config import ModelConfig
from mrcnn.ops import BETWEEN_THRESHOLDS, Ops, encode_boxes


class RPNHead(nn.Module):
    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.constant_(m.bias, 0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_level(logits: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """[B,a,H,W], [B,4a,H,W] -> [B,H*W*a] float32, [B,H*W*a,4] float32 in (y, x, anchor) order."""
    B, a, H, W = logits.shape
    obj = logits.permute(0, 2, 3, 1).reshape(B, -1).float()
    d = deltas.reshape(B, a, 4, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, 4).float()
    return obj, d


def sampling_keys(n: int, generators: Sequence[torch.Generator | None], device: torch.device) -> Tensor:
    """[B, n] uniform keys in [0, 1), one row per image. A row whose generator is given is drawn from it alone (the
    choice does not depend on the rest of the batch); without generators one draw from the global RNG."""
    if all(g is None for g in generators):
        return torch.rand(len(generators), n, device=device)
    return torch.stack(
        [
            torch.rand(n, device=device) if g is None else torch.rand(n, generator=g, device=g.device).to(device)
            for g in generators
        ]
    )


def sample_balanced(
    labels: Tensor, batch_size: int, positive_fraction: float, generators: Sequence[torch.Generator | None]
) -> tuple[Tensor, Tensor]:
    """torchvision's BalancedPositiveNegativeSampler for a whole batch, fixed-size and without host syncs.

    labels [B, N]: >= 1 positive, 0 negative, < 0 ignored. Per image it draws min(#pos, batch_size * fraction)
    positives and min(#neg, batch_size - #drawn positives) negatives uniformly at random (the smallest random keys
    of each kind; torchvision takes a random permutation: the same distribution).
    Returns (index [B, S], sampled [B, S]) with S = min(batch_size, N): slot indices into N and whether the slot
    holds a sample. The drawn positives come first, then the negatives, then the unused slots.
    """
    B, N = labels.shape
    keys = sampling_keys(N, generators, labels.device)
    none = torch.full_like(keys, 2.0)  # above every key: not of this kind
    n_pos = min(int(batch_size * positive_fraction), N)
    S = min(batch_size, N)
    kp, ip = torch.where(labels >= 1, keys, none).topk(n_pos, dim=1, largest=False)
    ok_p = kp < 1.0
    kn, in_ = torch.where(labels == 0, keys, none).topk(S, dim=1, largest=False)
    room = batch_size - ok_p.sum(1, keepdim=True)
    ok_n = (kn < 1.0) & (torch.arange(S, device=labels.device) < room)
    index, ok = torch.cat([ip, in_], 1), torch.cat([ok_p, ok_n], 1)
    # compact to S slots: at most batch_size samples per image, the sampled slots first in their order
    order = torch.argsort((~ok).to(torch.uint8), dim=1, stable=True)[:, :S]
    return index.gather(1, order), ok.gather(1, order)


def pad_rows(rows: Sequence[Tensor], value: float = 0.0) -> Tensor:
    """[B, max(1, max len), ...] from per-image tensors of different lengths."""
    if max((r.shape[0] for r in rows), default=0) == 0:
        return rows[0].new_full((len(rows), 1, *rows[0].shape[1:]), value)
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, ...] at index [B, S] -> [B, S, ...]."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))


class RPN(nn.Module):
    # The custom ops (docs/design.md §3) run as the model's Ops choose (MaskRCNN.set_ops): the reference or the native
    # kernel; an export chooses "native", so the traced graph holds torch.ops.mrcnn.* nodes.
    def __init__(self, cfg: ModelConfig, in_channels: int, ops: Ops) -> None:
        super().__init__()
        self.cfg, self.ops = cfg, ops
        self.num_anchors = len(cfg.aspect_ratios)  # one size per level
        self.head = RPNHead(in_channels, self.num_anchors)

    def anchors(self, features: list[Tensor], images: Tensor) -> list[Tensor]:
        return [
            self.ops.anchor_grid(f, images, (float(s),), tuple(float(r) for r in self.cfg.aspect_ratios))
            for f, s in zip(features, self.cfg.anchor_sizes, strict=True)
        ]

    def proposals(
        self, anchors: list[Tensor], objectness: list[Tensor], deltas: list[Tensor], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Fixed-size proposals: per-level PreNmsSelect, score threshold, per-level BoxNms, post-NMS top-n."""
        cfg = self.cfg
        pre_n = cfg.rpn_pre_nms_top_n_train if self.training else cfg.rpn_pre_nms_top_n_test
        post_n = cfg.rpn_post_nms_top_n_train if self.training else cfg.rpn_post_nms_top_n_test
        boxes, scores, valid, levels = [], [], [], []
        # 1. top-n per level, decode, clip, drop small
        for lvl, (a, o, d) in enumerate(zip(anchors, objectness, deltas, strict=True)):
            b, s, v = self.ops.pre_nms_select(a, o.detach(), d.detach(), image_sizes, pre_n, cfg.rpn_min_size)
            boxes.append(b)
            scores.append(s)
            valid.append(v)
            levels.append(torch.full_like(v, lvl, dtype=torch.int64))
        boxes_t = torch.cat(boxes, 1)
        scores_t = torch.cat(scores, 1)
        valid_t = torch.cat(valid, 1) & (scores_t >= cfg.rpn_score_thresh)
        # 2. NMS independently per level, keep the post-NMS top-n
        out_boxes, _, _, _, num = self.ops.box_nms(
            boxes_t, scores_t, torch.cat(levels, 1), valid_t, cfg.rpn_nms, float("-inf"), post_n
        )
        slots = torch.arange(out_boxes.shape[1], device=num.device)
        return out_boxes, slots[None, :] < num[:, None]

    def loss(
        self,
        anchors: Tensor,
        objectness: Tensor,
        deltas: Tensor,
        targets: list[dict[str, Tensor]],
        generators: Sequence[torch.Generator | None],
    ) -> tuple[Tensor, Tensor]:
        """RPN losses, each normalised by its image's sampled count and averaged over images.
        anchors [A,4], objectness [B,A], deltas [B,A,4] (float32). Matching runs per image (G_i differs); sampling and
        the losses run on the whole batch at once."""
        cfg = self.cfg
        gts = [t["boxes"].to(device=anchors.device, dtype=torch.float32) for t in targets]
        # 1. label anchors: 1 foreground, 0 background, -1 ignored
        m = torch.stack(
            [
                self.ops.match_proposals(self.ops.box_iou(gt, anchors), cfg.rpn_fg_iou, cfg.rpn_bg_iou, True)
                for gt in gts
            ]
        )
        labels = torch.where(m >= 0, 1, torch.where(m == BETWEEN_THRESHOLDS, -1, 0))
        # 2. sample; 3. losses normalised by each image's sampled count
        index, ok = sample_balanced(labels, cfg.rpn_batch_per_image, cfg.rpn_positive_fraction, generators)
        pos = ok & (labels.gather(1, index) > 0)
        count = ok.sum(1).clamp(min=1)
        loss_obj = F.binary_cross_entropy_with_logits(
            objectness.gather(1, index), pos.to(objectness.dtype), reduction="none"
        )
        matched = gather_rows(pad_rows(gts), m.gather(1, index).clamp(min=0))
        reg = torch.where(pos[..., None], encode_boxes(matched, anchors[index]), 0.0)
        loss_box = F.smooth_l1_loss(gather_rows(deltas, index), reg, beta=1 / 9, reduction="none").sum(2)
        return ((loss_obj * ok).sum(1) / count).mean(), ((loss_box * pos).sum(1) / count).mean()
