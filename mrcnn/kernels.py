"""The native kernels (plugins/, libmrcnn_kernels) as torch ops, and Python wrappers with the references' signatures.

    torch.ops.mrcnn.anchor_grid      AnchorGrid      mrcnn.ops.anchor_grid
    torch.ops.mrcnn.box_iou          BoxIou          mrcnn.ops.box_iou
    torch.ops.mrcnn.pre_nms_select   PreNmsSelect    mrcnn.ops.pre_nms_select
    torch.ops.mrcnn.box_nms          BoxNms          mrcnn.ops.box_nms
    torch.ops.mrcnn.match_proposals  MatchProposals  mrcnn.ops.match_proposals

Shapes (the contract is the table in plugins/README.md):
    anchor_grid(feature [B,C,H,W], image [B,3,Hi,Wi], sizes, aspect_ratios, stride) -> [H*W*A,4] float32
    box_iou(a [B,N,4], b [B,M,4]) -> [B,N,M] float32                   (float32 or float16 boxes)
    pre_nms_select(anchors [A,4], objectness [B,A], deltas [B,A,4], image_sizes [B,2] int64, top_k, min_size,
                   weights, clip) -> boxes [B,K,4], scores [B,K], valid [B,K] bool        K = min(top_k, A)
    box_nms(boxes [B,N,4], scores [B,N], classes [B,N] int64, valid [B,N] bool, iou_threshold, score_threshold,
            max_output) -> boxes [B,K,4], scores [B,K], classes [B,K], indices [B,K], num [B]   K = max_output
    match_proposals(iou [G,P], high, low, allow_low_quality) -> matches [P] int64
    roi_align([inputs [B,C,H_l,W_l]], rois [R,5], levels [R] int64 | None, spatial_scales, pooled_h, pooled_w,
              sampling_ratio, aligned) -> [R,C,pooled_h,pooled_w]
        (float32, with autograd, training only, not a plugin op: torchvision.ops.roi_align semantics, RoI n on
        level levels[n]; CPU on all threads, CUDA one launch for the whole pyramid)

The torch ops take the layouts above (their CPU kernels call the C ABI through ctypes, their CUDA kernels call the
launchers on the current stream with a torch-allocated workspace; fake kernels give the fixed output shapes for
torch.export / torch.compile). The module-level functions below have exactly the signatures and return structure of
the references in mrcnn/ops (leading batch dimensions, fp16/bf16 in/out), validate their inputs (one
`KernelInputError`, a `MrcnnError` and a `ValueError`) and call the ops.

`set_backend("reference" | "kernels" | "auto")` and `resolve(name)` pick, for model code, the reference or the kernel
of an op (env MRCNN_OPS_BACKEND sets the start value; default "auto": kernels where built, else reference).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from mrcnn import native
from mrcnn.errors import MrcnnError

__all__ = [
    "KernelInputError",
    "available",
    "cuda_available",
    "cuda_built",
    "build_info",
    "anchor_grid",
    "box_iou",
    "pre_nms_select",
    "box_nms",
    "match_proposals",
    "roi_align",
    "multilevel_roi_align",
    "native_roi_align_applies",
    "set_cuda_roi_align",
    "cuda_roi_align_enabled",
    "cuda_roi_align",
    "set_pyramid_roi_align_export",
    "pyramid_roi_align_export",
    "set_backend",
    "get_backend",
    "backend",
    "resolve",
]


class KernelInputError(MrcnnError, ValueError):
    """Bad input to a native kernel (rank, shape, dtype, device, negative size)."""


def _scoped(setter: Callable, doc: str) -> Callable[..., contextlib.AbstractContextManager]:
    """A context manager from a module switch's setter (which returns the previous value): the value inside the
    block, the previous one restored afterwards."""

    @contextlib.contextmanager
    def scoped(value) -> Iterator[None]:
        prev = setter(value)
        try:
            yield
        finally:
            setter(prev)

    scoped.__doc__ = doc
    return scoped


# ---- the library ------------------------------------------------------------------------------------------------------
_P, _I64, _F, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SZP = ctypes.POINTER(ctypes.c_size_t)
_ANCHOR = [_I64, _I64, _I64, _I64, _P, _I64, _P, _I64, _I64, _P]
_IOU = [_P, _P, _I64, _I64, _I64, _P]
_PRE = [_P, _P, _P, _P, _I64, _I64, _I64, _F, _P, _F, _P, _P, _P]
_NMS = [_P, _P, _P, _P, _I64, _I64, _F, _F, _I64, _P, _P, _P, _P, _P]
_MATCH = [_P, _I64, _I64, _F, _F, _I, _P]
_ROI = [_P, _P, _P, _P, _I64, _I64, _I64, _P, _P, _I64, _I64, _I64, _I64, _I]  # + threads (CPU), output
_ROI_BWD = [_P, _P, _P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I]  # + threads (CPU), grad_inputs
_ROI_MAX_LEVELS = 8  # MRCNN_ROI_ALIGN_MAX_LEVELS
_SIGNATURES = {
    "mrcnn_has_cuda": [],
    "mrcnn_anchor_grid_cpu": _ANCHOR,
    "mrcnn_box_iou_f32_cpu": _IOU,
    "mrcnn_box_iou_f16_cpu": _IOU,
    "mrcnn_pre_nms_select_cpu": _PRE,
    "mrcnn_box_nms_cpu": _NMS,
    "mrcnn_match_proposals_cpu": _MATCH,
    "mrcnn_roi_align_f32_cpu": _ROI + [_I64, _P],
    "mrcnn_roi_align_backward_f32_cpu": _ROI_BWD + [_I64, _P],
    "mrcnn_roi_align_f32_cuda": _ROI + [_P, _P],
    "mrcnn_roi_align_backward_f32_cuda": _ROI_BWD + [_P, _P],
    "mrcnn_anchor_grid_cuda": _ANCHOR + [_P],
    "mrcnn_box_iou_f32_cuda": _IOU + [_P],
    "mrcnn_box_iou_f16_cuda": _IOU + [_P],
    "mrcnn_pre_nms_select_workspace_size": [_I64, _I64, _I64, _SZP],
    "mrcnn_pre_nms_select_cuda": _PRE + [_P, ctypes.c_size_t, _P],
    "mrcnn_box_nms_workspace_size": [_I64, _I64, _I64, _SZP],
    "mrcnn_box_nms_cuda": _NMS + [_P, ctypes.c_size_t, _P],
    "mrcnn_match_proposals_workspace_size": [_I64, _I64, _SZP],
    "mrcnn_match_proposals_cuda": _MATCH + [_P, ctypes.c_size_t, _P],
}
_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None


def _lib() -> ctypes.CDLL | None:
    """The loaded library with argtypes declared, or None (reason in _LIB_ERROR)."""
    global _LIB, _LIB_ERROR
    if _LIB is None and _LIB_ERROR is None:
        try:
            lib = native.load()
        except OSError as e:
            lib, _LIB_ERROR = None, f"failed to load {native.library_path()}: {str(e).splitlines()[0][:120]}"
        if lib is not None:
            if not hasattr(lib, "mrcnn_box_iou_f32_cpu"):
                _LIB_ERROR = f"{native.library_path()} has no kernels (an old build? rebuild with pip install .)"
            else:
                for name, argtypes in _SIGNATURES.items():
                    if hasattr(lib, name):
                        fn = getattr(lib, name)
                        fn.argtypes = argtypes
                        fn.restype = _I
                lib.mrcnn_error_string.argtypes = [_I]
                lib.mrcnn_error_string.restype = ctypes.c_char_p
                _LIB = lib
        elif _LIB_ERROR is None:
            _LIB_ERROR = "native library not built (pip install . or cmake --build; or set MRCNN_KERNELS_LIB)"
    return _LIB


def available() -> bool:
    """The native library is built and loadable (CPU kernels)."""
    return _lib() is not None


def cuda_built() -> bool:
    """The library contains the CUDA launchers (it was built with nvcc)."""
    lib = _lib()
    return lib is not None and bool(lib.mrcnn_has_cuda())


def cuda_available() -> bool:
    """The CUDA kernels can run here: built with CUDA and a GPU is visible to torch."""
    return cuda_built() and torch.cuda.is_available()


def build_info() -> str:
    lib = _lib()
    return lib.mrcnn_build_info().decode() if lib is not None else f"unavailable: {_LIB_ERROR}"


def _call(name: str, *args) -> None:
    lib = _lib()
    if lib is None:
        raise MrcnnError(f"mrcnn native kernels: {_LIB_ERROR}")
    fn = getattr(lib, name, None)
    if fn is None:
        raise MrcnnError(f"mrcnn native kernels: {name} is not in {native.library_path()} ({build_info()})")
    code = fn(*args)
    if code != 0:
        raise MrcnnError(f"{name} failed: {lib.mrcnn_error_string(code).decode()} (code {code})")


def _ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if t is not None and t.numel() else None


def _floats(values: Sequence[float]):
    return (ctypes.c_float * max(1, len(values)))(*[float(v) for v in values])


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _workspace(name: str, device: torch.device, *sizes: int) -> Tensor:
    nbytes = ctypes.c_size_t(0)
    _call(name, *sizes, ctypes.byref(nbytes))
    return torch.empty(max(1, nbytes.value), dtype=torch.uint8, device=device)


def _run(device: torch.device, cpu_name: str, cuda_name: str, args: list, workspace: Tensor | None = None) -> None:
    """Call the CPU function or the CUDA launcher (workspace, stream appended) for tensors on `device`."""
    if device.type == "cpu":
        _call(cpu_name, *args)
    elif device.type == "cuda":
        if not cuda_built():
            raise MrcnnError(f"mrcnn native kernels: built without CUDA ({build_info()}); {cuda_name} is missing")
        with torch.cuda.device(device):
            extra = [] if workspace is None else [_ptr(workspace), workspace.numel()]
            _call(cuda_name, *args, *extra, _stream(device))
    else:
        raise KernelInputError(f"mrcnn kernels run on cpu or cuda tensors, got device {device}")


# ---- input checks -----------------------------------------------------------------------------------------------------
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INTS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check(op: str, name: str, t, rank: int | None = None, last: int | None = None, dtypes=None) -> None:
    if not isinstance(t, Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if rank is not None and t.dim() != rank:
        raise KernelInputError(f"{op}: {name} must have rank {rank}, got shape {tuple(t.shape)}")
    if last is not None and (t.dim() == 0 or t.shape[-1] != last):
        raise KernelInputError(f"{op}: {name} must have a last dimension of {last}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise KernelInputError(f"{op}: {name} must be {names}, got {str(t.dtype).replace('torch.', '')}")


def _same_device(op: str, **tensors: Tensor) -> torch.device:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise KernelInputError(f"{op}: all tensors must be on one device, got {listed}")
    return first


def _check_dim(op: str, what: str, got, want) -> None:
    if got != want:
        raise KernelInputError(f"{op}: {what} must be {want}, got {got}")


def _nonneg(op: str, name: str, v) -> int:
    if isinstance(v, bool) or int(v) != v or int(v) < 0:
        raise KernelInputError(f"{op}: {name} must be a non-negative integer, got {v!r}")
    return int(v)


# ---- the torch ops ----------------------------------------------------------------------------------------------------
def _validate_anchor_grid(feature, image, sizes, aspect_ratios, stride) -> int:
    op = "anchor_grid"
    _check(op, "feature", feature)
    _check(op, "image", image)
    if feature.dim() < 2 or image.dim() < 2:
        raise KernelInputError(f"{op}: feature and image need rank >= 2 ([.., H, W]), got shapes "
                               f"{tuple(feature.shape)} and {tuple(image.shape)}")
    _same_device(op, feature=feature, image=image)
    for name, vals in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
        if not 1 <= len(vals) <= 32:
            raise KernelInputError(f"{op}: {name} needs 1 to 32 values, got {len(vals)}")
    _nonneg(op, "stride", stride)
    return len(sizes) * len(aspect_ratios)


@torch.library.custom_op("mrcnn::anchor_grid", mutates_args=())
def _anchor_grid_op(feature: Tensor, image: Tensor, sizes: list[float], aspect_ratios: list[float],
                    stride: int) -> Tensor:
    A = _validate_anchor_grid(feature, image, sizes, aspect_ratios, stride)
    H, W = int(feature.shape[-2]), int(feature.shape[-1])
    Hi, Wi = int(image.shape[-2]), int(image.shape[-1])
    out = torch.empty((H * W * A, 4), dtype=torch.float32, device=feature.device)
    args = [H, W, Hi, Wi, _floats(sizes), len(sizes), _floats(aspect_ratios), len(aspect_ratios), int(stride),
            _ptr(out)]
    _run(feature.device, "mrcnn_anchor_grid_cpu", "mrcnn_anchor_grid_cuda", args)
    return out


@_anchor_grid_op.register_fake
def _(feature, image, sizes, aspect_ratios, stride):
    A = _validate_anchor_grid(feature, image, sizes, aspect_ratios, stride)
    return feature.new_empty((feature.shape[-2] * feature.shape[-1] * A, 4), dtype=torch.float32)


def _validate_box_iou(a, b) -> None:
    op = "box_iou"
    _check(op, "a", a, 3, 4, (torch.float32, torch.float16))
    _check(op, "b", b, 3, 4, (torch.float32, torch.float16))
    _same_device(op, a=a, b=b)
    _check_dim(op, "b.dtype", b.dtype, a.dtype)
    _check_dim(op, "the batch of b", b.shape[0], a.shape[0])


@torch.library.custom_op("mrcnn::box_iou", mutates_args=())
def _box_iou_op(a: Tensor, b: Tensor) -> Tensor:
    _validate_box_iou(a, b)
    a, b = a.contiguous(), b.contiguous()
    B, N, M = a.shape[0], a.shape[1], b.shape[1]
    out = torch.empty((B, N, M), dtype=torch.float32, device=a.device)
    f = "f32" if a.dtype == torch.float32 else "f16"
    _run(a.device, f"mrcnn_box_iou_{f}_cpu", f"mrcnn_box_iou_{f}_cuda", [_ptr(a), _ptr(b), B, N, M, _ptr(out)])
    return out


@_box_iou_op.register_fake
def _(a, b):
    _validate_box_iou(a, b)
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=torch.float32)


def _validate_pre_nms_select(anchors, objectness, deltas, image_sizes, top_k, weights) -> None:
    op = "pre_nms_select"
    _check(op, "anchors", anchors, 2, 4, (torch.float32,))
    _check(op, "objectness", objectness, 2, None, (torch.float32,))
    _check(op, "deltas", deltas, 3, 4, (torch.float32,))
    _check(op, "image_sizes", image_sizes, 2, 2, (torch.int64,))
    _same_device(op, anchors=anchors, objectness=objectness, deltas=deltas, image_sizes=image_sizes)
    B, A = objectness.shape
    _check_dim(op, "deltas.shape", tuple(deltas.shape), (B, A, 4))
    _check_dim(op, "anchors.shape", tuple(anchors.shape), (A, 4))
    _check_dim(op, "image_sizes.shape", tuple(image_sizes.shape), (B, 2))
    _nonneg(op, "top_k", top_k)
    if len(weights) != 4:
        raise KernelInputError(f"{op}: weights needs 4 values (wx, wy, ww, wh), got {len(weights)}")


@torch.library.custom_op("mrcnn::pre_nms_select", mutates_args=())
def _pre_nms_select_op(anchors: Tensor, objectness: Tensor, deltas: Tensor, image_sizes: Tensor, top_k: int,
                       min_size: float, weights: list[float], clip: float) -> tuple[Tensor, Tensor, Tensor]:
    _validate_pre_nms_select(anchors, objectness, deltas, image_sizes, top_k, weights)
    anchors, objectness, deltas, image_sizes = (t.contiguous() for t in (anchors, objectness, deltas, image_sizes))
    B, A = objectness.shape
    K = min(int(top_k), A)
    dev = objectness.device
    boxes = torch.empty((B, K, 4), dtype=torch.float32, device=dev)
    scores = torch.empty((B, K), dtype=torch.float32, device=dev)
    valid = torch.empty((B, K), dtype=torch.bool, device=dev)
    args = [_ptr(anchors), _ptr(objectness), _ptr(deltas), _ptr(image_sizes), B, A, int(top_k), float(min_size),
            _floats(weights), float(clip), _ptr(boxes), _ptr(scores), _ptr(valid)]
    ws = _workspace("mrcnn_pre_nms_select_workspace_size", dev, B, A, int(top_k)) if dev.type == "cuda" else None
    _run(dev, "mrcnn_pre_nms_select_cpu", "mrcnn_pre_nms_select_cuda", args, ws)
    return boxes, scores, valid


@_pre_nms_select_op.register_fake
def _(anchors, objectness, deltas, image_sizes, top_k, min_size, weights, clip):
    _validate_pre_nms_select(anchors, objectness, deltas, image_sizes, top_k, weights)
    B, A = objectness.shape
    K = torch.sym_min(int(top_k), A)
    return (objectness.new_empty((B, K, 4)), objectness.new_empty((B, K)),
            objectness.new_empty((B, K), dtype=torch.bool))


def _validate_box_nms(boxes, scores, classes, valid, max_output) -> None:
    op = "box_nms"
    _check(op, "boxes", boxes, 3, 4, (torch.float32,))
    _check(op, "scores", scores, 2, None, (torch.float32,))
    _check(op, "classes", classes, 2, None, (torch.int64,))
    _check(op, "valid", valid, 2, None, (torch.bool,))
    _same_device(op, boxes=boxes, scores=scores, classes=classes, valid=valid)
    B, N = boxes.shape[0], boxes.shape[1]
    for name, t in (("scores", scores), ("classes", classes), ("valid", valid)):
        _check_dim(op, f"{name}.shape", tuple(t.shape), (B, N))
    _nonneg(op, "max_output", max_output)


@torch.library.custom_op("mrcnn::box_nms", mutates_args=())
def _box_nms_op(boxes: Tensor, scores: Tensor, classes: Tensor, valid: Tensor, iou_threshold: float,
                score_threshold: float, max_output: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _validate_box_nms(boxes, scores, classes, valid, max_output)
    boxes, scores, classes, valid = (t.contiguous() for t in (boxes, scores, classes, valid))
    B, N = scores.shape
    K = int(max_output)
    dev = boxes.device
    out_boxes = torch.empty((B, K, 4), dtype=torch.float32, device=dev)
    out_scores = torch.empty((B, K), dtype=torch.float32, device=dev)
    out_classes = torch.empty((B, K), dtype=torch.int64, device=dev)
    out_indices = torch.empty((B, K), dtype=torch.int64, device=dev)
    out_num = torch.empty((B,), dtype=torch.int64, device=dev)
    args = [_ptr(boxes), _ptr(scores), _ptr(classes), _ptr(valid), B, N, float(iou_threshold),
            float(score_threshold), K, _ptr(out_boxes), _ptr(out_scores), _ptr(out_classes), _ptr(out_indices),
            _ptr(out_num)]
    ws = _workspace("mrcnn_box_nms_workspace_size", dev, B, N, K) if dev.type == "cuda" else None
    _run(dev, "mrcnn_box_nms_cpu", "mrcnn_box_nms_cuda", args, ws)
    return out_boxes, out_scores, out_classes, out_indices, out_num


@_box_nms_op.register_fake
def _(boxes, scores, classes, valid, iou_threshold, score_threshold, max_output):
    _validate_box_nms(boxes, scores, classes, valid, max_output)
    B, K = boxes.shape[0], int(max_output)
    return (boxes.new_empty((B, K, 4)), boxes.new_empty((B, K)), boxes.new_empty((B, K), dtype=torch.int64),
            boxes.new_empty((B, K), dtype=torch.int64), boxes.new_empty((B,), dtype=torch.int64))


def _validate_match_proposals(iou) -> None:
    _check("match_proposals", "iou", iou, 2, None, (torch.float32,))


@torch.library.custom_op("mrcnn::match_proposals", mutates_args=())
def _match_proposals_op(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    _validate_match_proposals(iou)
    iou = iou.contiguous()
    G, P = iou.shape
    out = torch.empty((P,), dtype=torch.int64, device=iou.device)
    args = [_ptr(iou), G, P, float(high), float(low), int(bool(allow_low_quality)), _ptr(out)]
    ws = _workspace("mrcnn_match_proposals_workspace_size", iou.device, G, P) if iou.device.type == "cuda" else None
    _run(iou.device, "mrcnn_match_proposals_cpu", "mrcnn_match_proposals_cuda", args, ws)
    return out


@_match_proposals_op.register_fake
def _(iou, high, low, allow_low_quality):
    _validate_match_proposals(iou)
    return iou.new_empty((iou.shape[1],), dtype=torch.int64)


def _validate_roi_align(inputs, rois, levels, spatial_scales, pooled_h, pooled_w, fake: bool = False) -> None:
    op = "roi_align"
    if not isinstance(inputs, (list, tuple)) or not 1 <= len(inputs) <= _ROI_MAX_LEVELS:
        raise KernelInputError(f"{op}: inputs must be a list of 1 to {_ROI_MAX_LEVELS} feature maps")
    if len(spatial_scales) != len(inputs):
        raise KernelInputError(f"{op}: {len(inputs)} feature maps but {len(spatial_scales)} spatial scales")
    for i, x in enumerate(inputs):
        _check(op, f"inputs[{i}]", x, 4, None, (torch.float32,))
        if x.shape[:2] != inputs[0].shape[:2]:
            raise KernelInputError(f"{op}: feature maps must share batch and channels, got {tuple(x.shape[:2])} "
                                   f"and {tuple(inputs[0].shape[:2])}")
    _check(op, "rois", rois, 2, 5, (torch.float32,))
    if levels is not None:
        _check(op, "levels", levels, 1, None, (torch.int64,))
        _check_dim(op, "levels.shape[0]", levels.shape[0], rois.shape[0])
    dev = _same_device(op, **{f"inputs[{i}]": x for i, x in enumerate(inputs)}, rois=rois, levels=levels)
    if not fake and not (dev.type == "cpu" or (dev.type == "cuda" and cuda_built())):
        raise KernelInputError(f"{op}: the native RoIAlign runs on cpu (or cuda with a CUDA build) tensors, got {dev}")
    if int(pooled_h) <= 0 or int(pooled_w) <= 0:
        raise KernelInputError(f"{op}: output size must be positive, got {(pooled_h, pooled_w)}")


def _pointers(tensors: Sequence[Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[_ptr(t) for t in tensors])


def _int64s(values: Sequence[int]):
    return (ctypes.c_int64 * len(values))(*[int(v) for v in values])


@torch.library.custom_op("mrcnn::roi_align", mutates_args=())
def _roi_align_op(inputs: list[Tensor], rois: Tensor, levels: Optional[Tensor], spatial_scales: list[float],
                  pooled_h: int, pooled_w: int, sampling_ratio: int, aligned: bool) -> Tensor:
    _validate_roi_align(inputs, rois, levels, spatial_scales, pooled_h, pooled_w)
    inputs = [x.contiguous() for x in inputs]
    rois = rois.contiguous()
    levels = None if levels is None else levels.contiguous()
    B, C = inputs[0].shape[:2]
    out = torch.empty((rois.shape[0], C, pooled_h, pooled_w), dtype=torch.float32, device=rois.device)
    head = [_pointers(inputs), _int64s([x.shape[2] for x in inputs]), _int64s([x.shape[3] for x in inputs]),
            _floats(spatial_scales), len(inputs), B, C, _ptr(rois), _ptr(levels), rois.shape[0], int(pooled_h),
            int(pooled_w), int(sampling_ratio), int(bool(aligned))]
    threads = [torch.get_num_threads()] if rois.device.type == "cpu" else []
    _run(rois.device, "mrcnn_roi_align_f32_cpu", "mrcnn_roi_align_f32_cuda", head + threads + [_ptr(out)])
    return out


@_roi_align_op.register_fake
def _(inputs, rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned):
    _validate_roi_align(inputs, rois, levels, spatial_scales, pooled_h, pooled_w, fake=True)
    return inputs[0].new_empty((rois.shape[0], inputs[0].shape[1], pooled_h, pooled_w))


@torch.library.custom_op("mrcnn::roi_align_backward", mutates_args=())
def _roi_align_backward_op(grad: Tensor, rois: Tensor, levels: Optional[Tensor], spatial_scales: list[float],
                           pooled_h: int, pooled_w: int, batch: int, heights: list[int], widths: list[int],
                           sampling_ratio: int, aligned: bool) -> list[Tensor]:
    grad, rois = grad.contiguous(), rois.contiguous()
    levels = None if levels is None else levels.contiguous()
    C = grad.shape[1]
    outs = [torch.empty((batch, C, h, w), dtype=torch.float32, device=grad.device) for h, w in zip(heights, widths)]
    head = [_ptr(grad), _ptr(rois), _ptr(levels), rois.shape[0], _int64s(heights), _int64s(widths),
            _floats(spatial_scales), len(heights), batch, C, int(pooled_h), int(pooled_w), int(sampling_ratio),
            int(bool(aligned))]
    threads = [torch.get_num_threads()] if grad.device.type == "cpu" else []
    _run(grad.device, "mrcnn_roi_align_backward_f32_cpu", "mrcnn_roi_align_backward_f32_cuda",
         head + threads + [_pointers(outs)])
    return outs


@_roi_align_backward_op.register_fake
def _(grad, rois, levels, spatial_scales, pooled_h, pooled_w, batch, heights, widths, sampling_ratio, aligned):
    return [grad.new_empty((batch, grad.shape[1], h, w)) for h, w in zip(heights, widths)]


def _roi_align_setup(ctx, inputs, output) -> None:
    feats, rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.attrs = (spatial_scales, pooled_h, pooled_w, feats[0].shape[0], [x.shape[2] for x in feats],
                 [x.shape[3] for x in feats], sampling_ratio, aligned)


def _roi_align_grad(ctx, grad):
    rois, levels = ctx.saved_tensors
    scales, ph, pw, b, hs, ws, sr, aligned = ctx.attrs
    grads = torch.ops.mrcnn.roi_align_backward(grad, rois, levels, scales, ph, pw, b, hs, ws, sr, aligned)
    return list(grads), None, None, None, None, None, None, None


_roi_align_op.register_autograd(_roi_align_grad, setup_context=_roi_align_setup)


# ---- RoIAlign with torchvision's signature, and its multi-level form (training) ---------------------------------------
def roi_align(input: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align (rois [R,5] form) on the native kernel: float32, differentiable in `input`; on CPU
    all torch threads and results equal to torchvision's CPU kernel bit for bit."""
    return multilevel_roi_align([input], rois, None, [spatial_scale], output_size, sampling_ratio, aligned)


def multilevel_roi_align(features: Sequence[Tensor], rois: Tensor, levels: Tensor | None,
                         spatial_scales: Sequence[float], output_size: int | tuple[int, int],
                         sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign over a feature pyramid in one call: RoI n pools from features[levels[n]] at spatial_scales[levels[n]]
    (levels None: all from features[0]). Equals torchvision.ops.roi_align run per level on that level's RoIs, with
    no host-side split of the RoIs (no device sync). float32, differentiable in every feature map."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    features, scales = list(features), [float(s) for s in spatial_scales]
    # here too: on meta tensors the op would dispatch to its fake kernel
    _validate_roi_align(features, rois, levels, scales, ph, pw)
    try:  # the C ABI checks indices and levels; a failure is explained here (no extra pass over rois when fine)
        return torch.ops.mrcnn.roi_align(features, rois.detach(), levels, scales, int(ph), int(pw),
                                         int(sampling_ratio), bool(aligned))
    except KernelInputError:
        raise
    except MrcnnError:
        index, batch = rois[:, 0], features[0].shape[0]
        if index.numel() and not bool(((index >= 0) & (index < batch)).all()):
            raise KernelInputError(f"roi_align: rois[:, 0] must be image indices in [0, {batch}), got "
                                   f"{index.min().item():g}..{index.max().item():g}") from None
        if levels is not None and levels.numel() and not bool(((levels >= 0) & (levels < len(features))).all()):
            raise KernelInputError(f"roi_align: levels must be in [0, {len(features)}), got "
                                   f"{levels.min().item()}..{levels.max().item()}") from None
        raise


_CUDA_ROI_ALIGN = os.environ.get("MRCNN_CUDA_ROI_ALIGN", "1") != "0"


def set_cuda_roi_align(enabled: bool) -> bool:
    """Whether CUDA training uses the native multi-level RoIAlign (start value: on; env MRCNN_CUDA_ROI_ALIGN=0 turns
    it off, and CUDA training then runs torchvision's RoIAlign per FPN level, a device sync each). On by default since
    test_cuda_roi_align_equals_cpu passed on an H200 (2026-12-04). Returns the previous value."""
    global _CUDA_ROI_ALIGN
    prev, _CUDA_ROI_ALIGN = _CUDA_ROI_ALIGN, bool(enabled)
    return prev


def cuda_roi_align_enabled() -> bool:
    return _CUDA_ROI_ALIGN


cuda_roi_align = _scoped(set_cuda_roi_align, "set_cuda_roi_align(enabled) inside the block, restored afterwards.")


_PYRAMID_ROI_ALIGN_EXPORT = False


def set_pyramid_roi_align_export(enabled: bool) -> bool:
    """Whether an export traces RoIAlign as one torch.ops.mrcnn.roi_align node over the whole pyramid (the `rtx`
    ONNX flavour decomposes that node into gathers) instead of torchvision's op per level. Returns the previous
    value."""
    global _PYRAMID_ROI_ALIGN_EXPORT
    prev, _PYRAMID_ROI_ALIGN_EXPORT = _PYRAMID_ROI_ALIGN_EXPORT, bool(enabled)
    return prev


pyramid_roi_align_export = _scoped(set_pyramid_roi_align_export,
                                   "set_pyramid_roi_align_export(enabled) inside the block, restored afterwards.")


def native_roi_align_applies(input: Tensor, rois: Tensor, dtype: torch.dtype | None = None) -> bool:
    """Model code runs RoIAlign on the native kernel for float32 training (backend not "reference") on CPU, and on
    CUDA when enabled (set_cuda_roi_align), and traces it for an `rtx` export (pyramid_roi_align_export). `dtype`:
    the dtype `input` will be cast to for the op (default its own). Eval and the other exports keep torchvision's
    op, which the ONNX exporter translates to RoiAlign."""
    if _PYRAMID_ROI_ALIGN_EXPORT and (dtype or input.dtype) == torch.float32 and rois.dtype == torch.float32:
        return True
    dev = input.device.type
    return (_backend != "reference" and input.requires_grad and torch.is_grad_enabled()
            and (dev == "cpu" or (dev == "cuda" and _CUDA_ROI_ALIGN and cuda_built()))
            and (dtype or input.dtype) == torch.float32 and rois.dtype == torch.float32
            and not torch.compiler.is_compiling() and available())


# ---- wrappers with the references' signatures (the five plugin ops) ---------------------------------------------------
def anchor_grid(feature: Tensor, image: Tensor, sizes: Sequence[float], aspect_ratios: Sequence[float],
                stride: int = 0) -> Tensor:
    """mrcnn.ops.anchor_grid on the native kernel (bit-exact)."""
    _validate_anchor_grid(feature, image, list(sizes), list(aspect_ratios), stride)
    return torch.ops.mrcnn.anchor_grid(feature.detach(), image.detach(), [float(s) for s in sizes],
                                       [float(r) for r in aspect_ratios], int(stride))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """mrcnn.ops.box_iou on the native kernel: a [...,N,4], b [...,M,4] (leading dims broadcast) -> [...,N,M]
    float32 (float16 boxes stay float16 in the kernel; bfloat16 is upcast, like the reference)."""
    op = "box_iou"
    for name, t in (("a", a), ("b", b)):
        _check(op, name, t, None, 4, _FLOATS)
        if t.dim() < 2:
            raise KernelInputError(f"{op}: {name} must have rank >= 2 ([..., N, 4]), got shape {tuple(t.shape)}")
    _same_device(op, a=a, b=b)
    try:
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise KernelInputError(f"{op}: batch dimensions {tuple(a.shape[:-2])} and {tuple(b.shape[:-2])} do not "
                               f"broadcast") from None
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
    _check(op, "anchors", anchors, 2, 4, _FLOATS)
    _check(op, "objectness", objectness, 2, None, _FLOATS)
    _check(op, "deltas", deltas, 3, 4, _FLOATS)
    _check(op, "image_sizes", image_sizes, 2, 2, _INTS)
    _nonneg(op, "top_k", top_k)
    boxes, scores, valid = torch.ops.mrcnn.pre_nms_select(
        anchors.detach().float(), objectness.detach().float(), deltas.detach().float(),
        image_sizes.detach().to(torch.int64), int(top_k), float(min_size), [float(w) for w in weights], float(clip))
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
    _check(op, "boxes", boxes, 3, 4, _FLOATS)
    _check(op, "scores", scores, 2, None, _FLOATS)
    _check(op, "classes", classes, 2, None, _INTS)
    _check(op, "valid", valid, 2, None, (torch.bool,) + _INTS)
    _nonneg(op, "max_output", max_output)
    out = torch.ops.mrcnn.box_nms(boxes.detach().float(), scores.detach().float(), classes.detach().to(torch.int64),
                                  valid.detach().bool(), float(iou_threshold), float(score_threshold),
                                  int(max_output))
    return (out[0].to(boxes.dtype), out[1].to(scores.dtype), *out[2:])


def match_proposals(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    """mrcnn.ops.match_proposals on the native kernel (float16/bfloat16 IoU is upcast exactly)."""
    _check("match_proposals", "iou", iou, 2, None, _FLOATS)
    return torch.ops.mrcnn.match_proposals(iou.detach().float(), float(high), float(low), bool(allow_low_quality))


# ---- backend switch for model code ------------------------------------------------------------------------------------
OPS = ("anchor_grid", "box_iou", "pre_nms_select", "box_nms", "match_proposals")
BACKENDS = ("reference", "kernels", "auto")
_backend = os.environ.get("MRCNN_OPS_BACKEND", "auto")
if _backend not in BACKENDS:
    _backend = "auto"


def set_backend(name: str) -> str:
    """Select the implementation `resolve` returns: "reference" (mrcnn.ops, pure torch), "kernels" (native, an
    error where unsupported) or "auto" (native where the library, device and dtypes allow, else reference).
    Returns the previous backend."""
    global _backend
    if name not in BACKENDS:
        raise MrcnnError(f"unknown ops backend {name!r}; choose one of {', '.join(BACKENDS)}")
    prev, _backend = _backend, name
    return prev


def get_backend() -> str:
    return _backend


backend = _scoped(set_backend, "set_backend(name) inside the block, restored afterwards.")


def _kernel_supports(args: tuple, kwargs: dict) -> bool:
    if not available():
        return False
    for t in (*args, *kwargs.values()):
        if isinstance(t, Tensor):
            if t.device.type == "cuda" and not cuda_available():
                return False
            if t.device.type not in ("cpu", "cuda") or t.dtype == torch.float64:
                return False
    return True


def resolve(name: str) -> Callable:
    """The function implementing op `name` (one of OPS) under the current backend, read at call time."""
    if name not in OPS:
        raise MrcnnError(f"unknown op {name!r}; choose one of {', '.join(OPS)}")
    from mrcnn.ops import REFERENCE

    ref, ker = REFERENCE[name], globals()[name]

    def dispatch(*args, **kwargs):
        if _backend == "reference" or (_backend == "auto" and not _kernel_supports(args, kwargs)):
            return ref(*args, **kwargs)
        return ker(*args, **kwargs)

    dispatch.__name__ = dispatch.__qualname__ = name
    dispatch.__doc__ = ref.__doc__
    return dispatch
