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
  call per level and a gather (no host sync), reading channels-last maps in place on the CPU (its NHWC forward;
  torchvision's CPU kernel on channels-last maps is 2-5x slower), bit for bit torchvision's CPU results.
The last two are eager-only (RoIHeads.native_roi_align, .masks_of_detections_only): exports, torch.export and
torch.compile keep the fixed-size graph.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils._pytree import tree_map  # noqa: PLC2701 - the peer's own helper
from torchvision.ops import FrozenBatchNorm2d

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


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """In place: every Conv2d registered directly before a FrozenBatchNorm2d / eval BatchNorm2d in the same parent
    (torchvision's ResNet stem, BasicBlock, Bottleneck and downsample) takes the norm into its weight and bias;
    the norm becomes Identity. Inference only: a BatchNorm2d in training mode is left alone."""
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, bn) in itertools.pairwise(children):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, (FrozenBatchNorm2d, nn.BatchNorm2d))):
                continue
            if isinstance(bn, nn.BatchNorm2d) and (bn.training or bn.running_mean is None):
                continue
            # torch's own fusion, fed float64 (one rounding, to the conv's dtype, at the end)
            f64 = [
                None if t is None else t.detach().double()
                for t in (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)
            ]
            w, b = fuse_conv_bn_weights(f64[0], f64[1], f64[2], f64[3], bn.eps, f64[4], f64[5])
            dtype = conv.weight.dtype
            conv.weight = nn.Parameter(w.detach().to(dtype), requires_grad=conv.weight.requires_grad)
            conv.bias = nn.Parameter(b.detach().to(dtype), requires_grad=conv.weight.requires_grad)
            setattr(parent, name, nn.Identity())
    return module


def _in_precision(module: nn.Module, dtype: torch.dtype) -> Cast:
    """`module` with `dtype` weights between casts (float32 in and out); its normalisation layers stay float32."""
    module.to(dtype)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NORMS):
                setattr(parent, name, Cast(child.float(), torch.float32, dtype))
    return Cast(module, dtype, torch.float32)


def low_precision_network(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """In place: BatchNorms folded (in float64, before the one rounding), then the networks of `model` (a MaskRCNN:
    backbone + FPN, RPN head, box head / predictor, mask head / predictor) hold `dtype` weights and compute in `dtype`
    between casts; the ops between them (anchors, box decoding, NMS, RoIAlign, pasting) and the normalisation layers
    stay float32. Its state-dict keys change (wrapped modules): run or export the result, do not save it."""
    model.eval()
    fold_batch_norms(model.backbone)
    model.backbone = _in_precision(model.backbone, dtype)
    model.rpn.head = _in_precision(model.rpn.head, dtype)
    heads = model.roi_heads
    for name in ("box_head", "box_predictor", "mask_head", "mask_predictor"):
        setattr(heads, name, _in_precision(getattr(heads, name), dtype))
    return model


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """One error line for a precision this device cannot run fast: bf16 on a CPU needs AVX512-BF16 or AMX (oneDNN's
    bfloat16 convolutions; elsewhere they are emulated, slower than float32)."""
    from mrcnn.errors import MrcnnError

    if precision not in PRECISIONS:
        raise MrcnnError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise MrcnnError(
            "--precision bf16: this CPU has neither AVX512-BF16 nor AMX, where bfloat16 would be slower "
            "than float32; use fp32"
        )


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: treated as without (the option is then one error line)
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def optimize_for_inference(model: nn.Module, channels_last: bool = True, precision: str = "fp32") -> nn.Module:
    """In place (an eval-mode MaskRCNN): BatchNorms folded into their convolutions, channels-last weights (the
    predictor feeds channels-last images), the mask head on the detections only, the native RoIAlign; `precision`
    "bf16": the networks in bfloat16 (low_precision_network). Training it afterwards is wrong (the folded norms are
    gone): use it for a predictor's model."""
    model.eval()
    fold_batch_norms(model)
    if precision == "bf16":
        low_precision_network(model, torch.bfloat16)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.roi_heads.native_roi_align = True
    model.roi_heads.masks_of_detections_only = True
    return model


__all__ = [
    "Cast",
    "PRECISIONS",
    "check_precision",
    "fold_batch_norms",
    "low_precision_network",
    "optimize_for_inference",
]
