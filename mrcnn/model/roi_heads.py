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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from mrcnn import native
from mrcnn.config import ModelConfig
from mrcnn.model.rpn import gather_rows, pad_rows, sample_balanced
from mrcnn.ops import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    Ops,
    box_area,
    box_sizes_at_least,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)


def _infer_scale(feature: Tensor, image: Tensor, nominal: float) -> float:
    """torchvision's MultiScaleRoIAlign scale 2**round(log2(H_l / Hp)); `nominal` (1 / stride of the level) when the
    sizes are symbolic (torch.export with a dynamic image size, padded to a multiple of 32: the same value)."""
    h_f, h_i = feature.shape[-2], image.shape[-2]
    if not (isinstance(h_f, int) and isinstance(h_i, int)):
        return nominal
    return 2.0 ** round(math.log2(float(h_f) / float(h_i)))


def map_levels(
    boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4, eps: float = 1e-6
) -> Tensor:
    """FPN level index (0-based from k_min) of each box [R,4] (torchvision LevelMapper)."""
    s = torch.sqrt(box_area(boxes))
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


def multiscale_roi_align(
    features: list[Tensor],
    rois: Tensor,
    image: Tensor,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    ops: Ops,
    native_for_inference: bool = False,
) -> Tensor:
    scales = [_infer_scale(f, image, 2.0 ** -(2 + i)) for i, f in enumerate(features)]  # P2 has stride 4
    k_min = int(round(-math.log2(scales[0])))
    k_max = int(round(-math.log2(scales[-1])))
    levels = map_levels(rois[:, 1:], k_min, k_max)
    # RoIAlign runs in float32 (or float64) even under autocast, like torchvision's autocast kernel
    dtype = torch.float64 if features[0].dtype == torch.float64 else torch.float32
    rois = rois.to(dtype)
    if ops.native_roi_align_applies(features[0], rois, dtype, inference=native_for_inference):
        # training, eager inference with the levers: one native call over the whole pyramid, no split of the RoIs
        # by level (no device sync)
        maps = [f.to(dtype=dtype) for f in features]  # channels-last stays so: the op reads it as it is (CPU; CUDA
        # with ops.cuda_roi_align_nhwc)
        return native.multilevel_roi_align(
            maps, rois, levels, scales, (output_size, output_size), sampling_ratio, aligned, ops.cuda_roi_align_nhwc
        )
    # eval, export, reference backend: torchvision's op per level (exported as ONNX RoiAlign)
    pooled, order = [], []
    for lvl, (feat, scale) in enumerate(zip(features, scales, strict=True)):
        idx = torch.where(levels == lvl)[0]
        pooled.append(
            roi_align(
                feat.to(dtype),
                rois[idx],
                (output_size, output_size),
                spatial_scale=scale,
                sampling_ratio=sampling_ratio,
                aligned=aligned,
            )
        )
        order.append(idx)
    # back to RoI order with one gather (per-level index_copy into a zeros tensor copied the whole [R,C,S,S]
    # tensor once per level, forward and backward). The inverse permutation is a scatter, not an argsort, so the
    # exported graph holds no TopK.
    order_t = torch.cat(order)
    inverse = torch.zeros_like(order_t).scatter(0, order_t, torch.arange(order_t.shape[0], device=order_t.device))
    return torch.cat(pooled)[inverse]


class HostCopy:
    """A device tensor's values on the host, copied without draining the device queue: the copy is queued at
    construction (non_blocking, into pinned memory on CUDA) and `tolist()` waits for that copy only, not for the
    work queued after it."""

    def __init__(self, t: Tensor) -> None:
        t = t.detach()
        self._event = None
        if t.device.type == "cuda":
            self._value = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._value.copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(t.device))
        else:
            self._value = t.cpu()

    def tolist(self) -> list:
        if self._event is not None:
            self._event.synchronize()
        return self._value.tolist()


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
    # the eager inference levers (optimize_for_inference; never under export or compile): RoIAlign on the native
    # multi-level kernel (no host sync: a CUDA graph can hold it), and the mask head on the first max(num) detection
    # slots (reads num on the host: not inside a CUDA graph)
    native_roi_align = False
    masks_of_detections_only = False

    def __init__(self, cfg: ModelConfig, in_channels: int, ops: Ops) -> None:
        super().__init__()
        self.cfg, self.ops = cfg, ops
        self.box_head = TwoMLPHead(in_channels * cfg.box_roi_size**2, cfg.representation_size)
        self.box_predictor = BoxPredictor(cfg.representation_size, cfg.num_classes)
        self.mask_head = MaskHead(in_channels, cfg.mask_head_channels, cfg.mask_head_layers)
        self.mask_predictor = MaskPredictor(cfg.mask_head_channels, cfg.mask_head_channels, cfg.num_classes)

    # -- branches -----------------------------------------------------------------------------------------------
    def box_branch(
        self, features: list[Tensor], rois: Tensor, images: Tensor, eager: bool = False
    ) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        x = multiscale_roi_align(
            features, rois, images, cfg.box_roi_size, cfg.sampling_ratio, cfg.roi_aligned, self.ops, eager
        )
        return self.box_predictor(self.box_head(x))

    def mask_branch(self, features: list[Tensor], rois: Tensor, images: Tensor, eager: bool = False) -> Tensor:
        cfg = self.cfg
        x = multiscale_roi_align(
            features, rois, images, cfg.mask_roi_size, cfg.sampling_ratio, cfg.roi_aligned, self.ops, eager
        )
        return self.mask_predictor(self.mask_head(x))

    # -- inference ----------------------------------------------------------------------------------------------
    def detect(
        self, features: list[Tensor], proposals: Tensor, proposals_valid: Tensor, images: Tensor, image_sizes: Tensor
    ) -> dict[str, Tensor]:
        """Fixed-size detections from fixed-size proposals [B,P,4] / valid [B,P] (torchvision postprocess)."""
        cfg = self.cfg
        B, P = proposals.shape[:2]
        C = cfg.num_classes
        tracing = _tracing()
        eager = self.native_roi_align and not tracing
        if eager and features[0].device.type != "cpu":  # the CUDA RoIAlign reads NCHW: one copy for both branches
            features = [f.contiguous() for f in features]
        # 1. box branch on every proposal slot
        logits, deltas = self.box_branch(features, to_rois(proposals), images, eager)
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
        det_boxes, det_scores, det_labels, _, num = self.ops.box_nms(
            boxes, scores, labels, valid, cfg.box_nms, cfg.box_score_thresh, cfg.detections_per_img
        )
        # 4. masks of the detections: the predicted class's channel, sigmoid; padding slots zero
        K = det_boxes.shape[1]
        n = K
        if self.masks_of_detections_only and not tracing:
            n = int(num.max()) if num.numel() else 0  # slots past every image's count would be zeroed below
        mask_logits = self.mask_branch(features, to_rois(det_boxes[:, :n].contiguous()), images, eager)
        M = mask_logits.shape[-1]
        sel = det_labels[:, :n].reshape(-1, 1, 1, 1).expand(B * n, 1, M, M)
        masks = torch.gather(mask_logits.float(), 1, sel).view(B, n, M, M).sigmoid()
        slot_valid = torch.arange(n, device=num.device)[None, :] < num[:, None]
        masks = masks * slot_valid[:, :, None, None].to(masks.dtype)
        if n < K:
            masks = torch.cat([masks, masks.new_zeros(B, K - n, M, M)], 1)
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
        generators: Sequence[torch.Generator | None],
    ) -> dict[str, Tensor]:
        """Box and mask losses, each normalised per image and averaged over images (torchvision's semantics).
        Candidates per image are its proposal slots and its ground-truth boxes (padded to the batch's largest G);
        matching runs per image, sampling, targets and losses on the whole batch at once."""
        cfg = self.cfg
        device = proposals.device
        B = proposals.shape[0]
        gts = [t["boxes"].to(device=device, dtype=torch.float32) for t in targets]
        gt = pad_rows(gts)  # [B, G, 4]
        gt_labels = pad_rows([t["labels"].to(device=device, dtype=torch.int64) for t in targets], -1)  # -1: padding
        # 1. candidates = proposals + ground truth; match; label (class, 0 background, -1 ignored or padding)
        cands = torch.cat([proposals.float(), gt], 1)
        m = torch.stack(
            [
                self.ops.match_proposals(self.ops.box_iou(g, c), cfg.roi_fg_iou, cfg.roi_bg_iou, False)
                for g, c in zip(gts, cands, strict=True)
            ]
        )
        labels = torch.where(m == BELOW_LOW_THRESHOLD, 0, gt_labels.gather(1, m.clamp(min=0)))
        usable = torch.cat([proposals_valid, gt_labels >= 0], 1) & (m != BETWEEN_THRESHOLDS)
        labels = torch.where(usable, labels, -1)
        # 2. sample S slots per image (positives first), regression targets of the positives
        index, ok = sample_balanced(labels, cfg.roi_batch_per_image, cfg.roi_positive_fraction, generators)
        S = index.shape[1]
        labels = labels.gather(1, index).clamp(min=0)
        pos = ok & (labels > 0)
        boxes = gather_rows(cands, index)  # [B, S, 4]
        matched = m.gather(1, index).clamp(min=0)
        reg = torch.where(pos[..., None], encode_boxes(gather_rows(gt, matched), boxes, cfg.box_weights), 0.0)
        count = ok.sum(1).clamp(min=1)
        n_pos = pos.sum(1)
        n_pos_host = HostCopy(n_pos)  # queued now, read after the box branch is queued: the device keeps busy
        # 3. box branch on every slot of the batch (unsampled slots, rare, are masked out of the losses)
        rois = to_rois(boxes)  # [B*S, 5]
        logits, deltas = self.box_branch(features, rois, images)
        C = logits.shape[-1]
        loss_cls = F.cross_entropy(logits.float(), labels.reshape(-1), reduction="none").view(B, S)
        box_pred = deltas.float().view(B, S, C, 4).gather(2, labels.view(B, S, 1, 1).expand(B, S, 1, 4)).squeeze(2)
        loss_box = F.smooth_l1_loss(box_pred, reg, beta=1 / 9, reduction="none").sum(2)
        # 4. mask branch on the positives: the first n_pos[i] slots of image i (the step's one wait for the device)
        counts = n_pos_host.tolist()
        rois = rois.view(B, S, 5)
        mask_logits = self.mask_branch(features, torch.cat([rois[i, :k] for i, k in enumerate(counts)]), images)
        M = mask_logits.shape[-1]
        pos_labels = torch.cat([labels[i, :k] for i, k in enumerate(counts)])
        sel = mask_logits.float().gather(1, pos_labels.view(-1, 1, 1, 1).expand(-1, 1, M, M))[:, 0]
        mask_targets = [
            roi_align(
                t["masks"].to(device)[:, None].float(),
                torch.cat([matched[i, :k, None].to(boxes.dtype), boxes[i, :k]], 1),
                (M, M),
                1.0,
            )[:, 0]
            for i, (t, k) in enumerate(zip(targets, counts, strict=True))
            if k
        ]
        if mask_targets:
            per_roi = F.binary_cross_entropy_with_logits(sel, torch.cat(mask_targets), reduction="none").mean((1, 2))
            # each image's mean over its positives; images without positives add 0
            weight = torch.repeat_interleave(1.0 / n_pos.clamp(min=1).float(), n_pos, output_size=sel.shape[0])
            loss_mask = (per_roi * weight).sum() / B
        else:
            loss_mask = sel.sum() * 0
        return {
            "loss_classifier": ((loss_cls * ok).sum(1) / count).mean(),
            "loss_box_reg": ((loss_box * pos).sum(1) / count).mean(),
            "loss_mask": loss_mask,
        }


def _tracing() -> bool:
    """Under ONNX export, torch.export, dynamo or jit tracing: the graph keeps its fixed sizes."""
    return bool(
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )
