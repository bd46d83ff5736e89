"""Input checks of the native kernels: one KernelInputError line naming the op, the argument and what was wrong,
raised before any pointer reaches C (by the torch ops, their fake kernels and the Python wrappers alike)."""

from __future__ import annotations

import torch
from torch import Tensor

from mrcnn.errors import MrcnnError
from mrcnn.native.library import ROI_MAX_LEVELS, cuda_built


class KernelInputError(MrcnnError, ValueError):
    """Bad input to a native kernel (rank, shape, dtype, device, negative size)."""


FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_tensor(op: str, name: str, t, rank: int | None = None, last: int | None = None, dtypes=None) -> None:
    if not isinstance(t, Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if rank is not None and t.dim() != rank:
        raise KernelInputError(f"{op}: {name} must have rank {rank}, got shape {tuple(t.shape)}")
    if last is not None and (t.dim() == 0 or t.shape[-1] != last):
        raise KernelInputError(f"{op}: {name} must have a last dimension of {last}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise KernelInputError(f"{op}: {name} must be {names}, got {str(t.dtype).replace('torch.', '')}")


def same_device(op: str, **tensors: Tensor) -> torch.device:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise KernelInputError(f"{op}: all tensors must be on one device, got {listed}")
    return first


def check_dim(op: str, what: str, got, want) -> None:
    if got != want:
        raise KernelInputError(f"{op}: {what} must be {want}, got {got}")


def nonneg(op: str, name: str, v) -> int:
    if isinstance(v, bool) or int(v) != v or int(v) < 0:
        raise KernelInputError(f"{op}: {name} must be a non-negative integer, got {v!r}")
    return int(v)


def validate_anchor_grid(feature, image, sizes, aspect_ratios, stride) -> int:
    op = "anchor_grid"
    check_tensor(op, "feature", feature)
    check_tensor(op, "image", image)
    if feature.dim() < 2 or image.dim() < 2:
        raise KernelInputError(
            f"{op}: feature and image need rank >= 2 ([.., H, W]), got shapes "
            f"{tuple(feature.shape)} and {tuple(image.shape)}"
        )
    same_device(op, feature=feature, image=image)
    for name, vals in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
        if not 1 <= len(vals) <= 32:
            raise KernelInputError(f"{op}: {name} needs 1 to 32 values, got {len(vals)}")
    nonneg(op, "stride", stride)
    return len(sizes) * len(aspect_ratios)


def validate_box_iou(a, b) -> None:
    op = "box_iou"
    check_tensor(op, "a", a, 3, 4, (torch.float32, torch.float16))
    check_tensor(op, "b", b, 3, 4, (torch.float32, torch.float16))
    same_device(op, a=a, b=b)
    check_dim(op, "b.dtype", b.dtype, a.dtype)
    check_dim(op, "the batch of b", b.shape[0], a.shape[0])


def validate_pre_nms_select(anchors, objectness, deltas, image_sizes, top_k, weights) -> None:
    op = "pre_nms_select"
    check_tensor(op, "anchors", anchors, 2, 4, (torch.float32,))
    check_tensor(op, "objectness", objectness, 2, None, (torch.float32,))
    check_tensor(op, "deltas", deltas, 3, 4, (torch.float32,))
    check_tensor(op, "image_sizes", image_sizes, 2, 2, (torch.int64,))
    same_device(op, anchors=anchors, objectness=objectness, deltas=deltas, image_sizes=image_sizes)
    B, A = objectness.shape
    check_dim(op, "deltas.shape", tuple(deltas.shape), (B, A, 4))
    check_dim(op, "anchors.shape", tuple(anchors.shape), (A, 4))
    check_dim(op, "image_sizes.shape", tuple(image_sizes.shape), (B, 2))
    nonneg(op, "top_k", top_k)
    if len(weights) != 4:
        raise KernelInputError(f"{op}: weights needs 4 values (wx, wy, ww, wh), got {len(weights)}")


def validate_box_nms(boxes, scores, classes, valid, max_output) -> None:
    op = "box_nms"
    check_tensor(op, "boxes", boxes, 3, 4, (torch.float32,))
    check_tensor(op, "scores", scores, 2, None, (torch.float32,))
    check_tensor(op, "classes", classes, 2, None, (torch.int64,))
    check_tensor(op, "valid", valid, 2, None, (torch.bool,))
    same_device(op, boxes=boxes, scores=scores, classes=classes, valid=valid)
    B, N = boxes.shape[0], boxes.shape[1]
    for name, t in (("scores", scores), ("classes", classes), ("valid", valid)):
        check_dim(op, f"{name}.shape", tuple(t.shape), (B, N))
    nonneg(op, "max_output", max_output)


def validate_match_proposals(iou) -> None:
    check_tensor("match_proposals", "iou", iou, 2, None, (torch.float32,))


def validate_roi_align(inputs, rois, levels, spatial_scales, pooled_h, pooled_w, fake: bool = False) -> None:
    op = "roi_align"
    if not isinstance(inputs, (list, tuple)) or not 1 <= len(inputs) <= ROI_MAX_LEVELS:
        raise KernelInputError(f"{op}: inputs must be a list of 1 to {ROI_MAX_LEVELS} feature maps")
    if len(spatial_scales) != len(inputs):
        raise KernelInputError(f"{op}: {len(inputs)} feature maps but {len(spatial_scales)} spatial scales")
    for i, x in enumerate(inputs):
        check_tensor(op, f"inputs[{i}]", x, 4, None, (torch.float32,))
        if x.shape[:2] != inputs[0].shape[:2]:
            raise KernelInputError(
                f"{op}: feature maps must share batch and channels, got {tuple(x.shape[:2])} "
                f"and {tuple(inputs[0].shape[:2])}"
            )
    check_tensor(op, "rois", rois, 2, 5, (torch.float32,))
    if levels is not None:
        check_tensor(op, "levels", levels, 1, None, (torch.int64,))
        check_dim(op, "levels.shape[0]", levels.shape[0], rois.shape[0])
    dev = same_device(op, **{f"inputs[{i}]": x for i, x in enumerate(inputs)}, rois=rois, levels=levels)
    if not fake and not (dev.type == "cpu" or (dev.type == "cuda" and cuda_built())):
        raise KernelInputError(f"{op}: the native RoIAlign runs on cpu (or cuda with a CUDA build) tensors, got {dev}")
    if int(pooled_h) <= 0 or int(pooled_w) <= 0:
        raise KernelInputError(f"{op}: output size must be positive, got {(pooled_h, pooled_w)}")
