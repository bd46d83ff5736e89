"""The TensorRT plugin library (plugins/tensorrt, libmrcnn_trt_plugins): one IPluginV3 creator per contract op of the
trt flavour (AnchorGrid, PreNmsSelect, BoxNms) and BoxIou, namespace "mrcnn", version "1".

    library_path()            the installed library (MRCNN_TRT_PLUGINS overrides), or None where it was not built
    build_info(path)          "mrcnn-trt-plugins 0.1.0 (TensorRT headers 11.1.0)", read without any TensorRT
    load(trt, path, needed)   into `trt`'s plugin registry (tensorrt or tensorrt_rtx); checks the needed creators
    creators(trt)             the mrcnn creators a registry holds: name, version, namespace, field names
    graph_ops(onnx_path)      the mrcnn node types of an export (what an engine of it needs)
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from mrcnn.errors import MrcnnError, message_line
from mrcnn.native.library import built_library

PLUGIN_OPS = ("AnchorGrid", "BoxIou", "PreNmsSelect", "BoxNms")
NAMESPACE, VERSION = "mrcnn", "1"


def library_path() -> Path | None:
    return built_library("MRCNN_TRT_PLUGINS", "libmrcnn_trt_plugins", "plugins/tensorrt")


def require_library(path: str | Path | None = None) -> Path:
    """The library to load (`path`, else the installed one), or one MrcnnError saying why there is none."""
    p = Path(path) if path is not None else library_path()
    if p is None:
        raise MrcnnError(
            "the mrcnn TensorRT plugin library is not built here (it needs TensorRT headers and nvcc "
            "at `pip install` time, docs/deployment.md); give --plugins LIB"
        )
    if not p.is_file():
        raise MrcnnError(f"{p}: no such TensorRT plugin library")
    return p


def build_info(path: str | Path) -> str:
    """What the library says it is (its build against which TensorRT headers); loading it needs no TensorRT."""
    try:
        lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
        fn = lib.mrcnn_trt_plugins_build_info
    except (OSError, AttributeError) as e:
        raise MrcnnError(f"{path}: not the mrcnn TensorRT plugin library ({message_line(e, 120)})") from None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def creators(trt) -> list[dict]:
    """The mrcnn creators of `trt`'s plugin registry: name, version, namespace, field names."""
    out = []
    for c in trt.get_plugin_registry().all_creators:
        if getattr(c, "plugin_namespace", "") == NAMESPACE:
            fields = c.field_names
            out.append(
                {
                    "name": c.name,
                    "version": c.plugin_version,
                    "namespace": c.plugin_namespace,
                    "fields": [f.name for f in fields] if fields is not None else [],
                }
            )
    return out


_LOADED: dict[str, Path] = {}


def load(trt, path: str | Path | None = None, needed: tuple[str, ...] | set[str] = PLUGIN_OPS) -> Path:
    """Load the library into `trt`'s plugin registry (once per process and runtime) and check that it registers
    every creator in `needed`; one MrcnnError naming the library or the missing creator."""
    p = require_library(path).resolve()
    key = f"{trt.__name__}:{p}"
    if key not in _LOADED:
        if trt.get_plugin_registry().load_library(str(p)) is None:
            raise MrcnnError(f"{p}: {trt.__name__} could not load it as a plugin library")
        _LOADED[key] = p
    have = {c["name"] for c in creators(trt) if c["version"] == VERSION}
    missing = sorted(set(needed) - have)
    if missing:
        raise MrcnnError(
            f"{p} registers no {NAMESPACE}::{missing[0]} (version {VERSION}) creator; rebuild the plugin "
            "library from this mrcnn version"
        )
    return p


def graph_ops(onnx_path: str | Path) -> set[str]:
    """The mrcnn node types of an ONNX graph (without loading its weights)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {n.op_type for n in model.graph.node if n.domain == NAMESPACE}


def file_summary(path: str | Path) -> dict:
    """The plugin library's name, SHA-256 and build info (an engine's .plan.json keeps them)."""
    from mrcnn.io import file_sha256

    return {"name": Path(path).name, "sha256": file_sha256(path), "build_info": build_info(path)}
