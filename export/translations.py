"""Two ONNX translations of the torch.ops.mrcnn.* nodes of one traced graph (docs/design.md §4).

    trt       one `mrcnn` node per op (export/contract.py): TensorRT maps it to the plugin, ONNX Runtime to the
              Python custom op on the C++ kernels (mrcnn/deploy/ort_ops.py)
    portable  onnxscript decompositions into standard ONNX ops (TopK, NonMaxSuppression, Gather, ScatterND, ...)

Both are `custom_translation_table`s for `torch.onnx.export(..., dynamo=True)`, keyed on the torch custom ops.
The portable functions transcribe the references in mrcnn/ops with the same operation order (decode_boxes,
clip_boxes, anchor_grid), so they agree to float rounding.

Shapes: B images; A anchors; N candidates; K output slots; S boxes selected by NonMaxSuppression.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    return _MRCNN.AnchorGrid(
        _shape_carrier(feature),
        _shape_carrier(image),
        sizes=_floats(sizes),
        aspect_ratios=_floats(aspect_ratios),
        stride=int(stride),
        plugin_version=PLUGIN_VERSION,
    )


def pre_nms_select_trt(
    anchors, objectness, deltas, image_sizes, top_k: int, min_size: float, weights: Sequence[float], clip: float
):
    return _MRCNN.PreNmsSelect(
        anchors,
        objectness,
        deltas,
        image_sizes,
        top_k=int(top_k),
        min_size=float(min_size),
        weights=_floats(weights),
        clip=float(clip),
        plugin_version=PLUGIN_VERSION,
        _outputs=3,
    )


def box_nms_trt(boxes, scores, classes, valid, iou_threshold: float, score_threshold: float, max_output: int):
    return _MRCNN.BoxNms(
        boxes,
        scores,
        classes,
        valid,
        iou_threshold=float(iou_threshold),
        score_threshold=float(score_threshold),
        max_output=int(max_output),
        plugin_version=PLUGIN_VERSION,
        _outputs=5,
    )


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
    return op.Concat(
        op.Unsqueeze(op.Sub(pcx, cw), u),
        op.Unsqueeze(op.Sub(pcy, ch), u),
        op.Unsqueeze(op.Add(pcx, cw), u),
        op.Unsqueeze(op.Add(pcy, ch), u),
        axis=-1,
    )


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


def pre_nms_select_portable(
    anchors, objectness, deltas, image_sizes, top_k: int, min_size: float, weights: Sequence[float], clip: float
):
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


def _max_int(x):
    """The largest element of a non-empty 1-D int64 tensor, as [1] (TopK on its float32 copy, exact below 2^24:
    counts and class ids; ReduceMax-18 does not convert down to opset 16 / 17)."""
    top, _ = op.TopK(op.Cast(x, to=_FLOAT), _c([1]), axis=0, largest=1, sorted=1)
    return op.Cast(top, to=_INT64)


def box_nms_portable(boxes, scores, classes, valid, iou_threshold: float, score_threshold: float, max_output: int):
    """BoxNms as NonMaxSuppression with one score row per class ([B,C,T]): each class decided on its boxes' own
    coordinates, as the reference and the kernels do (not torchvision's class-offset shortcut, whose float32
    rounding flips an IoU within ~1e-4 of the threshold). T is the most candidates any image has: the candidates
    come first in score order (_ranked), so the [B,C,T] rows stay as small as the scores allow."""
    cand = _nms_candidates(scores, valid, score_threshold)
    # 1. each image's candidates in rank order (score descending, ties: lower index first)
    T = _max_int(op.ReduceSum(op.Cast(cand, to=_INT64), _c([1]), keepdims=0))  # [1]
    idx, ok, top_boxes, top_scores, top_classes = _ranked(boxes, scores, classes, cand, T)
    # 2. candidate t's score in its class's row, -inf in the others (below NonMaxSuppression's score threshold)
    C = op.Add(_max_int(op.Concat(op.Reshape(classes, _c([-1])), _c([0]), axis=0)), _c([1]))  # [1]
    rows = op.Unsqueeze(op.Range(_c(0), op.Squeeze(C, _c([0])), _c(1)), _c([0, 2]))  # [1,C,1]
    mine = op.And(op.Equal(op.Unsqueeze(top_classes, _c([1])), rows), op.Unsqueeze(ok, _c([1])))  # [B,C,T]
    per_class = op.Where(mine, op.Unsqueeze(top_scores, _c([1])), _c(float("-inf"), np.float32))
    sel = op.NonMaxSuppression(
        top_boxes,
        per_class,
        _c([int(max_output)]),
        _c([float(iou_threshold)], np.float32),
        _c([_FLT_LOWEST], np.float32),
    )  # [S,3] (image, class, rank)
    # 3. the kept mask [B,T] from the selected (image, rank) pairs
    at = op.Gather(sel, _c([0, 2]), axis=1)  # [S,2]
    marks = op.ScatterND(
        op.Expand(_c(0.0, np.float32), op.Shape(ok)), at, op.Expand(_c(1.0, np.float32), op.Shape(sel, end=1))
    )
    keep = op.Greater(marks, _c(0.5, np.float32))
    return _pack_kept(keep, idx, top_boxes, top_scores, top_classes, T, int(max_output))


def box_iou_portable(a, b):
    """mrcnn.ops.box_iou on [B,N,4] x [B,M,4] -> [B,N,M] float32 (float16 upcast first, like the reference), with
    its operation order; every [B,N,M] intermediate is made once from per-box columns (no [B,N,M,2] slices)."""
    a, b = op.Cast(a, to=_FLOAT), op.Cast(b, to=_FLOAT)
    ra, cb = _c([2]), _c([1])  # a's boxes along rows, b's along columns
    ax1, ay1, ax2, ay2 = (op.Unsqueeze(_col(a, i), ra) for i in range(4))  # [B,N,1]
    bx1, by1, bx2, by2 = (op.Unsqueeze(_col(b, i), cb) for i in range(4))  # [B,1,M]
    area_a = op.Mul(op.Sub(ax2, ax1), op.Sub(ay2, ay1))
    area_b = op.Mul(op.Sub(bx2, bx1), op.Sub(by2, by1))
    zero = _c(0.0, np.float32)
    w = op.Max(op.Sub(op.Min(ax2, bx2), op.Max(ax1, bx1)), zero)
    h = op.Max(op.Sub(op.Min(ay2, by2), op.Max(ay1, by1)), zero)
    inter = op.Mul(w, h)  # [B,N,M]
    union = op.Sub(op.Add(area_a, area_b), inter)
    return op.Where(op.Greater(union, zero), op.Div(inter, union), zero)


# -- rtx: standard ONNX ops that TensorRT-RTX builds (no RoiAlign, NonZero, NonMaxSuppression; TopK k <= 3840) --

RTX_MAX_TOPK = 3840  # TensorRT's largest TopK k ("K exceeds the maximum value allowed (3840)")


def _axis_samples(start, bin_size, size, pooled: int, sub: int, sr: int):
    """One axis of torchvision's RoIAlign sampling (roi_align_kernel.cpp pre_calc), for sub-sample `sub` of each of
    the `pooled` bins of every RoI: (low index, high index, low weight, high weight), each [R, pooled]; the weights
    are 0 where the sample lies outside [-1, size] (torchvision's empty sample). start, bin_size [R,1] float32;
    size [R,1] int64 (the level's height or width)."""
    p = _c(np.arange(pooled, dtype=np.float32)[None], np.float32)  # [1,P]
    frac = _c(float(sub + 0.5), np.float32)
    # y = roi_start + ph * bin + (iy + .5) * bin / grid, in torchvision's operation order
    y = op.Add(op.Add(start, op.Mul(p, bin_size)), op.Div(op.Mul(frac, bin_size), _c(float(sr), np.float32)))
    size_f = op.Cast(size, to=_FLOAT)
    zero, one = _c(0.0, np.float32), _c(1.0, np.float32)
    inside = op.And(op.GreaterOrEqual(y, _c(-1.0, np.float32)), op.LessOrEqual(y, size_f))
    y = op.Max(y, zero)
    low = op.Floor(y)
    last = op.Sub(size_f, one)
    edge = op.GreaterOrEqual(low, last)
    low = op.Where(edge, last, low)
    high = op.Where(edge, last, op.Add(low, one))
    y = op.Where(edge, last, y)
    l_w = op.Sub(y, low)
    h_w = op.Sub(one, l_w)
    return (op.Cast(low, to=_INT64), op.Cast(high, to=_INT64), op.Where(inside, h_w, zero), op.Where(inside, l_w, zero))


def roi_align_rtx(
    inputs,
    rois,
    levels,
    spatial_scales: Sequence[float],
    pooled_h: int,
    pooled_w: int,
    sampling_ratio: int,
    aligned: bool,
    cuda_nhwc: bool = False,
):
    """torch.ops.mrcnn.roi_align (RoIAlign over the pyramid, RoI n from level levels[n]; torchvision's semantics)
    as gathers: every level's pixels in one channels-last table [sum_l B*H_l*W_l, C], and per (sub-sample,
    corner) one Gather of [R, PH, PW] rows, weighted and summed like torchvision's CPU kernel. No RoiAlign node, no
    per-level split of the RoIs (NonZero): the RoIs stay in one fixed-size batch."""
    PH, PW, sr = int(pooled_h), int(pooled_w), int(sampling_ratio)
    if sr <= 0:
        raise ValueError("the rtx RoIAlign needs a fixed sampling_ratio > 0 (the sample grid is static)")
    feats = list(inputs)
    shapes = [op.Shape(f) for f in feats]
    C = _dim(shapes[0], 1)
    # 1. the table; level l's rows start at offsets[l], pixel (b, y, x) at row offsets[l] + (b * H_l + y) * W_l + x
    table = op.Concat(
        *[op.Reshape(op.Transpose(f, perm=[0, 2, 3, 1]), op.Concat(_c([-1]), C, axis=0)) for f in feats], axis=0
    )
    heights = op.Concat(*[_dim(s, 2) for s in shapes], axis=0)  # [L]
    widths = op.Concat(*[_dim(s, 3) for s in shapes], axis=0)
    rows = op.Concat(*[op.Mul(op.Mul(_dim(s, 0), _dim(s, 2)), _dim(s, 3)) for s in shapes], axis=0)
    offsets = op.CumSum(rows, _c(0), exclusive=1)
    # 2. per RoI: its level's size, offset and scale; the RoI in that level's coordinates
    R = _dim(op.Shape(rois), 0)
    lv = levels if levels is not None else op.Expand(_c([0]), R)
    u = _c([1])
    H = op.Unsqueeze(op.Gather(heights, lv), u)  # [R,1]
    W = op.Unsqueeze(op.Gather(widths, lv), u)
    base = op.Unsqueeze(op.Gather(offsets, lv), u)
    scale = op.Unsqueeze(op.Gather(_c(_floats(spatial_scales), np.float32), lv), u)
    b = op.Cast(op.Slice(rois, _c([0]), _c([1]), _c([1])), to=_INT64)  # [R,1]
    shift = _c(0.5 if aligned else 0.0, np.float32)
    x1, y1, x2, y2 = (op.Sub(op.Mul(op.Slice(rois, _c([i]), _c([i + 1]), _c([1])), scale), shift) for i in range(1, 5))
    roi_w, roi_h = op.Sub(x2, x1), op.Sub(y2, y1)
    if not aligned:
        roi_w, roi_h = op.Max(roi_w, _c(1.0, np.float32)), op.Max(roi_h, _c(1.0, np.float32))
    bin_w = op.Div(roi_w, _c(float(PW), np.float32))
    bin_h = op.Div(roi_h, _c(float(PH), np.float32))
    row0 = op.Mul(op.Mul(b, H), W)  # the image's first row in the level
    # 3. sum over the sr x sr sub-samples of the 4 bilinear corners, then the mean (torchvision's order)
    first = op.Add(base, row0)  # [R,1]
    xs = [_axis_samples(x1, bin_w, W, PW, ix, sr) for ix in range(sr)]  # the x taps, shared by every y sub-sample
    acc = None
    for iy in range(sr):
        y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, bin_h, H, PH, iy, sr)
        for x_lo, x_hi, wx_lo, wx_hi in xs:
            val = None
            for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
                yrow = op.Unsqueeze(op.Add(first, op.Mul(yi, W)), _c([2]))  # [R,PH,1]
                for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
                    index = op.Add(yrow, op.Unsqueeze(xi, u))  # [R,PH,PW]
                    w = op.Unsqueeze(op.Mul(op.Unsqueeze(wy, _c([2])), op.Unsqueeze(wx, u)), _c([3]))  # [R,PH,PW,1]
                    term = op.Mul(w, op.Gather(table, index, axis=0))  # [R,PH,PW,C]
                    val = term if val is None else op.Add(val, term)
            acc = val if acc is None else op.Add(acc, val)
    out = op.Div(acc, _c(float(sr * sr), np.float32))
    return op.Transpose(out, perm=[0, 3, 1, 2])  # [R,C,PH,PW]


@onnxscript.script()
def _greedy_keep(ok: onnxscript.BOOL[...], suppresses: onnxscript.FLOAT[...]) -> onnxscript.BOOL[...]:
    """Greedy NMS's keep mask from the suppression matrix (suppresses[b,i,j] = 1: candidate i, ranked before j,
    removes j if kept): the fixed point of keep = ok and not any_i(keep[i] and suppresses[i,j]), iterated from
    keep = ok until it stops changing. Candidate j's value is final once every candidate ranked before it is, so
    the loop ends after at most (longest suppression chain + 1) rounds, with exactly the greedy result."""
    keep = ok
    go = op.Constant(value=onnx.helper.make_tensor("go", onnx.TensorProto.BOOL, [], [True]))
    while go:
        hits = op.Squeeze(op.MatMul(op.Unsqueeze(op.Cast(keep, to=1), [1]), suppresses), [1])
        new = op.And(ok, op.Not(op.Greater(hits, op.Constant(value_float=0.0))))
        go = op.Greater(op.ReduceMax(op.Cast(op.Xor(new, keep), to=1), keepdims=0), op.Constant(value_float=0.0))
        keep = new
    return keep


def _nms_candidates(scores, valid, score_threshold: float):
    """mrcnn.ops.nms.nms_candidates: valid, with a score above the threshold (strict; -inf: every valid one)."""
    if score_threshold == float("-inf"):
        return valid
    return op.And(valid, op.Greater(scores, _c(float(score_threshold), np.float32)))


def _ranked(boxes, scores, classes, cand, T):
    """The T highest-scored candidates of each image in rank order (score descending, ties: lower index first,
    as TopK orders them): their indices [B,T], candidate flags (false where an image has fewer than T), boxes,
    scores and classes."""
    masked = op.Where(cand, scores, _c(float("-inf"), np.float32))
    _, idx = op.TopK(masked, T, axis=1, largest=1, sorted=1)  # [B,T]
    ok = op.Greater(op.GatherElements(op.Cast(cand, to=_FLOAT), idx, axis=1), _c(0.5, np.float32))
    idx4 = op.Expand(op.Unsqueeze(idx, _c([-1])), op.Concat(op.Shape(idx), _c([4]), axis=0))
    top_boxes = op.GatherElements(boxes, idx4, axis=1)  # [B,T,4]
    top_scores = op.GatherElements(scores, idx, axis=1)
    top_classes = op.GatherElements(classes, idx, axis=1)
    return idx, ok, top_boxes, top_scores, top_classes


def _pack_kept(keep, idx, top_boxes, top_scores, top_classes, T, K: int):
    """BoxNms's K output slots from the kept mask [B,T] over the ranked candidates (mrcnn.ops.nms.pack_kept): the
    first K kept in rank order (TopK of -rank over the kept), then padding (boxes 0, scores 0, classes 0,
    indices -1), and each image's count."""
    rank = op.Range(_c(0), op.Squeeze(T, _c([0])), _c(1))  # [T]
    key = op.Where(keep, op.Neg(op.Cast(rank, to=_FLOAT)), _c(float("-inf"), np.float32))
    k = op.Min(T, _c([K]))
    _, pos = op.TopK(key, k, axis=1, largest=1, sorted=1)  # [B,k]
    num = op.Min(op.ReduceSum(op.Cast(keep, to=_INT64), _c([1]), keepdims=0), _c([K]))  # [B]
    slot = op.Range(_c(0), op.Squeeze(k, _c([0])), _c(1))
    filled = op.Less(op.Unsqueeze(slot, _c([0])), op.Unsqueeze(num, _c([1])))  # [B,k]
    pos4 = op.Expand(op.Unsqueeze(pos, _c([-1])), op.Concat(op.Shape(pos), _c([4]), axis=0))
    out_boxes = op.Where(
        op.Unsqueeze(filled, _c([-1])), op.GatherElements(top_boxes, pos4, axis=1), _c(0.0, np.float32)
    )
    out_scores = op.Where(filled, op.GatherElements(top_scores, pos, axis=1), _c(0.0, np.float32))
    out_classes = op.Where(filled, op.GatherElements(top_classes, pos, axis=1), _c(0))
    out_indices = op.Where(filled, op.GatherElements(idx, pos, axis=1), _c(-1))
    # fewer than K ranked candidates (T < K): pad the slots
    B = _dim(op.Shape(keep), 0)
    pad = op.Concat(B, op.Sub(_c([K]), k), axis=0)
    out_boxes = op.Concat(out_boxes, op.Expand(_c(0.0, np.float32), op.Concat(pad, _c([4]), axis=0)), axis=1)
    out_scores = op.Concat(out_scores, op.Expand(_c(0.0, np.float32), pad), axis=1)
    out_classes = op.Concat(out_classes, op.Expand(_c(0), pad), axis=1)
    out_indices = op.Concat(out_indices, op.Expand(_c(-1), pad), axis=1)
    return out_boxes, out_scores, out_classes, out_indices, num


def box_nms_rtx(boxes, scores, classes, valid, iou_threshold: float, score_threshold: float, max_output: int):
    """BoxNms without NonMaxSuppression: the T = min(N, 3840) highest-scored candidates (TensorRT's TopK limit),
    their pairwise suppression matrix (earlier rank, same class, IoU > threshold) and the greedy keep mask as a
    fixed point (_greedy_keep, an ONNX Loop). Equal to BoxNms whenever the candidates fit in T, or when at least
    max_output of the first T are kept: greedy NMS decides each box from the higher-scored ones only."""
    cand = _nms_candidates(scores, valid, score_threshold)
    # 1. the top T candidates by score; the others get -inf and rank last
    T = op.Min(_dim(op.Shape(scores), 1), _c([RTX_MAX_TOPK]))
    idx, ok, top_boxes, top_scores, top_classes = _ranked(boxes, scores, classes, cand, T)
    # 2. suppression matrix [B,T,T]: i ranked before j, same class, IoU > threshold
    rank = op.Range(_c(0), op.Squeeze(T, _c([0])), _c(1))  # [T]
    before = op.Less(op.Unsqueeze(rank, _c([1])), op.Unsqueeze(rank, _c([0])))
    same = op.Equal(op.Unsqueeze(top_classes, _c([2])), op.Unsqueeze(top_classes, _c([1])))
    over = op.Greater(box_iou_portable(top_boxes, top_boxes), _c(float(iou_threshold), np.float32))
    suppresses = op.Cast(op.And(op.And(over, same), before), to=_FLOAT)
    keep = _greedy_keep(ok, suppresses)  # [B,T]
    # 3. the first K kept, in rank order
    return _pack_kept(keep, idx, top_boxes, top_scores, top_classes, T, int(max_output))


# -- tables ---------------------------------------------------------------------------------------------------------


def translation_table(flavour: str) -> dict:
    """custom_translation_table for torch.onnx.export: torch.ops.mrcnn.* -> trt nodes or portable decompositions."""
    import mrcnn.native  # noqa: F401 - registers torch.ops.mrcnn.*

    register_schemas()
    ops = torch.ops.mrcnn
    if flavour == "trt":
        fns = (anchor_grid_trt, pre_nms_select_trt, box_nms_trt, box_iou_trt)
    elif flavour in ("portable", "rtx"):
        fns = (
            anchor_grid_portable,
            pre_nms_select_portable,
            box_nms_portable if flavour == "portable" else box_nms_rtx,
            box_iou_portable,
        )
    else:
        raise ValueError(flavour)
    table = {
        ops.anchor_grid.default: fns[0],
        ops.pre_nms_select.default: fns[1],
        ops.box_nms.default: fns[2],
        ops.box_iou.default: fns[3],
    }
    if flavour == "rtx":  # the model's RoIAlign is the one pyramid op there (multiscale_roi_align, export/exporter.py)
        table[ops.roi_align.default] = roi_align_rtx
    return table


__all__ = ["translation_table"]
