"""The `mrcnn` ONNX domain on ONNX Runtime: Python custom ops (onnxruntime-extensions) on the C++ CPU kernels.

onnxruntime-extensions' PyOp registers an op under the domain before "::" in its op_type ("mrcnn::BoxNms" resolves
nodes with domain="mrcnn", op_type="BoxNms") once the extensions library is registered on the session options
(`so.register_custom_ops_library(get_library_path())`). PyOp reads only scalar int / float / string attributes, while
the plugin fields include float lists (sizes, aspect_ratios, weights); so `adapt_model` gives every `mrcnn` node of
the in-memory copy handed to ONNX Runtime one extra string attribute `mrcnn_attrs` (all its attributes as JSON). The
file on disk, which TensorRT reads, is never changed.

The ops run as mrcnn.ops.AUTO chooses (the one choice of mrcnn.ops.dispatch): the kernels of libmrcnn_kernels on
numpy-backed tensors, or where the library is not built the pure-torch references, said once in the log. PyOp's
registry belongs to the process, so registration happens once per process.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnxruntime_extensions import PyOp, get_library_path, onnx_op

from mrcnn import native
from mrcnn.errors import MrcnnError
from mrcnn.export.contract import DOMAIN, OPS, check_fields
from mrcnn.ops import AUTO

ATTRS_KEY = "mrcnn_attrs"
_REGISTERED = False  # onnxruntime-extensions' PyOp registry is the process's: each op is registered once


def ops_backend() -> str:
    """What runs the ops here: "native" (the C++ CPU kernels) or "reference" (pure torch), as AUTO decides."""
    return "native" if AUTO.implementation("box_nms") is native.box_nms else "reference"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _anchor_grid(feature, image, mrcnn_attrs):
    a = json.loads(mrcnn_attrs)
    # only the shapes of feature / image are read: pass zero-stride views, not copies
    f = torch.zeros(()).expand(feature.shape)
    i = torch.zeros(()).expand(image.shape)
    return AUTO.anchor_grid(f, i, a["sizes"], a["aspect_ratios"], int(a["stride"])).numpy()


def _pre_nms_select(anchors, objectness, deltas, image_sizes, mrcnn_attrs):
    a = json.loads(mrcnn_attrs)
    boxes, scores, valid = AUTO.pre_nms_select(
        _t(anchors),
        _t(objectness),
        _t(deltas),
        _t(image_sizes),
        int(a["top_k"]),
        float(a["min_size"]),
        a["weights"],
        float(a["clip"]),
    )
    return boxes.numpy(), scores.numpy(), valid.numpy()


def _box_nms(boxes, scores, classes, valid, mrcnn_attrs):
    a = json.loads(mrcnn_attrs)
    out = AUTO.box_nms(
        _t(boxes),
        _t(scores),
        _t(classes),
        _t(valid).bool(),
        float(a["iou_threshold"]),
        float(a["score_threshold"]),
        int(a["max_output"]),
    )
    return tuple(t.numpy() for t in out)


def _box_iou(a, b, mrcnn_attrs):
    return AUTO.box_iou(_t(a), _t(b)).float().numpy()


_FUNCS = {"AnchorGrid": _anchor_grid, "PreNmsSelect": _pre_nms_select, "BoxNms": _box_nms, "BoxIou": _box_iou}
# PyOp kernels take fixed dtypes: the float32 instance of every type parameter
_PYOP_DTYPE = {"T_any": "tensor(float)", "T_box": "tensor(float)"}


def register(log: Callable[[str], None] | None = None) -> str:
    """Register the mrcnn domain's ops with onnxruntime-extensions (once per process). Returns the extensions
    library path for `SessionOptions.register_custom_ops_library`."""
    global _REGISTERED
    if not _REGISTERED:
        if log is not None:
            where = native.build_info() if ops_backend() == "native" else f"unavailable: {native.build_info()}"
            log(f"mrcnn ONNX Runtime custom ops: {ops_backend()} ({where})")
        types = {"tensor(float)": PyOp.dt_float, "tensor(int64)": PyOp.dt_int64, "tensor(bool)": PyOp.dt_bool}
        for op_type, fn in _FUNCS.items():
            d = OPS[op_type]
            onnx_op(
                op_type=f"{DOMAIN}::{op_type}",
                inputs=[types[_PYOP_DTYPE.get(p.dtype, p.dtype)] for p in d.inputs],
                outputs=[types[_PYOP_DTYPE.get(p.dtype, p.dtype)] for p in d.outputs],
                attrs={ATTRS_KEY: PyOp.dt_string},
            )(fn)
        _REGISTERED = True
    return get_library_path()


def adapt_model(model) -> int:
    """Add the JSON attribute `mrcnn_attrs` to every mrcnn node of `model` (in place), after checking the node's
    fields as the TensorRT plugin creator does (contract.check_fields: one MrcnnError naming the node and the field,
    before ONNX Runtime runs anything). Returns the node count."""
    n = 0
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        if node.op_type not in OPS:
            raise MrcnnError(f"node {node.name!r}: {DOMAIN}::{node.op_type} is not an mrcnn op ({', '.join(OPS)})")
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
        check_fields(OPS[node.op_type], attrs, f"node {node.name!r}")
        for i, a in enumerate(node.attribute):
            if a.name == ATTRS_KEY:
                del node.attribute[i]
                break
        node.attribute.append(onnx.helper.make_attribute(ATTRS_KEY, json.dumps(attrs)))
        n += 1
    return n
