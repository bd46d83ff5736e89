"""The native kernels registered as torch ops (torch.ops.mrcnn.*): the CPU path calls the C ABI, the CUDA path the
launchers on torch's current stream with a torch-allocated workspace; a fake kernel per op gives the fixed output
shapes for torch.export / torch.compile; RoIAlign has its backward and autograd formula. Importing this module
registers them (mrcnn.native does)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor

from mrcnn.errors import MrcnnError
from mrcnn.native.checks import (
    KernelInputError,
    validate_anchor_grid,
    validate_box_iou,
    validate_box_nms,
    validate_match_proposals,
    validate_pre_nms_select,
    validate_roi_align,
)
from mrcnn.native.library import build_info, call, cuda_built


# ---- calling the C ABI with tensors ---------------------------------------------------------------------------------
def ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if t is not None and t.numel() else None


def floats(values: Sequence[float]):
    return (ctypes.c_float * max(1, len(values)))(*[float(v) for v in values])


def stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def cuda_workspace(name: str, device: torch.device, *sizes: int) -> Tensor:
    nbytes = ctypes.c_size_t(0)
    call(name, *sizes, ctypes.byref(nbytes))
    return torch.empty(max(1, nbytes.value), dtype=torch.uint8, device=device)


def run(device: torch.device, cpu_name: str, cuda_name: str, args: list, workspace: Tensor | None = None) -> None:
    """Call the CPU function or the CUDA launcher (workspace, stream appended) for tensors on `device`."""
    if device.type == "cpu":
        call(cpu_name, *args)
    elif device.type == "cuda":
        if not cuda_built():
            raise MrcnnError(f"mrcnn native kernels: built without CUDA ({build_info()}); {cuda_name} is missing")
        with torch.cuda.device(device):
            extra = [] if workspace is None else [ptr(workspace), workspace.numel()]
            call(cuda_name, *args, *extra, stream(device))
    else:
        raise KernelInputError(f"mrcnn kernels run on cpu or cuda tensors, got device {device}")


def pointers(tensors: Sequence[Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[ptr(t) for t in tensors])


def int64s(values: Sequence[int]):
    return (ctypes.c_int64 * len(values))(*[int(v) for v in values])


# ---- the ops ---------------------------------------------------------------------------------------------------------
@torch.library.custom_op("mrcnn::anchor_grid", mutates_args=())
def _anchor_grid_op(
    feature: Tensor, image: Tensor, sizes: list[float], aspect_ratios: list[float], stride: int
) -> Tensor:
    A = validate_anchor_grid(feature, image, sizes, aspect_ratios, stride)
    H, W = int(feature.shape[-2]), int(feature.shape[-1])
    Hi, Wi = int(image.shape[-2]), int(image.shape[-1])
    out = torch.empty((H * W * A, 4), dtype=torch.float32, device=feature.device)
    args = [H, W, Hi, Wi, floats(sizes), len(sizes), floats(aspect_ratios), len(aspect_ratios), int(stride), ptr(out)]
    run(feature.device, "mrcnn_anchor_grid_cpu", "mrcnn_anchor_grid_cuda", args)
    return out


@_anchor_grid_op.register_fake
def _(feature, image, sizes, aspect_ratios, stride):
    A = validate_anchor_grid(feature, image, sizes, aspect_ratios, stride)
    return feature.new_empty((feature.shape[-2] * feature.shape[-1] * A, 4), dtype=torch.float32)


@torch.library.custom_op("mrcnn::box_iou", mutates_args=())
def _box_iou_op(a: Tensor, b: Tensor) -> Tensor:
    validate_box_iou(a, b)
    a, b = a.contiguous(), b.contiguous()
    B, N, M = a.shape[0], a.shape[1], b.shape[1]
    out = torch.empty((B, N, M), dtype=torch.float32, device=a.device)
    f = "f32" if a.dtype == torch.float32 else "f16"
    run(a.device, f"mrcnn_box_iou_{f}_cpu", f"mrcnn_box_iou_{f}_cuda", [ptr(a), ptr(b), B, N, M, ptr(out)])
    return out


@_box_iou_op.register_fake
def _(a, b):
    validate_box_iou(a, b)
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=torch.float32)


@torch.library.custom_op("mrcnn::pre_nms_select", mutates_args=())
def _pre_nms_select_op(
    anchors: Tensor,
    objectness: Tensor,
    deltas: Tensor,
    image_sizes: Tensor,
    top_k: int,
    min_size: float,
    weights: list[float],
    clip: float,
) -> tuple[Tensor, Tensor, Tensor]:
    validate_pre_nms_select(anchors, objectness, deltas, image_sizes, top_k, weights)
    anchors, objectness, deltas, image_sizes = (t.contiguous() for t in (anchors, objectness, deltas, image_sizes))
    B, A = objectness.shape
    K = min(int(top_k), A)
    dev = objectness.device
    boxes = torch.empty((B, K, 4), dtype=torch.float32, device=dev)
    scores = torch.empty((B, K), dtype=torch.float32, device=dev)
    valid = torch.empty((B, K), dtype=torch.bool, device=dev)
    args = [
        ptr(anchors),
        ptr(objectness),
        ptr(deltas),
        ptr(image_sizes),
        B,
        A,
        int(top_k),
        float(min_size),
        floats(weights),
        float(clip),
        ptr(boxes),
        ptr(scores),
        ptr(valid),
    ]
    ws = cuda_workspace("mrcnn_pre_nms_select_workspace_size", dev, B, A, int(top_k)) if dev.type == "cuda" else None
    run(dev, "mrcnn_pre_nms_select_cpu", "mrcnn_pre_nms_select_cuda", args, ws)
    return boxes, scores, valid


@_pre_nms_select_op.register_fake
def _(anchors, objectness, deltas, image_sizes, top_k, min_size, weights, clip):
    validate_pre_nms_select(anchors, objectness, deltas, image_sizes, top_k, weights)
    B, A = objectness.shape
    K = torch.sym_min(int(top_k), A)
    return (
        objectness.new_empty((B, K, 4)),
        objectness.new_empty((B, K)),
        objectness.new_empty((B, K), dtype=torch.bool),
    )


@torch.library.custom_op("mrcnn::box_nms", mutates_args=())
def _box_nms_op(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    valid: Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_output: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    validate_box_nms(boxes, scores, classes, valid, max_output)
    boxes, scores, classes, valid = (t.contiguous() for t in (boxes, scores, classes, valid))
    B, N = scores.shape
    K = int(max_output)
    dev = boxes.device
    out_boxes = torch.empty((B, K, 4), dtype=torch.float32, device=dev)
    out_scores = torch.empty((B, K), dtype=torch.float32, device=dev)
    out_classes = torch.empty((B, K), dtype=torch.int64, device=dev)
    out_indices = torch.empty((B, K), dtype=torch.int64, device=dev)
    out_num = torch.empty((B,), dtype=torch.int64, device=dev)
    args = [
        ptr(boxes),
        ptr(scores),
        ptr(classes),
        ptr(valid),
        B,
        N,
        float(iou_threshold),
        float(score_threshold),
        K,
        ptr(out_boxes),
        ptr(out_scores),
        ptr(out_classes),
        ptr(out_indices),
        ptr(out_num),
    ]
    ws = cuda_workspace("mrcnn_box_nms_workspace_size", dev, B, N, K) if dev.type == "cuda" else None
    run(dev, "mrcnn_box_nms_cpu", "mrcnn_box_nms_cuda", args, ws)
    return out_boxes, out_scores, out_classes, out_indices, out_num


@_box_nms_op.register_fake
def _(boxes, scores, classes, valid, iou_threshold, score_threshold, max_output):
    validate_box_nms(boxes, scores, classes, valid, max_output)
    B, K = boxes.shape[0], int(max_output)
    return (
        boxes.new_empty((B, K, 4)),
        boxes.new_empty((B, K)),
        boxes.new_empty((B, K), dtype=torch.int64),
        boxes.new_empty((B, K), dtype=torch.int64),
        boxes.new_empty((B,), dtype=torch.int64),
    )


@torch.library.custom_op("mrcnn::match_proposals", mutates_args=())
def _match_proposals_op(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    validate_match_proposals(iou)
    iou = iou.contiguous()
    G, P = iou.shape
    out = torch.empty((P,), dtype=torch.int64, device=iou.device)
    args = [ptr(iou), G, P, float(high), float(low), int(bool(allow_low_quality)), ptr(out)]
    ws = cuda_workspace("mrcnn_match_proposals_workspace_size", iou.device, G, P) if iou.device.type == "cuda" else None
    run(iou.device, "mrcnn_match_proposals_cpu", "mrcnn_match_proposals_cuda", args, ws)
    return out


@_match_proposals_op.register_fake
def _(iou, high, low, allow_low_quality):
    validate_match_proposals(iou)
    return iou.new_empty((iou.shape[1],), dtype=torch.int64)


def _reads_nhwc(inputs: Sequence[Tensor], device: torch.device, cuda_nhwc: bool) -> bool:
    """Channels-last maps are read as they are (CPU: always; CUDA: with `cuda_nhwc`, the NHWC kernels, whose
    gradients are channels-last too: a warp's atomics on one line); anything else as contiguous NCHW."""
    if device.type == "cuda" and not cuda_nhwc:
        return False
    return all(x.is_contiguous(memory_format=torch.channels_last) for x in inputs) and not all(
        x.is_contiguous() for x in inputs
    )  # (a map both ways, C or H*W 1, reads alike)


@torch.library.custom_op("mrcnn::roi_align", mutates_args=())
def _roi_align_op(
    inputs: list[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    spatial_scales: list[float],
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
    cuda_nhwc: bool = False,
) -> Tensor:
    validate_roi_align(inputs, rois, levels, spatial_scales, pooled_h, pooled_w)
    nhwc = _reads_nhwc(inputs, rois.device, cuda_nhwc)
    inputs = inputs if nhwc else [x.contiguous() for x in inputs]
    rois = rois.contiguous()
    levels = None if levels is None else levels.contiguous()
    B, C = inputs[0].shape[:2]
    out = torch.empty((rois.shape[0], C, pooled_h, pooled_w), dtype=torch.float32, device=rois.device)
    head = [
        pointers(inputs),
        int64s([x.shape[2] for x in inputs]),
        int64s([x.shape[3] for x in inputs]),
        floats(spatial_scales),
        len(inputs),
        B,
        C,
        ptr(rois),
        ptr(levels),
        rois.shape[0],
        int(pooled_h),
        int(pooled_w),
        int(sampling_ratio),
        int(bool(aligned)),
    ]
    threads = [torch.get_num_threads()] if rois.device.type == "cpu" else []
    name = "mrcnn_roi_align_nhwc_f32" if nhwc else "mrcnn_roi_align_f32"
    run(rois.device, f"{name}_cpu", f"{name}_cuda", head + threads + [ptr(out)])
    return out


@_roi_align_op.register_fake
def _(inputs, rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned, cuda_nhwc=False):
    validate_roi_align(inputs, rois, levels, spatial_scales, pooled_h, pooled_w, fake=True)
    return inputs[0].new_empty((rois.shape[0], inputs[0].shape[1], pooled_h, pooled_w))


def _grad_maps(batch: int, C: int, heights: list[int], widths: list[int], device, channels_last: bool) -> list[Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        torch.empty((batch, C, h, w), dtype=torch.float32, device=device, memory_format=fmt)
        for h, w in zip(heights, widths, strict=True)
    ]


@torch.library.custom_op("mrcnn::roi_align_backward", mutates_args=())
def _roi_align_backward_op(
    grad: Tensor,
    rois: Tensor,
    levels: Tensor | None,
    spatial_scales: list[float],
    pooled_h: int,
    pooled_w: int,
    batch: int,
    heights: list[int],
    widths: list[int],
    sampling_ratio: int,
    aligned: bool,
    channels_last: bool,
) -> list[Tensor]:
    """Gradients of the maps; `channels_last` (CUDA only): NHWC gradients from the NHWC kernel, which reads
    grad [R, C, ph, pw] transposed to [R, ph, pw, C] once."""
    nhwc = channels_last and grad.device.type == "cuda"
    grad = grad.permute(0, 2, 3, 1).contiguous() if nhwc else grad.contiguous()
    rois = rois.contiguous()
    levels = None if levels is None else levels.contiguous()
    C = grad.shape[3] if nhwc else grad.shape[1]
    outs = _grad_maps(batch, C, heights, widths, grad.device, nhwc)
    head = [
        ptr(grad),
        ptr(rois),
        ptr(levels),
        rois.shape[0],
        int64s(heights),
        int64s(widths),
        floats(spatial_scales),
        len(heights),
        batch,
        C,
        int(pooled_h),
        int(pooled_w),
        int(sampling_ratio),
        int(bool(aligned)),
    ]
    threads = [torch.get_num_threads()] if grad.device.type == "cpu" else []
    run(
        grad.device,
        "mrcnn_roi_align_backward_f32_cpu",
        "mrcnn_roi_align_backward_nhwc_f32_cuda" if nhwc else "mrcnn_roi_align_backward_f32_cuda",
        head + threads + [pointers(outs)],
    )
    return outs


@_roi_align_backward_op.register_fake
def _(
    grad,
    rois,
    levels,
    spatial_scales,
    pooled_h,
    pooled_w,
    batch,
    heights,
    widths,
    sampling_ratio,
    aligned,
    channels_last,
):
    return _grad_maps(batch, grad.shape[1], heights, widths, grad.device, channels_last and grad.device.type == "cuda")


def _roi_align_setup(ctx, inputs, output) -> None:
    feats, rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned, cuda_nhwc = inputs
    ctx.save_for_backward(rois, levels)
    ctx.attrs = (
        spatial_scales,
        pooled_h,
        pooled_w,
        feats[0].shape[0],
        [x.shape[2] for x in feats],
        [x.shape[3] for x in feats],
        sampling_ratio,
        aligned,
        _reads_nhwc(feats, rois.device, cuda_nhwc),
    )


def _roi_align_grad(ctx, grad):
    rois, levels = ctx.saved_tensors
    scales, ph, pw, b, hs, ws, sr, aligned, nhwc = ctx.attrs
    grads = torch.ops.mrcnn.roi_align_backward(grad, rois, levels, scales, ph, pw, b, hs, ws, sr, aligned, nhwc)
    return list(grads), None, None, None, None, None, None, None, None


_roi_align_op.register_autograd(_roi_align_grad, setup_context=_roi_align_setup)
