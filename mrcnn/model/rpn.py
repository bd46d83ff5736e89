"""Region proposal network: head, anchors, fixed-size proposals (eval and train) and per-image losses.

Shapes:
    B   images;  L   FPN levels (P2..P6);  A_l   anchors of level l (H_l*W_l*a);  A = sum A_l
    P   proposal slots (post-NMS top-n);  G_i   ground-truth boxes of image i

    head([P_l]) -> objectness [B, a, H_l, W_l], deltas [B, 4a, H_l, W_l] per level
    flatten -> objectness [B, A_l], deltas [B, A_l, 4] in (y, x, anchor) order, like torchvision
    proposals(...) -> boxes [B, P, 4], valid [B, P] (sorted by objectness, padding at the end)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrcnn.config import ModelConfig
# The custom ops (design.md §3) dispatch at call time to the reference or the native kernel (mrcnn.kernels'
# backend switch). ONNX export runs under backend "kernels", so the traced graph holds torch.ops.mrcnn.* nodes.
from mrcnn.ops import anchor_grid, box_iou, box_nms, encode_boxes, match_proposals, pre_nms_select


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


def sample_pos_neg(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: Optional[torch.Generator]
) -> tuple[Tensor, Tensor]:
    """torchvision BalancedPositiveNegativeSampler for one image: (positive indices, negative indices).

    labels: >= 1 positive, 0 negative, -1 ignored. With `generator` (a CPU generator) the permutation is drawn from it
    instead of the global RNG, so the choice does not depend on the rest of the batch.
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    if generator is None:
        perm1 = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
        perm2 = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    else:
        perm1 = torch.randperm(positive.numel(), generator=generator)[:num_pos].to(positive.device)
        perm2 = torch.randperm(negative.numel(), generator=generator)[:num_neg].to(negative.device)
    return positive[perm1], negative[perm2]


class RPN(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_anchors = len(cfg.aspect_ratios)  # one size per level
        self.head = RPNHead(in_channels, self.num_anchors)

    def anchors(self, features: list[Tensor], images: Tensor) -> list[Tensor]:
        return [
            anchor_grid(f, images, (float(s),), tuple(float(r) for r in self.cfg.aspect_ratios))
            for f, s in zip(features, self.cfg.anchor_sizes)
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
        for lvl, (a, o, d) in enumerate(zip(anchors, objectness, deltas)):
            b, s, v = pre_nms_select(a, o.detach(), d.detach(), image_sizes, pre_n, cfg.rpn_min_size)
            boxes.append(b)
            scores.append(s)
            valid.append(v)
            levels.append(torch.full_like(v, lvl, dtype=torch.int64))
        boxes_t = torch.cat(boxes, 1)
        scores_t = torch.cat(scores, 1)
        valid_t = torch.cat(valid, 1) & (scores_t >= cfg.rpn_score_thresh)
        # 2. NMS independently per level, keep the post-NMS top-n
        out_boxes, _, _, _, num = box_nms(
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
        generators: list[Optional[torch.Generator]],
    ) -> tuple[Tensor, Tensor]:
        """Per-image RPN losses averaged over images. anchors [A,4], objectness [B,A], deltas [B,A,4] (float32)."""
        cfg = self.cfg
        loss_obj, loss_box = [], []
        for i, t in enumerate(targets):
            gt = t["boxes"].to(device=anchors.device, dtype=torch.float32)
            # 1. label anchors: 1 foreground, 0 background, -1 ignored
            if gt.shape[0] == 0:
                labels = torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device)
                matched_gt = torch.zeros_like(anchors)
            else:
                m = match_proposals(box_iou(gt, anchors), cfg.rpn_fg_iou, cfg.rpn_bg_iou, True)
                matched_gt = gt[m.clamp(min=0)]
                labels = (m >= 0).to(torch.float32)
                labels = torch.where(m == -2, torch.full_like(labels, -1.0), labels)
            # 2. sample, 3. losses normalised by this image's sampled count
            pos, neg = sample_pos_neg(labels, cfg.rpn_batch_per_image, cfg.rpn_positive_fraction, generators[i])
            sampled = torch.cat([pos, neg])
            reg_targets = encode_boxes(matched_gt[pos], anchors[pos])
            loss_box.append(
                F.smooth_l1_loss(deltas[i, pos], reg_targets, beta=1 / 9, reduction="sum") / max(1, sampled.numel())
            )
            if sampled.numel():
                loss_obj.append(F.binary_cross_entropy_with_logits(objectness[i, sampled], labels[sampled]))
            else:
                loss_obj.append(objectness[i].sum() * 0)
        return torch.stack(loss_obj).mean(), torch.stack(loss_box).mean()
