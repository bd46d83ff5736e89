"""The network in float16 for `mrcnn export --fp16`, with everything around it in float32.

    half_network(model)   -> model   in place: backbone + FPN, RPN head, box head / predictor, mask head / predictor
                                     hold float16 weights and compute in float16
    fold_batch_norms(m)   -> m       (mrcnn.model.inference) each conv absorbs the BatchNorm after it

What stays float32, and why (torchvision / TensorRT practice for fp16 detection models):
- the ops between the networks (anchors, box decoding, pre-NMS selection, NMS, RoIAlign, mask paste): box
  coordinates in float16 have ~0.25 px steps at 1000 px, and TensorRT-RTX and our plugins take what the graph says;
- normalisation statistics (GroupNorm, BatchNorm that no conv absorbs): a float16 mean / variance over a whole
  feature map loses digits; the layer is computed in float32 between casts;
- BatchNorm folding runs in float64 before the weights are rounded once to float16 (folding after rounding rounds
  twice).
The graph's inputs and outputs are unchanged (images float32, boxes / scores / masks float32): every runtime and
`mrcnn validate` take an fp16 export as they take an fp32 one. The module boundaries become Cast nodes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map  # noqa: PLC2701 - the peer's own helper
from torchvision.ops import FrozenBatchNorm2d

from mrcnn.model.inference import fold_batch_norms

_NORMS = (nn.GroupNorm, nn.BatchNorm2d, FrozenBatchNorm2d)


class Cast(nn.Module):
    """`inner` with its floating tensor inputs cast to `dtype` and its floating tensor outputs cast to `out`."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, out: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype, self.out = inner, dtype, out

    def forward(self, *args):
        def to(dtype):
            return lambda t: t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t

        return tree_map(to(self.out), self.inner(*tree_map(to(self.dtype), args)))


def _in_half(module: nn.Module) -> Cast:
    """`module` with float16 weights between casts (float32 in and out); its normalisation layers stay float32."""
    module.half()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NORMS):
                setattr(parent, name, Cast(child.float(), torch.float32, torch.float16))
    return Cast(module, torch.float16, torch.float32)


def half_network(model: nn.Module) -> nn.Module:
    """In place, for inference / export: BatchNorms folded, then the networks of `model` (a MaskRCNN) in float16
    (module docstring). Its state-dict keys change (wrapped modules): export the result, do not save it."""
    model.eval()
    fold_batch_norms(model.backbone)
    model.backbone = _in_half(model.backbone)
    model.rpn.head = _in_half(model.rpn.head)
    heads = model.roi_heads
    for name in ("box_head", "box_predictor", "mask_head", "mask_predictor"):
        setattr(heads, name, _in_half(getattr(heads, name)))
    return model


__all__ = ["Cast", "fold_batch_norms", "half_network"]
