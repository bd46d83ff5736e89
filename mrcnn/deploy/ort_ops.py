"""The `mrcnn` ONNX domain on ONNX Runtime: Python custom ops (onnxruntime-extensions) on the C++ CPU kernels.

onnxruntime-extensions' PyOp registers an op under the domain before "::" in its op_type ("mrcnn::BoxNms" resolves
nodes with domain="mrcnn", op_type="BoxNms") once the extensions library is registered on the session options
(`so.register_custom_ops_library(get_library_path())`). PyOp reads only scalar int / float / string attributes, while
the plugin fields include float lists (sizes, aspect_ratios, weights); so `adapt_model` gives every `mrcnn` node of
the in-memory copy handed to ONNX Runtime one extra string attribute `mrcnn_attrs` (all its attributes as JSON). The
file on disk, which TensorRT reads, is never changed.

The ops run mrcnn.native (libmrcnn_kernels, C++ CPU) on numpy-backed tensors; where the library is not built they
fall back to the pure-torch references in mrcnn.ops and say so once in the log.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch

from mrcnn.export.contract import DOMAIN, OPS

ATTRS_KEY = "mrcnn_attrs"
_REGISTERED = False
_IMPL: dict[str, Callable] = {}
_BACKEND = ""
_NAMES = ("anchor_grid", "pre_nms_select", "box_nms", "box_iou")


def backend(log: Callable[[str], None] | None = None) -> str:
    """"kernels" (C++ CPU library) or "reference" (pure torch); chosen once per process."""
    global _BACKEND
    if not _BACKEND:
        from mrcnn import native

        if native.available():
            _BACKEND = "kernels"
            for name in _NAMES:
                _IMPL[name] = getattr(native, name)
            msg = f"mrcnn ONNX Runtime custom ops: C++ CPU kernels ({native.build_info()})"
        else:
            import mrcnn.ops as reference

            _BACKEND = "reference"
            for name in _NAMES:
                _IMPL[name] = getattr(reference, name)
            msg = (f"mrcnn ONNX Runtime custom ops: native kernels unavailable ({native.build_info()}); "
                   f"falling back to the pure-torch reference ops")
        if log is not None:
            log(msg)
    return _BACKEND


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _anchor_grid(feature, image, mrcnn_attrs):
    a = json.loads(mrcnn_attrs)
    # only the shapes of feature / image are read: pass zero-stride views, not copies
    f = torch.zeros(()).expand(feature.shape)
    i = torch.zeros(()).expand(image.shape)
    return _IMPL["anchor_grid"](f, i, a["sizes"], a["aspect_ratios"], int(a["stride"])).numpy()


def _pre_nms_select(anchors, objectness, deltas, image_sizes, mrcnn_attrs):
    a = json.loads(mrcnn_attrs)
    boxes, scores, valid = _IMPL["pre_nms_select"](_t(anchors), _t(objectness), _t(deltas), _t(image_sizes),
                                                   int(a["top_k"]), float(a["min_size"]), a["weights"],
                                                   float(a["clip"]))
    return boxes.numpy(), scores.numpy(), valid.numpy()


def _box_nms(boxes, scores, classes, valid, mrcnn_attrs):
    a = json.loads(mrcnn_attrs)
    out = _IMPL["box_nms"](_t(boxes), _t(scores), _t(classes), _t(valid).bool(), float(a["iou_threshold"]),
                           float(a["score_threshold"]), int(a["max_output"]))
    return tuple(t.numpy() for t in out)


def _box_iou(a, b, mrcnn_attrs):
    return _IMPL["box_iou"](_t(a), _t(b)).float().numpy()


_FUNCS = {"AnchorGrid": _anchor_grid, "PreNmsSelect": _pre_nms_select, "BoxNms": _box_nms, "BoxIou": _box_iou}
# PyOp kernels take fixed dtypes: the float32 instance of every type parameter
_PYOP_DTYPE = {"T_any": "tensor(float)", "T_box": "tensor(float)"}


def register(log: Callable[[str], None] | None = None) -> str:
    """Register the mrcnn domain's ops with onnxruntime-extensions (once per process). Returns the extensions
    library path for `SessionOptions.register_custom_ops_library`."""
    global _REGISTERED
    from onnxruntime_extensions import PyOp, get_library_path, onnx_op

    backend(log)
    if not _REGISTERED:
        types = {"tensor(float)": PyOp.dt_float, "tensor(int64)": PyOp.dt_int64, "tensor(bool)": PyOp.dt_bool}
        for op_type, fn in _FUNCS.items():
            d = OPS[op_type]
            onnx_op(op_type=f"{DOMAIN}::{op_type}", inputs=[types[_PYOP_DTYPE.get(p.dtype, p.dtype)] for p in d.inputs],
                    outputs=[types[_PYOP_DTYPE.get(p.dtype, p.dtype)] for p in d.outputs],
                    attrs={ATTRS_KEY: PyOp.dt_string})(fn)
        _REGISTERED = True
    return get_library_path()


def adapt_model(model) -> int:
    """Add the JSON attribute `mrcnn_attrs` to every mrcnn node of `model` (in place). Returns the node count."""
    import onnx

    n = 0
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        attrs = {}
        for a in node.attribute:
            if a.name == ATTRS_KEY:
                continue
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, (list, tuple)):
                v = [x.decode() if isinstance(x, bytes) else x for x in v]
            attrs[a.name] = v
        for i, a in enumerate(node.attribute):
            if a.name == ATTRS_KEY:
                del node.attribute[i]
                break
        node.attribute.append(onnx.helper.make_attribute(ATTRS_KEY, json.dumps(attrs)))
        n += 1
    return n
