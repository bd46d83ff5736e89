"""Inference levers for the PyTorch predictor: each keeps the outputs within the design tolerances (docs/design.md
§6; tests/model/test_inference.py) and applies to a model in eval mode only.

    optimize_for_inference(model, channels_last=True) -> model   in place: the four levers below
    fold_batch_norms(module) -> module                           each conv followed by a frozen / eval BatchNorm
                                                                 absorbs it (float64 folding, one rounding)

- BatchNorm folding: R-50's 53 frozen BatchNorms stop being a pass over every activation of the backbone.
- channels-last: oneDNN's convolutions (CPU) and cuDNN's (GPU) run without layout reorders around each call.
- masks of the detections only: the mask head runs on the first max(num_detections) slots instead of all
  detections_per_img (100) of them; the padding slots' masks are zero either way.
- RoIAlign on the native multi-level kernel (where built): one call over the pyramid instead of one torchvision
  call per level and a gather, on contiguous maps (torchvision's CPU kernel on channels-last maps is 2-5x slower);
  bit for bit torchvision's CPU results.
The last two are eager-only: exports, torch.export and torch.compile keep the fixed-size graph.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d


def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """float64 (scale, shift) with bn(x) = x * scale + shift (inference)."""
    eps = bn.eps
    var, mean = bn.running_var.double(), bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + eps)
    return scale, bias - mean * scale


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """In place: every Conv2d registered directly before a FrozenBatchNorm2d / eval BatchNorm2d in the same parent
    (torchvision's ResNet stem, BasicBlock, Bottleneck and downsample) takes the norm into its weight and bias;
    the norm becomes Identity. Inference only: a BatchNorm2d in training mode is left alone."""
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, (FrozenBatchNorm2d, nn.BatchNorm2d))):
                continue
            if isinstance(bn, nn.BatchNorm2d) and (bn.training or bn.running_mean is None):
                continue
            scale, shift = _bn_scale_shift(bn)
            with torch.no_grad():
                w = conv.weight.double() * scale.view(-1, 1, 1, 1)
                b = (conv.bias.double() * scale if conv.bias is not None else 0) + shift
                conv.weight.copy_(w.to(conv.weight.dtype))
                if conv.bias is None:
                    conv.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
                else:
                    conv.bias.copy_(b.to(conv.bias.dtype))
            setattr(parent, name, nn.Identity())
    return module


def optimize_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """In place (an eval-mode MaskRCNN): BatchNorms folded into their convolutions, channels-last weights (the
    predictor feeds channels-last images), the mask head on the detections only, the native RoIAlign. Training it
    afterwards is wrong (the folded norms are gone): use it for a predictor's model."""
    model.eval()
    fold_batch_norms(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.roi_heads.eager_inference = True
    return model


__all__ = ["fold_batch_norms", "optimize_for_inference"]
