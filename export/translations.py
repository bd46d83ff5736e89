"""Two ONNX translations of the torch.ops.mrcnn.* nodes of one traced graph (design.md §4).

    trt       one `mrcnn` node per op (export/contract.py): TensorRT maps it to the plugin, ONNX Runtime to the
              Python custom op on the C++ kernels (mrcnn/runtime/ort_ops.py)
    portable  onnxscript decompositions into standard ONNX ops (TopK, NonMaxSuppression, Gather, ScatterND, ...)

Both are `custom_translation_table`s for `torch.onnx.export(..., dynamo=True)`, keyed on the torch custom ops.
The portable functions transcribe the references in mrcnn/ops with the same operation order (decode_boxes,
clip_boxes, anchor_grid), so they agree to float rounding.

Shapes: B images; A anchors; N candidates; K output slots; S boxes selected by NonMaxSuppression.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnxscript
import torch
from onnxscript import opset18 as op

from mrcnn.export.contract import DOMAIN, DOMAIN_VERSION, PLUGIN_VERSION, register_schemas

_MRCNN = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)
_FLOAT, _INT64, _BOOL = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL
_FLT_LOWEST = float(np.finfo(np.float32).min)


def _floats(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


# -- trt: custom nodes ----------------------------------------------------------------------------------------------

def _shape_carrier(x):
    """x[:1, :1] ([1,1,H,W]): AnchorGrid reads only the last two dims of its inputs (plugins/README.md), so the node
    gets a one-plane slice instead of the whole feature map / image (no large copies into a plugin or custom op)."""
    return op.Slice(x, _c([0, 0]), _c([1, 1]), _c([0, 1]))


def anchor_grid_trt(feature, image, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int):
    return _MRCNN.AnchorGrid(_shape_carrier(feature), _shape_carrier(image), sizes=_floats(sizes),
                             aspect_ratios=_floats(aspect_ratios), stride=int(stride), plugin_version=PLUGIN_VERSION)


def pre_nms_select_trt(anchors, objectness, deltas, image_sizes, top_k: int, min_size: float,
                       weights: Sequence[float], clip: float):
    return _MRCNN.PreNmsSelect(anchors, objectness, deltas, image_sizes, top_k=int(top_k), min_size=float(min_size),
                               weights=_floats(weights), clip=float(clip), plugin_version=PLUGIN_VERSION,
                               _outputs=3)


def box_nms_trt(boxes, scores, classes, valid, iou_threshold: float, score_threshold: float, max_output: int):
    return _MRCNN.BoxNms(boxes, scores, classes, valid, iou_threshold=float(iou_threshold),
                         score_threshold=float(score_threshold), max_output=int(max_output),
                         plugin_version=PLUGIN_VERSION, _outputs=5)


def box_iou_trt(a, b):
    return _MRCNN.BoxIou(a, b, plugin_version=PLUGIN_VERSION)


# -- portable: standard ONNX ops ------------------------------------------------------------------------------------

def _c(value, dtype=np.int64):
    """A constant tensor."""
    return op.Constant(value=onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype)))


def _dim(shape, i: int):
    """Element i of a shape tensor as a 1-D [1] int64 tensor."""
    return op.Slice(shape, _c([i]), _c([i + 1]))


def _col(x, i: int):
    """x[..., i] (last axis)."""
    return op.Squeeze(op.Slice(x, _c([i]), _c([i + 1]), _c([-1])), _c([-1]))


def anchor_grid_portable(feature, image, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int):
    from mrcnn.ops.anchors import base_anchors

    cell = base_anchors(_floats(sizes), _floats(aspect_ratios)).numpy()  # [A,4] float32, exactly the reference's
    fs = op.Shape(feature, start=-2)  # [H, W]
    H, W = _dim(fs, 0), _dim(fs, 1)
    if stride > 0:
        sh = sw = _c([int(stride)])
    else:
        ims = op.Shape(image, start=-2)
        sh, sw = op.Div(_dim(ims, 0), H), op.Div(_dim(ims, 1), W)  # positive ints: truncation == floor
    zero, one = _c(0), _c(1)
    xs = op.Mul(op.Range(zero, op.Squeeze(W, _c([0])), one), sw)  # [W] int64
    ys = op.Mul(op.Range(zero, op.Squeeze(H, _c([0])), one), sh)  # [H]
    hw = op.Concat(H, W, axis=0)
    sx = op.Reshape(op.Expand(op.Unsqueeze(xs, _c([0])), hw), _c([-1, 1]))  # [H*W,1], row-major (y, x)
    sy = op.Reshape(op.Expand(op.Unsqueeze(ys, _c([1])), hw), _c([-1, 1]))
    shifts = op.Cast(op.Concat(sx, sy, sx, sy, axis=1), to=_FLOAT)  # int64 -> float32, like torch's promotion
    anchors = op.Add(op.Unsqueeze(shifts, _c([1])), _c(cell[None], np.float32))  # [H*W, A, 4]
    return op.Reshape(anchors, _c([-1, 4]))


def _decode(deltas, boxes, weights: Sequence[float], clip: float):
    """mrcnn.ops.decode_boxes, same operation order."""
    wx, wy, ww, wh = (_c(float(w), np.float32) for w in weights)
    half = _c(0.5, np.float32)
    x1, y1, x2, y2 = (_col(boxes, i) for i in range(4))
    widths = op.Sub(x2, x1)
    heights = op.Sub(y2, y1)
    ctr_x = op.Add(x1, op.Mul(half, widths))
    ctr_y = op.Add(y1, op.Mul(half, heights))
    dx = op.Div(_col(deltas, 0), wx)
    dy = op.Div(_col(deltas, 1), wy)
    clip_c = _c(float(clip), np.float32)
    dw = op.Min(op.Div(_col(deltas, 2), ww), clip_c)
    dh = op.Min(op.Div(_col(deltas, 3), wh), clip_c)
    pcx = op.Add(op.Mul(dx, widths), ctr_x)
    pcy = op.Add(op.Mul(dy, heights), ctr_y)
    pw = op.Mul(op.Exp(dw), widths)
    ph = op.Mul(op.Exp(dh), heights)
    cw = op.Mul(half, pw)
    ch = op.Mul(half, ph)
    u = _c([-1])
    return op.Concat(op.Unsqueeze(op.Sub(pcx, cw), u), op.Unsqueeze(op.Sub(pcy, ch), u),
                     op.Unsqueeze(op.Add(pcx, cw), u), op.Unsqueeze(op.Add(pcy, ch), u), axis=-1)


def _clip(boxes, image_sizes):
    """mrcnn.ops.clip_boxes: boxes [B,K,4], image_sizes [B,2] (h, w)."""
    hw = op.Cast(image_sizes, to=_FLOAT)
    h = op.Slice(hw, _c([0]), _c([1]), _c([1]))  # [B,1]
    w = op.Slice(hw, _c([1]), _c([2]), _c([1]))
    zero = _c(0.0, np.float32)
    u = _c([-1])
    x1 = op.Min(op.Max(_col(boxes, 0), zero), w)
    y1 = op.Min(op.Max(_col(boxes, 1), zero), h)
    x2 = op.Min(op.Max(_col(boxes, 2), zero), w)
    y2 = op.Min(op.Max(_col(boxes, 3), zero), h)
    return op.Concat(op.Unsqueeze(x1, u), op.Unsqueeze(y1, u), op.Unsqueeze(x2, u), op.Unsqueeze(y2, u), axis=-1)


def pre_nms_select_portable(anchors, objectness, deltas, image_sizes, top_k: int, min_size: float,
                            weights: Sequence[float], clip: float):
    # 1. top-k anchors by objectness logit, sorted descending; K = min(top_k, A)
    A = _dim(op.Shape(objectness), 1)
    k = op.Min(A, _c([int(top_k)]))
    logits, idx = op.TopK(objectness, k, axis=1, largest=1, sorted=1)  # [B,K]
    # 2. decode the selected deltas on their anchors
    idx4 = op.Expand(op.Unsqueeze(idx, _c([-1])), op.Concat(op.Shape(idx), _c([4]), axis=0))
    sel_deltas = op.GatherElements(deltas, idx4, axis=1)  # [B,K,4]
    sel_anchors = op.Gather(anchors, idx, axis=0)  # [B,K,4]
    boxes = _clip(_decode(sel_deltas, sel_anchors, weights, clip), image_sizes)
    # 3. small boxes invalid (box_sizes_at_least)
    ms = _c(float(min_size), np.float32)
    ws = op.Sub(_col(boxes, 2), _col(boxes, 0))
    hs = op.Sub(_col(boxes, 3), _col(boxes, 1))
    valid = op.And(op.GreaterOrEqual(ws, ms), op.GreaterOrEqual(hs, ms))
    return boxes, op.Sigmoid(logits), valid


def box_nms_portable(boxes, scores, classes, valid, iou_threshold: float, score_threshold: float, max_output: int):
    K = int(max_output)
    # 1. candidates (valid and score > threshold); the others get score -inf and fall under NMS's score threshold
    cand = valid
    if score_threshold != float("-inf"):
        cand = op.And(cand, op.Greater(scores, _c(float(score_threshold), np.float32)))
    masked = op.Where(cand, scores, _c(float("-inf"), np.float32))
    # 2. class-aware in one NonMaxSuppression class: shift each class into its own range (torchvision's
    #    batched_nms coordinate trick, per image): x - min + class * (max - min + 1)
    #    (per-image min / max via ArgMin / ArgMax: ReduceMin-18's axes input does not convert down to opset 16/17)
    flat = op.Reshape(boxes, _c([0, -1]))  # [B,N*4]
    lo = op.Unsqueeze(op.GatherElements(flat, op.ArgMin(flat, axis=1, keepdims=1), axis=1), _c([2]))  # [B,1,1]
    hi = op.Unsqueeze(op.GatherElements(flat, op.ArgMax(flat, axis=1, keepdims=1), axis=1), _c([2]))
    span = op.Add(op.Sub(hi, lo), _c(1.0, np.float32))
    offset = op.Mul(op.Unsqueeze(op.Cast(classes, to=_FLOAT), _c([-1])), span)  # [B,N,1]
    shifted = op.Add(op.Sub(boxes, lo), offset)
    sel = op.NonMaxSuppression(shifted, op.Unsqueeze(masked, _c([1])), _c([K]), _c([float(iou_threshold)], np.float32),
                               _c([_FLT_LOWEST], np.float32))  # [S,3] (batch, 0, box), batch-major, by score
    # 3. rank of each selected box within its image -> slot b*K + rank in the [B*K] outputs
    b = op.Squeeze(op.Slice(sel, _c([0]), _c([1]), _c([1])), _c([1]))  # [S]
    n = op.Squeeze(op.Slice(sel, _c([2]), _c([3]), _c([1])), _c([1]))
    Bt = _dim(op.Shape(boxes), 0)
    one_hot = op.Cast(op.Equal(op.Unsqueeze(b, _c([1])), op.Unsqueeze(op.Range(_c(0), op.Squeeze(Bt, _c([0])), _c(1)),
                                                                      _c([0]))), to=_INT64)  # [S,B]
    counts = op.ReduceSum(one_hot, _c([0]), keepdims=0)  # [B]
    starts = op.CumSum(counts, _c(0), exclusive=1)
    S = op.Shape(b)
    rank = op.Sub(op.Range(_c(0), op.Squeeze(S, _c([0])), _c(1)), op.Gather(starts, b, axis=0))
    slot = op.Unsqueeze(op.Add(op.Mul(b, _c(K)), rank), _c([-1]))  # [S,1]
    bn = op.Concat(op.Unsqueeze(b, _c([-1])), op.Unsqueeze(n, _c([-1])), axis=1)  # [S,2]
    BK = op.Mul(Bt, _c([K]))
    # 4. scatter the selected rows into zero-filled slots (indices -1)
    out_boxes = op.ScatterND(op.Expand(_c(0.0, np.float32), op.Concat(BK, _c([4]), axis=0)), slot,
                             op.GatherND(boxes, bn))
    out_scores = op.ScatterND(op.Expand(_c(0.0, np.float32), BK), slot, op.GatherND(scores, bn))
    out_classes = op.ScatterND(op.Expand(_c(0), BK), slot, op.GatherND(classes, bn))
    out_indices = op.ScatterND(op.Expand(_c(-1), BK), slot, n)
    shape_bk = op.Concat(Bt, _c([K]), axis=0)
    return (op.Reshape(out_boxes, op.Concat(shape_bk, _c([4]), axis=0)), op.Reshape(out_scores, shape_bk),
            op.Reshape(out_classes, shape_bk), op.Reshape(out_indices, shape_bk), counts)


def box_iou_portable(a, b):
    """mrcnn.ops.box_iou on [B,N,4] x [B,M,4] -> [B,N,M] float32 (float16 upcast first, like the reference)."""
    a, b = op.Cast(a, to=_FLOAT), op.Cast(b, to=_FLOAT)
    area_a = op.Mul(op.Sub(_col(a, 2), _col(a, 0)), op.Sub(_col(a, 3), _col(a, 1)))  # [B,N]
    area_b = op.Mul(op.Sub(_col(b, 2), _col(b, 0)), op.Sub(_col(b, 3), _col(b, 1)))  # [B,M]
    a4, b4 = op.Unsqueeze(a, _c([2])), op.Unsqueeze(b, _c([1]))  # [B,N,1,4], [B,1,M,4]
    lo, hi = _c([0]), _c([2])
    lt = op.Max(op.Slice(a4, lo, hi, _c([-1])), op.Slice(b4, lo, hi, _c([-1])))
    rb = op.Min(op.Slice(a4, hi, _c([4]), _c([-1])), op.Slice(b4, hi, _c([4]), _c([-1])))
    wh = op.Max(op.Sub(rb, lt), _c(0.0, np.float32))
    inter = op.Mul(_col(wh, 0), _col(wh, 1))  # [B,N,M]
    union = op.Sub(op.Add(op.Unsqueeze(area_a, _c([2])), op.Unsqueeze(area_b, _c([1]))), inter)
    zero = _c(0.0, np.float32)
    return op.Where(op.Greater(union, zero), op.Div(inter, union), zero)


# -- tables ---------------------------------------------------------------------------------------------------------

def translation_table(target: str) -> dict:
    """custom_translation_table for torch.onnx.export: torch.ops.mrcnn.* -> trt nodes or portable decompositions."""
    import mrcnn.kernels  # noqa: F401 - registers torch.ops.mrcnn.*

    register_schemas()
    ops = torch.ops.mrcnn
    if target == "trt":
        fns = (anchor_grid_trt, pre_nms_select_trt, box_nms_trt, box_iou_trt)
    elif target == "portable":
        fns = (anchor_grid_portable, pre_nms_select_portable, box_nms_portable, box_iou_portable)
    else:
        raise ValueError(target)
    return {ops.anchor_grid.default: fns[0], ops.pre_nms_select.default: fns[1], ops.box_nms.default: fns[2],
            ops.box_iou.default: fns[3]}


__all__ = ["translation_table"]
