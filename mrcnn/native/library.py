"""Loading the native library (plugins/kernels, libmrcnn_kernels) and calling its C ABI through ctypes.

library_path() -> Path | None     where the library is (env MRCNN_KERNELS_LIB, the package's lib/, a CMake tree)
load() -> CDLL | None              the library with every function's argtypes declared (None: not built)
call(name, *args)                  one C function; a non-zero status is one MrcnnError with its message
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
from pathlib import Path

import torch

from mrcnn.errors import MrcnnError, message_line

_P, _I64, _F, _I, _S = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_char_p
_SZ, _SZP = ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)
_ANCHOR = [_I64, _I64, _I64, _I64, _P, _I64, _P, _I64, _I64, _P]
_IOU = [_P, _P, _I64, _I64, _I64, _P]
_PRE = [_P, _P, _P, _P, _I64, _I64, _I64, _F, _P, _F, _P, _P, _P]
_NMS = [_P, _P, _P, _P, _I64, _I64, _F, _F, _I64, _P, _P, _P, _P, _P]
_MATCH = [_P, _I64, _I64, _F, _F, _I, _P]
_ROI = [_P, _P, _P, _P, _I64, _I64, _I64, _P, _P, _I64, _I64, _I64, _I64, _I]  # + threads (CPU), output
_ROI_BWD = [_P, _P, _P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I]  # + threads (CPU), grad_inputs
ROI_MAX_LEVELS = 8  # MRCNN_ROI_ALIGN_MAX_LEVELS
# Every function of plugins/kernels/include/mrcnn/kernels.h: name -> (restype, argtypes). tests/native/test_abi.py
# parses the header and compares, so a changed signature on either side fails a test, not a call.
SIGNATURES: dict[str, tuple[type, list[type]]] = {
    "mrcnn_build_info": (_S, []),
    "mrcnn_has_cuda": (_I, []),
    "mrcnn_error_string": (_S, [_I]),
    "mrcnn_anchor_grid_cpu": (_I, _ANCHOR),
    "mrcnn_box_iou_f32_cpu": (_I, _IOU),
    "mrcnn_box_iou_f16_cpu": (_I, _IOU),
    "mrcnn_pre_nms_select_cpu": (_I, _PRE),
    "mrcnn_box_nms_cpu": (_I, _NMS),
    "mrcnn_match_proposals_cpu": (_I, _MATCH),
    "mrcnn_roi_align_f32_cpu": (_I, [*_ROI, _I64, _P]),
    "mrcnn_roi_align_nhwc_f32_cpu": (_I, [*_ROI, _I64, _P]),
    "mrcnn_roi_align_backward_f32_cpu": (_I, [*_ROI_BWD, _I64, _P]),
    "mrcnn_roi_align_f32_cuda": (_I, [*_ROI, _P, _P]),
    "mrcnn_roi_align_backward_f32_cuda": (_I, [*_ROI_BWD, _P, _P]),
    "mrcnn_roi_align_nhwc_f32_cuda": (_I, [*_ROI, _P, _P]),
    "mrcnn_roi_align_backward_nhwc_f32_cuda": (_I, [*_ROI_BWD, _P, _P]),
    "mrcnn_anchor_grid_cuda": (_I, [*_ANCHOR, _P]),
    "mrcnn_box_iou_f32_cuda": (_I, [*_IOU, _P]),
    "mrcnn_box_iou_f16_cuda": (_I, [*_IOU, _P]),
    "mrcnn_pre_nms_select_workspace_size": (_I, [_I64, _I64, _I64, _SZP]),
    "mrcnn_pre_nms_select_cuda": (_I, [*_PRE, _P, _SZ, _P]),
    "mrcnn_box_nms_workspace_size": (_I, [_I64, _I64, _I64, _SZP]),
    "mrcnn_box_nms_cuda": (_I, [*_NMS, _P, _SZ, _P]),
    "mrcnn_match_proposals_workspace_size": (_I, [_I64, _I64, _SZP]),
    "mrcnn_match_proposals_cuda": (_I, [*_MATCH, _P, _SZ, _P]),
}
_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None


def built_library(env: str, name: str, tree: str) -> Path | None:
    """Where a library of this project is: $`env` if set, else the package's lib/`name`* (a wheel, or what
    `pip install -e .` installed beside the checkout), else the most recently built CMake tree's (a source checkout:
    build/dev, build/<wheel tag>, ...; `tree` under build/*/)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    lib = Path(str(importlib.resources.files("mrcnn") / "lib"))  # an editable install's package spans two folders
    found = sorted(lib.glob(f"{name}*")) if lib.is_dir() else []
    if found:
        return found[0]
    checkout = Path(__file__).resolve().parents[2]
    builds = sorted(checkout.glob(f"build/*/{tree}/{name}*"), key=lambda p: p.stat().st_mtime)
    return builds[-1] if builds else None


def library_path() -> Path | None:
    return built_library("MRCNN_KERNELS_LIB", "libmrcnn_kernels", "plugins/**")


def load() -> ctypes.CDLL | None:
    """The loaded library with argtypes declared, or None (the reason: load_error())."""
    global _LIB, _LIB_ERROR
    if _LIB is None and _LIB_ERROR is None:
        path = library_path()
        if path is None:
            _LIB_ERROR = "native library not built (pip install . or cmake --build; or set MRCNN_KERNELS_LIB)"
            return None
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            _LIB_ERROR = f"failed to load {path}: {message_line(e, 120)}"
            return None
        if not hasattr(lib, "mrcnn_box_iou_f32_cpu"):
            _LIB_ERROR = f"{path} has no kernels (an old build? rebuild with pip install .)"
            return None
        for name, (restype, argtypes) in SIGNATURES.items():
            if hasattr(lib, name):  # (the CUDA launchers exist only in a CUDA build)
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = argtypes, restype
        _LIB = lib
    return _LIB


def load_error() -> str | None:
    """Why load() gave None (None while it has not been asked or succeeded)."""
    return _LIB_ERROR


def available() -> bool:
    """The native library is built and loadable (CPU kernels)."""
    return load() is not None


def cuda_built() -> bool:
    """The library contains the CUDA launchers (it was built with nvcc)."""
    lib = load()
    return lib is not None and bool(lib.mrcnn_has_cuda())


def cuda_available() -> bool:
    """The CUDA kernels can run here: built with CUDA and a GPU is visible to torch."""
    return cuda_built() and torch.cuda.is_available()


def build_info() -> str:
    lib = load()
    return lib.mrcnn_build_info().decode() if lib is not None else f"unavailable: {_LIB_ERROR}"


def native_status() -> str:
    """`mrcnn info`'s line: the build description, or why there is none."""
    lib = load()
    return lib.mrcnn_build_info().decode() if lib is not None else (_LIB_ERROR or "not built")


def call(name: str, *args) -> None:
    lib = load()
    if lib is None:
        raise MrcnnError(f"mrcnn native kernels: {_LIB_ERROR}")
    fn = getattr(lib, name, None)
    if fn is None:
        raise MrcnnError(f"mrcnn native kernels: {name} is not in {library_path()} ({build_info()})")
    code = fn(*args)
    if code != 0:
        raise MrcnnError(f"{name} failed: {lib.mrcnn_error_string(code).decode()} (code {code})")
