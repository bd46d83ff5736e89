"""Locate and load the native library built by CMake (mrcnn/lib/libmrcnn_kernels.so)."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

_LIB = None


def library_path() -> Path | None:
    env = os.environ.get("MRCNN_KERNELS_LIB")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in sorted((here / "lib").glob("libmrcnn_kernels*")) if (here / "lib").is_dir() else []:
        return cand
    # a source checkout: the most recently built CMake tree (build/dev, build/<wheel tag>, ...)
    builds = sorted(here.parent.glob("build/*/plugins/libmrcnn_kernels*"), key=lambda p: p.stat().st_mtime)
    return builds[-1] if builds else None


def load():
    global _LIB
    if _LIB is None:
        p = library_path()
        if p is None:
            return None
        _LIB = ctypes.CDLL(str(p))
        _LIB.mrcnn_build_info.restype = ctypes.c_char_p
    return _LIB


def native_status() -> str:
    try:
        lib = load()
    except OSError as e:
        return f"failed to load: {str(e)[:80]}"
    if lib is None:
        return "not built"
    return lib.mrcnn_build_info().decode()
