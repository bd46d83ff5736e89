"""Mask R-CNN: ResNet-FPN backbone, RPN, RoI heads. Normalisation inside, fixed-size eval outputs, per-image losses.

Shapes:
    B   images;  Hp, Wp   padded size (multiple of 32);  K   detections_per_img;  M   mask resolution

    forward(images [B,3,Hp,Wp] float 0..1, image_sizes [B,2] int64 (h, w unpadded), targets=None)
      eval  -> boxes [B,K,4] (image pixels), scores [B,K], labels [B,K] int64, masks [B,K,M,M] (probabilities),
               num_detections [B] int64; slots >= num_detections are zero
      train -> loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask (each the mean over
               images of the per-image torchvision loss, so accumulation / DDP equal one big batch)

Targets (train): boxes [N,4] float xyxy image pixels, labels [N] int64 in 1..C-1, masks [N,h,w] uint8 (unpadded size),
optional `seed` (int): that image's fg/bg sampling draws from `torch.Generator().manual_seed(seed)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from mrcnn.config import ModelConfig
from mrcnn.model.backbone import ResNetBody
from mrcnn.model.fpn import FPN
from mrcnn.model.roi_heads import RoIHeads
from mrcnn.model.rpn import RPN, flatten_level
from mrcnn.ops import Ops


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.body = ResNetBody(
            cfg.backbone, cfg.backbone_blocks, cfg.backbone_width, cfg.norm, cfg.bn_eps, cfg.trainable_layers
        )
        self.fpn = FPN(self.body.out_channels, cfg.fpn_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.body(x))


class MaskRCNN(nn.Module):
    """`ops`: how this model runs the custom ops (mrcnn.ops.Ops; default Ops.from_env()), its own choice: set_ops /
    using_ops change it for this model only."""

    def __init__(self, cfg: ModelConfig, ops: Ops | None = None) -> None:
        super().__init__()
        if len(cfg.anchor_sizes) != 5:
            raise ValueError("anchor_sizes needs one size per FPN level P2..P6 (5 values)")
        self.cfg = cfg
        self.ops = Ops.from_env() if ops is None else ops
        self.backbone = Backbone(cfg)
        self.rpn = RPN(cfg, cfg.fpn_channels, self.ops)
        self.roi_heads = RoIHeads(cfg, cfg.fpn_channels, self.ops)
        self.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)

    def set_ops(self, ops: Ops) -> None:
        self.ops = self.rpn.ops = self.roi_heads.ops = ops

    @contextlib.contextmanager
    def using_ops(self, ops: Ops) -> Iterator[MaskRCNN]:
        """This model with `ops` inside the block, its own choice again afterwards."""
        prev = self.ops
        self.set_ops(ops)
        try:
            yield self
        finally:
            self.set_ops(prev)

    def compile_backbone(self) -> None:
        """torch.compile the backbone + FPN in place (state-dict keys unchanged). The heads stay eager: their shapes
        depend on the data. Compiles on the first call of each new input shape; shapes vary -> dynamic after one
        recompile (torch's automatic dynamic shapes)."""
        self.backbone.compile()

    def normalize(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        """(x - mean) / std inside each image, 0 in the padding (torchvision pads the normalised image with 0)."""
        H, W = images.shape[-2], images.shape[-1]
        sizes = image_sizes.to(images.device)
        rows = torch.arange(H, device=images.device)[None, :, None] < sizes[:, 0, None, None]
        cols = torch.arange(W, device=images.device)[None, None, :] < sizes[:, 1, None, None]
        inside = (rows & cols)[:, None].to(images.dtype)
        return (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype) * inside

    def forward(
        self, images: Tensor, image_sizes: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        image_sizes = image_sizes.to(device=images.device, dtype=torch.int64)
        # 1. normalise, backbone + FPN
        feats = self.backbone(self.normalize(images, image_sizes))
        # 2. RPN: objectness / deltas per level, anchors, fixed-size proposals
        logits, deltas = self.rpn.head(feats)
        flat = [flatten_level(lg, d) for lg, d in zip(logits, deltas, strict=True)]
        objectness = [o for o, _ in flat]
        box_deltas = [d for _, d in flat]
        anchors = self.rpn.anchors(feats, images)
        with torch.no_grad():
            proposals, valid = self.rpn.proposals(anchors, objectness, box_deltas, image_sizes)
        roi_feats = feats[:4]  # P2..P5
        if not self.training:
            return self.roi_heads.detect(roi_feats, proposals, valid, images, image_sizes)
        # 3. training: per-image sampling generators, per-image losses
        assert targets is not None
        generators = []
        for t in targets:
            seed = t.get("seed")
            # on the images' device: the sampling keys are drawn there, no host-to-device copy (a sync on CUDA)
            generators.append(None if seed is None else torch.Generator(images.device).manual_seed(int(seed)))
        loss_obj, loss_rpn_box = self.rpn.loss(
            torch.cat(anchors), torch.cat(objectness, 1), torch.cat(box_deltas, 1), targets, generators
        )
        losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box}
        losses.update(self.roi_heads.losses(roi_feats, proposals, valid, images, targets, generators))
        return losses


def build_model(cfg: ModelConfig, ops: Ops | None = None) -> MaskRCNN:
    return MaskRCNN(cfg, ops)
