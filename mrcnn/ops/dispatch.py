"""Which implementation model code runs for each op, and the switches around RoIAlign.

    set_backend("reference" | "kernels" | "auto") / backend(name) block / get_backend()
        the ops backend: "reference" (the pure-torch functions of mrcnn.ops), "kernels" (mrcnn.native, an error
        where unsupported) or "auto" (native where the library, device and dtypes allow, else reference); env
        MRCNN_OPS_BACKEND sets the start value
    resolve(name) -> function          the implementation of op `name` under the current backend, read at call time
    set_cuda_roi_align / cuda_roi_align(enabled) block      CUDA training's native multi-level RoIAlign (default on)
    set_pyramid_roi_align_export / pyramid_roi_align_export(enabled) block      one RoIAlign node for an rtx export
    native_roi_align_applies(input, rois, dtype, inference)  whether model code takes the native RoIAlign
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
from torch import Tensor

from mrcnn import native
from mrcnn.errors import MrcnnError
from mrcnn.ops import anchors, boxes, matcher, nms, proposals

REFERENCE = {
    "anchor_grid": anchors.anchor_grid,
    "box_iou": boxes.box_iou,
    "pre_nms_select": proposals.pre_nms_select,
    "box_nms": nms.box_nms,
    "match_proposals": matcher.match_proposals,
}


def scoped(setter: Callable, doc: str) -> Callable[..., contextlib.AbstractContextManager]:
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


backend = scoped(set_backend, "set_backend(name) inside the block, restored afterwards.")


def _kernel_supports(args: tuple, kwargs: dict) -> bool:
    if not native.available():
        return False
    for t in (*args, *kwargs.values()):
        if isinstance(t, Tensor):
            if t.device.type == "cuda" and not native.cuda_available():
                return False
            if t.device.type not in ("cpu", "cuda") or t.dtype == torch.float64:
                return False
    return True


def resolve(name: str) -> Callable:
    """The function implementing op `name` (one of OPS) under the current backend, read at call time."""
    if name not in OPS:
        raise MrcnnError(f"unknown op {name!r}; choose one of {', '.join(OPS)}")
    ref, ker = REFERENCE[name], getattr(native, name)

    def dispatch(*args, **kwargs):
        if _backend == "reference" or (_backend == "auto" and not _kernel_supports(args, kwargs)):
            return ref(*args, **kwargs)
        return ker(*args, **kwargs)

    dispatch.__name__ = dispatch.__qualname__ = name
    dispatch.__doc__ = ref.__doc__
    return dispatch


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


cuda_roi_align = scoped(set_cuda_roi_align, "set_cuda_roi_align(enabled) inside the block, restored afterwards.")
cuda_roi_align_nhwc = scoped(native.set_cuda_roi_align_nhwc,
                             "set_cuda_roi_align_nhwc(enabled) inside the block, restored afterwards.")


_PYRAMID_ROI_ALIGN_EXPORT = False


def set_pyramid_roi_align_export(enabled: bool) -> bool:
    """Whether an export traces RoIAlign as one torch.ops.mrcnn.roi_align node over the whole pyramid (the `rtx`
    ONNX flavour decomposes that node into gathers) instead of torchvision's op per level. Returns the previous
    value."""
    global _PYRAMID_ROI_ALIGN_EXPORT
    prev, _PYRAMID_ROI_ALIGN_EXPORT = _PYRAMID_ROI_ALIGN_EXPORT, bool(enabled)
    return prev


pyramid_roi_align_export = scoped(set_pyramid_roi_align_export,
                                   "set_pyramid_roi_align_export(enabled) inside the block, restored afterwards.")


def native_roi_align_applies(input: Tensor, rois: Tensor, dtype: torch.dtype | None = None,
                             inference: bool = False) -> bool:
    """Model code runs RoIAlign on the native kernel for float32 training (backend not "reference") on CPU, and on
    CUDA when enabled (set_cuda_roi_align), and traces it for an `rtx` export (pyramid_roi_align_export). `dtype`:
    the dtype `input` will be cast to for the op (default its own). `inference`: eager inference with the inference
    levers (mrcnn.model.inference) takes it too, without gradients (one call for the pyramid, bit for bit
    torchvision's CPU results). Eval and the other exports keep torchvision's op, which the ONNX exporter translates
    to RoiAlign."""
    if _PYRAMID_ROI_ALIGN_EXPORT and (dtype or input.dtype) == torch.float32 and rois.dtype == torch.float32:
        return True
    dev = input.device.type
    return (_backend != "reference" and (inference or (input.requires_grad and torch.is_grad_enabled()))
            and (dev == "cpu" or (dev == "cuda" and _CUDA_ROI_ALIGN and native.cuda_built()))
            and (dtype or input.dtype) == torch.float32 and rois.dtype == torch.float32
            and not torch.compiler.is_compiling() and native.available())

