"""RoI heads: multi-scale RoIAlign, box head + predictor, mask head + predictor, eval post-processing, losses.

Shapes:
    B   images;  P   proposal slots per image;  R   RoIs (rows [batch_index, x1, y1, x2, y2]);  C   classes (incl. bg)
    K   detection slots (detections_per_img);  M   mask resolution (28)

    multiscale_roi_align([P2..P5], rois [R,5], image [B,3,Hp,Wp], output_size, sampling_ratio, aligned)
        -> [R, F, S, S]   (torchvision MultiScaleRoIAlign: LevelMapper k_min=2, k_max=5, 224 / level 4, eps 1e-6)
    box branch:  [R, F*7*7] -> class_logits [R, C], box_deltas [R, 4C]
    mask branch: [R, F, 14, 14] -> mask_logits [R, C, M, M]
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from mrcnn import kernels
from mrcnn.config import ModelConfig
from mrcnn.model.rpn import sample_pos_neg
from mrcnn.ops import box_area, box_iou, box_nms, box_sizes_at_least, clip_boxes, decode_boxes, encode_boxes
from mrcnn.ops import match_proposals


def _infer_scale(feature: Tensor, image: Tensor, nominal: float) -> float:
    """torchvision's MultiScaleRoIAlign scale 2**round(log2(H_l / Hp)); `nominal` (1 / stride of the level) when the
    sizes are symbolic (torch.export with a dynamic image size, padded to a multiple of 32: the same value)."""
    h_f, h_i = feature.shape[-2], image.shape[-2]
    if not (isinstance(h_f, int) and isinstance(h_i, int)):
        return nominal
    return 2.0 ** round(math.log2(float(h_f) / float(h_i)))


def map_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4,
               eps: float = 1e-6) -> Tensor:
    """FPN level index (0-based from k_min) of each box [R,4] (torchvision LevelMapper)."""
    s = torch.sqrt(box_area(boxes))
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


def multiscale_roi_align(
    features: list[Tensor], rois: Tensor, image: Tensor, output_size: int, sampling_ratio: int, aligned: bool
) -> Tensor:
    scales = [_infer_scale(f, image, 2.0 ** -(2 + i)) for i, f in enumerate(features)]  # P2 has stride 4
    k_min = int(round(-math.log2(scales[0])))
    k_max = int(round(-math.log2(scales[-1])))
    levels = map_levels(rois[:, 1:], k_min, k_max)
    # RoIAlign runs in float32 (or float64) even under autocast, like torchvision's autocast kernel
    dtype = torch.float64 if features[0].dtype == torch.float64 else torch.float32
    rois = rois.to(dtype)
    # CPU float32 training: the native RoIAlign (same results, threaded); else torchvision's (eval, export, CUDA)
    align = kernels.roi_align if kernels.native_roi_align_applies(features[0].to(dtype), rois) else roi_align
    pooled, order = [], []
    for lvl, (feat, scale) in enumerate(zip(features, scales)):
        idx = torch.where(levels == lvl)[0]
        pooled.append(align(feat.to(dtype), rois[idx], (output_size, output_size), spatial_scale=scale,
                            sampling_ratio=sampling_ratio, aligned=aligned))
        order.append(idx)
    # back to RoI order with one gather (per-level index_copy into a zeros tensor copied the whole [R,C,S,S]
    # tensor once per level, forward and backward). The inverse permutation is a scatter, not an argsort, so the
    # exported graph holds no TopK.
    order_t = torch.cat(order)
    inverse = torch.zeros_like(order_t).scatter(0, order_t, torch.arange(order_t.shape[0], device=order_t.device))
    return torch.cat(pooled)[inverse]


def to_rois(boxes: Tensor) -> Tensor:
    """boxes [B,N,4] -> rois [B*N,5] with the batch index first."""
    B, N = boxes.shape[:2]
    idx = torch.arange(B, device=boxes.device, dtype=boxes.dtype).view(B, 1, 1).expand(B, N, 1)
    return torch.cat([idx, boxes], dim=2).reshape(B * N, 5)


class TwoMLPHead(nn.Module):
    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class BoxPredictor(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Sequential):
    def __init__(self, in_channels: int, channels: int, layers: int) -> None:
        mods = []
        c = in_channels
        for _ in range(layers):
            mods += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
            c = channels
        super().__init__(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskPredictor(nn.Module):
    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, channels, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(channels, num_classes, 1)
        for name, p in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))


class RoIHeads(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.box_head = TwoMLPHead(in_channels * cfg.box_roi_size**2, cfg.representation_size)
        self.box_predictor = BoxPredictor(cfg.representation_size, cfg.num_classes)
        self.mask_head = MaskHead(in_channels, cfg.mask_head_channels, cfg.mask_head_layers)
        self.mask_predictor = MaskPredictor(cfg.mask_head_channels, cfg.mask_head_channels, cfg.num_classes)

    # -- branches -----------------------------------------------------------------------------------------------
    def box_branch(self, features: list[Tensor], rois: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        x = multiscale_roi_align(features, rois, images, cfg.box_roi_size, cfg.sampling_ratio, cfg.roi_aligned)
        return self.box_predictor(self.box_head(x))

    def mask_branch(self, features: list[Tensor], rois: Tensor, images: Tensor) -> Tensor:
        cfg = self.cfg
        x = multiscale_roi_align(features, rois, images, cfg.mask_roi_size, cfg.sampling_ratio, cfg.roi_aligned)
        return self.mask_predictor(self.mask_head(x))

    # -- inference ----------------------------------------------------------------------------------------------
    def detect(
        self, features: list[Tensor], proposals: Tensor, proposals_valid: Tensor, images: Tensor, image_sizes: Tensor
    ) -> dict[str, Tensor]:
        """Fixed-size detections from fixed-size proposals [B,P,4] / valid [B,P] (torchvision postprocess)."""
        cfg = self.cfg
        B, P = proposals.shape[:2]
        C = cfg.num_classes
        # 1. box branch on every proposal slot
        logits, deltas = self.box_branch(features, to_rois(proposals), images)
        scores = F.softmax(logits.float(), -1).view(B, P, C)
        boxes = decode_boxes(deltas.float().view(B, P, C, 4), proposals.view(B, P, 1, 4), cfg.box_weights)
        boxes = clip_boxes(boxes.view(B, P * C, 4), image_sizes).view(B, P, C, 4)
        # 2. drop background, one candidate per (proposal, class); filter small boxes
        boxes = boxes[:, :, 1:].reshape(B, P * (C - 1), 4)
        scores = scores[:, :, 1:].reshape(B, P * (C - 1))
        labels = torch.arange(1, C, device=boxes.device).view(1, 1, C - 1).expand(B, P, C - 1).reshape(B, -1)
        valid = proposals_valid[:, :, None].expand(B, P, C - 1).reshape(B, -1)
        valid = valid & box_sizes_at_least(boxes, cfg.box_min_size)
        # 3. class-aware NMS, score > threshold, top detections_per_img
        det_boxes, det_scores, det_labels, _, num = box_nms(
            boxes, scores, labels, valid, cfg.box_nms, cfg.box_score_thresh, cfg.detections_per_img
        )
        # 4. masks of the detections: the predicted class's channel, sigmoid; padding slots zero
        K = det_boxes.shape[1]
        mask_logits = self.mask_branch(features, to_rois(det_boxes), images)
        M = mask_logits.shape[-1]
        sel = det_labels.reshape(-1, 1, 1, 1).expand(B * K, 1, M, M)
        masks = torch.gather(mask_logits.float(), 1, sel).view(B, K, M, M).sigmoid()
        slot_valid = torch.arange(K, device=num.device)[None, :] < num[:, None]
        masks = masks * slot_valid[:, :, None, None].to(masks.dtype)
        return {
            "boxes": det_boxes,
            "scores": det_scores,
            "labels": det_labels,
            "masks": masks,
            "num_detections": num,
        }

    # -- training -----------------------------------------------------------------------------------------------
    def losses(
        self,
        features: list[Tensor],
        proposals: Tensor,
        proposals_valid: Tensor,
        images: Tensor,
        targets: list[dict[str, Tensor]],
        generators: list[Optional[torch.Generator]],
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        device = proposals.device
        B = proposals.shape[0]
        samples = []
        # 1. per image: proposals + GT boxes, match, sample, regression targets
        for i, t in enumerate(targets):
            gt = t["boxes"].to(device=device, dtype=torch.float32)
            gt_labels = t["labels"].to(device=device, dtype=torch.int64)
            props = torch.cat([proposals[i][proposals_valid[i]].float(), gt])
            if gt.shape[0] == 0:
                matched = torch.zeros(props.shape[0], dtype=torch.int64, device=device)
                labels = torch.zeros(props.shape[0], dtype=torch.int64, device=device)
                gt_for_reg = torch.zeros((1, 4), dtype=torch.float32, device=device)
            else:
                m = match_proposals(box_iou(gt, props), cfg.roi_fg_iou, cfg.roi_bg_iou, False)
                matched = m.clamp(min=0)
                labels = gt_labels[matched]
                labels = torch.where(m == -1, torch.zeros_like(labels), labels)
                labels = torch.where(m == -2, torch.full_like(labels, -1), labels)
                gt_for_reg = gt
            pos, neg = sample_pos_neg(labels, cfg.roi_batch_per_image, cfg.roi_positive_fraction, generators[i])
            keep = torch.sort(torch.cat([pos, neg])).values  # torchvision keeps the sampled ones in index order
            props, labels, matched = props[keep], labels[keep], matched[keep]
            reg = encode_boxes(gt_for_reg[matched], props, cfg.box_weights)
            samples.append((props, labels, matched, reg))
        # 2. box branch on all sampled RoIs of the batch at once
        rois = torch.cat(
            [torch.cat([torch.full_like(p[:, :1], i), p], 1) for i, (p, _, _, _) in enumerate(samples)]
        )
        logits, deltas = self.box_branch(features, rois, images)
        logits, deltas = logits.float(), deltas.float()
        # 3. mask branch on the positives
        mask_rois, mask_meta = [], []
        for i, (p, labels, matched, _) in enumerate(samples):
            pos = torch.where(labels > 0)[0]
            mask_rois.append(torch.cat([torch.full_like(p[pos, :1], i), p[pos]], 1))
            mask_meta.append((pos, labels[pos], matched[pos]))
        mask_logits = self.mask_branch(features, torch.cat(mask_rois), images).float()
        # 4. per-image losses, then the mean over images
        l_cls, l_box, l_mask = [], [], []
        start = mstart = 0
        M = mask_logits.shape[-1]
        for i, ((p, labels, matched, reg), (pos, pos_labels, pos_matched)) in enumerate(zip(samples, mask_meta)):
            n = p.shape[0]
            lg, dl = logits[start : start + n], deltas[start : start + n]
            start += n
            if n == 0:
                l_cls.append(lg.sum() * 0)
                l_box.append(dl.sum() * 0)
            else:
                l_cls.append(F.cross_entropy(lg, labels))
                box_pred = dl.view(n, -1, 4)[pos, pos_labels]
                l_box.append(F.smooth_l1_loss(box_pred, reg[pos], beta=1 / 9, reduction="sum") / n)
            npos = pos.numel()
            ml = mask_logits[mstart : mstart + npos]
            mstart += npos
            if npos == 0:
                l_mask.append(ml.sum() * 0)
                continue
            gt_masks = targets[i]["masks"].to(device)
            mrois = torch.cat([pos_matched[:, None].to(p.dtype), p[pos]], 1)
            mask_targets = roi_align(gt_masks[:, None].float(), mrois, (M, M), 1.0)[:, 0]
            sel = ml[torch.arange(npos, device=device), pos_labels]
            l_mask.append(F.binary_cross_entropy_with_logits(sel, mask_targets))
        return {
            "loss_classifier": torch.stack(l_cls).mean(),
            "loss_box_reg": torch.stack(l_box).mean(),
            "loss_mask": torch.stack(l_mask).mean(),
        }
