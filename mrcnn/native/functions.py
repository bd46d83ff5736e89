"""Python functions with exactly the signatures and return structure of the references in mrcnn.ops (leading
batch dimensions, float16 / bfloat16 in and out) on the native torch ops; each validates its inputs first."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mrcnn.errors import MrcnnError
from mrcnn.native import torch_ops  # noqa: F401 - registers torch.ops.mrcnn.*
from mrcnn.native.checks import (
    FLOATS,
    INTS,
    KernelInputError,
    check_tensor,
    nonneg,
    same_device,
    validate_anchor_grid,
    validate_roi_align,
)


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """torchvision.ops.roi_align (rois [R,5] form) on the native kernel: float32, differentiable in `input`; on CPU
    all torch threads and results equal to torchvision's CPU kernel bit for bit."""
    return multilevel_roi_align([input], rois, None, [spatial_scale], output_size, sampling_ratio, aligned)


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    spatial_scales: Sequence[float],
    output_size: int | tuple[int, int],
    sampling_ratio: int = -1,
    aligned: bool = False,
    cuda_nhwc: bool = False,
) -> Tensor:
    """RoIAlign over a feature pyramid in one call: RoI n pools from features[levels[n]] at spatial_scales[levels[n]]
    (levels None: all from features[0]). Equals torchvision.ops.roi_align run per level on that level's RoIs, with
    no host-side split of the RoIs (no device sync). float32, differentiable in every feature map. Channels-last maps
    are read as they are on the CPU, and on CUDA with `cuda_nhwc` (the NHWC kernels; their gradients NHWC too)."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    features, scales = list(features), [float(s) for s in spatial_scales]
    # here too: on meta tensors the op would dispatch to its fake kernel
    validate_roi_align(features, rois, levels, scales, ph, pw)
    try:  # the C ABI checks indices and levels; a failure is explained here (no extra pass over rois when fine)
        return torch.ops.mrcnn.roi_align(
            features, rois.detach(), levels, scales, int(ph), int(pw), int(sampling_ratio), bool(aligned), cuda_nhwc
        )
    except KernelInputError:
        raise
    except MrcnnError:
        index, batch = rois[:, 0], features[0].shape[0]
        if index.numel() and not bool(((index >= 0) & (index < batch)).all()):
            raise KernelInputError(
                f"roi_align: rois[:, 0] must be image indices in [0, {batch}), got "
                f"{index.min().item():g}..{index.max().item():g}"
            ) from None
        if levels is not None and levels.numel() and not bool(((levels >= 0) & (levels < len(features))).all()):
            raise KernelInputError(
                f"roi_align: levels must be in [0, {len(features)}), got {levels.min().item()}..{levels.max().item()}"
            ) from None
        raise


def anchor_grid(
    feature: Tensor, image: Tensor, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int = 0
) -> Tensor:
    """mrcnn.ops.anchor_grid on the native kernel (bit-exact)."""
    validate_anchor_grid(feature, image, list(sizes), list(aspect_ratios), stride)
    return torch.ops.mrcnn.anchor_grid(
        feature.detach(), image.detach(), [float(s) for s in sizes], [float(r) for r in aspect_ratios], int(stride)
    )


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """mrcnn.ops.box_iou on the native kernel: a [...,N,4], b [...,M,4] (leading dims broadcast) -> [...,N,M]
    float32 (float16 boxes stay float16 in the kernel; bfloat16 is upcast, like the reference)."""
    op = "box_iou"
    for name, t in (("a", a), ("b", b)):
        check_tensor(op, name, t, None, 4, FLOATS)
        if t.dim() < 2:
            raise KernelInputError(f"{op}: {name} must have rank >= 2 ([..., N, 4]), got shape {tuple(t.shape)}")
    same_device(op, a=a, b=b)
    try:
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise KernelInputError(
            f"{op}: batch dimensions {tuple(a.shape[:-2])} and {tuple(b.shape[:-2])} do not broadcast"
        ) from None
    N, M = a.shape[-2], b.shape[-2]
    if a.dtype != torch.float16 or b.dtype != torch.float16:
        a, b = a.float(), b.float()
    nb = math.prod(lead)
    a3 = a.detach().expand(*lead, N, 4).reshape(nb, N, 4)
    b3 = b.detach().expand(*lead, M, 4).reshape(nb, M, 4)
    return torch.ops.mrcnn.box_iou(a3, b3).reshape(*lead, N, M)


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
    """mrcnn.ops.pre_nms_select on the fused native kernel (float32 math; float16/bfloat16 inputs come back in
    their dtype). Ties in objectness go to the lower anchor index."""
    op = "pre_nms_select"
    check_tensor(op, "anchors", anchors, 2, 4, FLOATS)
    check_tensor(op, "objectness", objectness, 2, None, FLOATS)
    check_tensor(op, "deltas", deltas, 3, 4, FLOATS)
    check_tensor(op, "image_sizes", image_sizes, 2, 2, INTS)
    nonneg(op, "top_k", top_k)
    boxes, scores, valid = torch.ops.mrcnn.pre_nms_select(
        anchors.detach().float(),
        objectness.detach().float(),
        deltas.detach().float(),
        image_sizes.detach().to(torch.int64),
        int(top_k),
        float(min_size),
        [float(w) for w in weights],
        float(clip),
    )
    return boxes.to(deltas.dtype), scores.to(objectness.dtype), valid


def box_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    valid: Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_output: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """mrcnn.ops.box_nms on the native kernel (semantics of box_nms_reference: ties to the lower index)."""
    op = "box_nms"
    check_tensor(op, "boxes", boxes, 3, 4, FLOATS)
    check_tensor(op, "scores", scores, 2, None, FLOATS)
    check_tensor(op, "classes", classes, 2, None, INTS)
    check_tensor(op, "valid", valid, 2, None, (torch.bool,) + INTS)
    nonneg(op, "max_output", max_output)
    out = torch.ops.mrcnn.box_nms(
        boxes.detach().float(),
        scores.detach().float(),
        classes.detach().to(torch.int64),
        valid.detach().bool(),
        float(iou_threshold),
        float(score_threshold),
        int(max_output),
    )
    return (out[0].to(boxes.dtype), out[1].to(scores.dtype), *out[2:])


def match_proposals(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    """mrcnn.ops.match_proposals on the native kernel (float16/bfloat16 IoU is upcast exactly)."""
    check_tensor("match_proposals", "iou", iou, 2, None, FLOATS)
    return torch.ops.mrcnn.match_proposals(iou.detach().float(), float(high), float(low), bool(allow_low_quality))
