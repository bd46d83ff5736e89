"""Which implementation model code runs for each custom op, as a value a model holds (no module state: two models
in one process choose independently).

    Ops(backend="auto", cuda_roi_align=True, cuda_roi_align_nhwc=False, pyramid_roi_align_export=False)
        backend                  "reference" (the pure-torch functions of mrcnn.ops), "native" (the kernels through
                                 mrcnn.native; an error where unsupported) or "auto" (native where the library, device
                                 and dtypes allow, else reference)
        cuda_roi_align           CUDA training runs RoIAlign on the native multi-level kernel (else torchvision's op
                                 per FPN level, a device sync each)
        cuda_roi_align_nhwc      ... reading channels-last maps as they are and writing their gradients so
        pyramid_roi_align_export an export traces RoIAlign as one torch.ops.mrcnn.roi_align node over the pyramid (the
                                 `rtx` flavour decomposes it into gathers)
    Ops.from_env()               the defaults, with MRCNN_OPS_BACKEND, MRCNN_CUDA_ROI_ALIGN (0|1) and
                                 MRCNN_CUDA_ROI_ALIGN_NHWC (0|1) applied; a bad value is one error line naming it
    ops.anchor_grid(...), ops.box_iou(...), ops.pre_nms_select(...), ops.box_nms(...), ops.match_proposals(...)
                                 the op under this choice (the references' signatures)
    ops.native_roi_align_applies(input, rois, dtype, inference)     whether model code takes the native RoIAlign
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from types import MappingProxyType

import torch
from torch import Tensor

from mrcnn import native
from mrcnn.errors import MrcnnError
from mrcnn.ops import anchors, boxes, matcher, nms, proposals

REFERENCE = MappingProxyType(
    {
        "anchor_grid": anchors.anchor_grid,
        "box_iou": boxes.box_iou,
        "pre_nms_select": proposals.pre_nms_select,
        "box_nms": nms.box_nms,
        "match_proposals": matcher.match_proposals,
    }
)  # read-only: the table is a constant
OPS = tuple(REFERENCE)
BACKENDS = ("reference", "native", "auto")


def native_supports(args: tuple, kwargs: dict) -> bool:
    """The native kernel can run these arguments here: the library is built, every tensor is on the CPU or (with
    CUDA kernels and a GPU) on CUDA, and none is float64."""
    if not native.available():
        return False
    for t in (*args, *kwargs.values()):
        if isinstance(t, Tensor):
            if t.device.type == "cuda" and not native.cuda_available():
                return False
            if t.device.type not in ("cpu", "cuda") or t.dtype == torch.float64:
                return False
    return True


def _op(name: str) -> Callable:
    ref = REFERENCE[name]

    def method(self: Ops, *args, **kwargs):
        return self.implementation(name, args, kwargs)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = ref.__doc__
    return method


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value not in ("0", "1"):
        raise MrcnnError(f"{name}={value!r}: must be 0 or 1")
    return value == "1"


@dataclasses.dataclass(frozen=True)
class Ops:
    backend: str = "auto"
    cuda_roi_align: bool = True
    cuda_roi_align_nhwc: bool = False
    pyramid_roi_align_export: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MrcnnError(f"unknown ops backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    @classmethod
    def from_env(cls) -> Ops:
        backend = os.environ.get("MRCNN_OPS_BACKEND") or "auto"
        if backend not in BACKENDS:
            raise MrcnnError(f"MRCNN_OPS_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
        return cls(
            backend=backend,
            cuda_roi_align=_env_flag("MRCNN_CUDA_ROI_ALIGN", True),
            cuda_roi_align_nhwc=_env_flag("MRCNN_CUDA_ROI_ALIGN_NHWC", False),
        )

    def replace(self, **changes) -> Ops:
        return dataclasses.replace(self, **changes)

    def implementation(self, name: str, args: tuple = (), kwargs: dict | None = None) -> Callable:
        """The function that runs op `name` (one of OPS) on these arguments under this choice."""
        if name not in REFERENCE:
            raise MrcnnError(f"unknown op {name!r}; choose one of {', '.join(OPS)}")
        if self.backend == "reference" or (self.backend == "auto" and not native_supports(args, kwargs or {})):
            return REFERENCE[name]
        return getattr(native, name)

    anchor_grid = _op("anchor_grid")
    box_iou = _op("box_iou")
    pre_nms_select = _op("pre_nms_select")
    box_nms = _op("box_nms")
    match_proposals = _op("match_proposals")

    def native_roi_align_applies(
        self, input: Tensor, rois: Tensor, dtype: torch.dtype | None = None, inference: bool = False
    ) -> bool:
        """Model code runs RoIAlign on the native kernel for float32 training (backend not "reference") on CPU, and
        on CUDA with `cuda_roi_align`, and traces it for an `rtx` export (`pyramid_roi_align_export`). `dtype`: the
        dtype `input` will be cast to for the op (default its own). `inference`: eager inference with the inference
        levers (mrcnn.model.inference) takes it too, without gradients (one call for the pyramid, bit for bit
        torchvision's CPU results). Eval and the other exports keep torchvision's op, which the ONNX exporter
        translates to RoiAlign."""
        float32 = (dtype or input.dtype) == torch.float32 and rois.dtype == torch.float32
        if self.pyramid_roi_align_export and float32:
            return True
        dev = input.device.type
        return (
            self.backend != "reference"
            and (inference or (input.requires_grad and torch.is_grad_enabled()))
            and (dev == "cpu" or (dev == "cuda" and self.cuda_roi_align and native.cuda_built()))
            and float32
            and not torch.compiler.is_compiling()
            and native.available()
        )
