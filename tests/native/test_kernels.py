"""Native kernels (plugins/kernels, mrcnn/native) against the pure-torch references and naive float64 loops.

Tolerances (docs/design.md §6): anchors exact; float32 kernel vs float64 reference 1e-5 (IoU and scores relative to
max(1, |ref|), box coordinates relative to max(1, the largest |coordinate|));
float16 4e-3; NMS / top-k compared as index sets, with ties resolved to the lower index (tests build ties on
purpose). Every failure message prints the measured error.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import references as R
import torch
import torchvision
from helpers import contract_rows

from mrcnn import native as K
from mrcnn.errors import MrcnnError
from mrcnn.ops import Ops

pytestmark = pytest.mark.skipif(not K.available(), reason=f"native kernels not available: {K.build_info()}")

needs_gpu = pytest.mark.skipif(
    not K.cuda_available(), reason="no CUDA GPU visible to torch (or library built without CUDA)"
)

FP32_TOL = 1e-5
FP16_TOL = 4e-3


# ---- helpers ------------------------------------------------------------------------------------------------------


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max(1, |ref|), in float64 (0 for empty tensors)."""
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if got.numel() == 0:
        return 0.0
    g, r = got.double(), ref.double()
    both_nan = torch.isnan(g) & torch.isnan(r)
    d = ((g - r).abs() / r.abs().clamp(min=1.0)).masked_fill(both_nan, 0.0)
    return float(d.max())


def scaled_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max(1, max |ref|): box coordinates, whose float32 error scales with the largest coordinate
    (x2 - half-width cancels digits of a 5000-px centre)."""
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if got.numel() == 0:
        return 0.0
    g, r = got.detach().double(), ref.detach().double()
    return float((g - r).abs().max() / max(1.0, float(r.abs().max())))


def rand_boxes(g: torch.Generator, *lead: int, scale: float = 100.0, min_wh: float = 0.0) -> torch.Tensor:
    xy = torch.rand(*lead, 2, generator=g) * scale
    wh = min_wh + torch.rand(*lead, 2, generator=g) * scale * 0.5
    return torch.cat([xy, xy + wh], -1)


def edge_boxes(g: torch.Generator, n: int) -> torch.Tensor:
    """Normal, zero-width, zero-height, inverted, point, huge and duplicated boxes mixed."""
    b = rand_boxes(g, n)
    kinds = torch.arange(n) % 7
    b[kinds == 1, 2] = b[kinds == 1, 0]  # zero width
    b[kinds == 2, 3] = b[kinds == 2, 1]  # zero height
    b[kinds == 3] = b[kinds == 3][:, [2, 3, 0, 1]]  # inverted
    b[kinds == 4, 2:] = b[kinds == 4, :2]  # point
    b[kinds == 5] = b[kinds == 5] * 1e4  # huge
    if n > 7:
        b[6::7] = b[0]  # duplicates of box 0
    return b


# ---- AnchorGrid ---------------------------------------------------------------------------------------------------
def naive_anchors(H, W, Hi, Wi, sizes, ratios, stride):
    """float32 scalar loop (numpy), torchvision's recipe."""
    f32 = np.float32
    sh, sw = (stride, stride) if stride > 0 else (Hi // H, Wi // W)
    base = []
    for r in ratios:
        for s in sizes:
            hr = np.sqrt(f32(r))
            wr = f32(1) / hr
            ws, hs = wr * f32(s), hr * f32(s)
            base.append([np.rint(-ws / f32(2)), np.rint(-hs / f32(2)), np.rint(ws / f32(2)), np.rint(hs / f32(2))])
    out = []
    for y in range(H):
        for x in range(W):
            for bx in base:
                out.append([f32(x * sw) + bx[0], f32(y * sh) + bx[1], f32(x * sw) + bx[2], f32(y * sh) + bx[3]])
    return torch.tensor(np.array(out, dtype=np.float32).reshape(-1, 4))


ANCHOR_CASES = [
    # (feature [B,C,H,W], image [B,3,Hi,Wi], sizes, ratios, stride)
    ((1, 8, 13, 17), (1, 3, 800, 1088), (32.0,), (0.5, 1.0, 2.0), 0),
    ((2, 4, 25, 38), (2, 3, 800, 1216), (64.0,), (0.5, 1.0, 2.0), 0),  # batch > 1, non-square
    ((1, 1, 13, 13), (1, 3, 800, 800), (512.0,), (0.5, 1.0, 2.0), 0),  # P6 rule: stride 800 // 13 = 61
    ((1, 1, 13, 13), (1, 3, 800, 800), (512.0,), (0.5, 1.0, 2.0), 64),  # forced stride
    ((1, 2, 7, 5), (1, 3, 224, 160), (32.0, 45.25, 64.0), (0.25, 0.3, 1.0, 1.7, 4.0), 16),  # odd sizes / ratios
    ((1, 2, 1, 1), (1, 3, 32, 32), (8.0,), (1.0,), 0),  # one location
    ((1, 2, 0, 5), (1, 3, 0, 160), (32.0,), (1.0,), 4),  # empty map
    ((3, 5, 9), (3, 31, 47), (16.0, 24.0), (0.5, 2.0), 0),  # rank 3, odd image
]


@pytest.mark.parametrize("fshape,ishape,sizes,ratios,stride", ANCHOR_CASES)
def test_anchor_grid_exact(fshape, ishape, sizes, ratios, stride):
    feature, image = torch.zeros(fshape), torch.zeros(ishape)
    got = K.anchor_grid(feature, image, sizes, ratios, stride)
    H, W, Hi, Wi = fshape[-2], fshape[-1], ishape[-2], ishape[-1]
    assert got.dtype == torch.float32 and got.shape == (H * W * len(sizes) * len(ratios), 4)
    if H * W:
        ref = R.anchor_grid(feature, image, sizes, ratios, stride)
        naive = naive_anchors(H, W, Hi, Wi, sizes, ratios, stride)
        assert torch.equal(got, ref), f"max |kernel - reference| = {(got - ref).abs().max()}"
        assert torch.equal(got, naive), f"max |kernel - naive loop| = {(got - naive).abs().max()}"


def test_anchor_grid_non_contiguous_feature_and_big_level():
    feature = torch.zeros(1, 256, 336, 200).transpose(-1, -2)  # [1,256,200,336], non-contiguous
    image = torch.zeros(1, 3, 800, 1344)
    got = K.anchor_grid(feature, image, (32.0,), (0.5, 1.0, 2.0))
    ref = R.anchor_grid(feature, image, (32.0,), (0.5, 1.0, 2.0))
    assert torch.equal(got, ref), f"max |kernel - reference| = {(got - ref).abs().max()}"


# ---- BoxIou -------------------------------------------------------------------------------------------------------
def naive_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 scalar loop over [N,4] x [M,4]."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for i, p in enumerate(a.double().tolist()):
        for j, q in enumerate(b.double().tolist()):
            w = max(min(p[2], q[2]) - max(p[0], q[0]), 0.0)
            h = max(min(p[3], q[3]) - max(p[1], q[1]), 0.0)
            inter = w * h
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


@pytest.mark.parametrize(
    "batch,n,m", [(1, 0, 0), (1, 0, 5), (2, 5, 0), (1, 1, 1), (1, 1, 7), (3, 37, 53), (2, 200, 300)]
)
def test_box_iou_fp32(batch, n, m):
    g = torch.Generator().manual_seed(batch * 1000 + n * 10 + m)
    a, b = rand_boxes(g, batch, n), rand_boxes(g, batch, m)
    got = K.box_iou(a, b)
    assert got.shape == (batch, n, m) and got.dtype == torch.float32
    e64 = rel_err(got, R.box_iou(a.double(), b.double()))
    e32 = rel_err(got, R.box_iou(a, b))
    assert e64 <= FP32_TOL, f"kernel vs float64 reference: {e64:.3g} > {FP32_TOL}"
    assert e32 <= 1e-6, f"kernel vs float32 torch reference: {e32:.3g}"
    if n * m and n * m <= 2000:
        e = rel_err(got[0], naive_iou(a[0], b[0]))
        assert e <= FP32_TOL, f"kernel vs naive float64 loop: {e:.3g} > {FP32_TOL}"


def test_box_iou_degenerate_huge_duplicate_boxes():
    g = torch.Generator().manual_seed(7)
    a, b = edge_boxes(g, 40), edge_boxes(g, 33)
    got = K.box_iou(a, b)
    e = rel_err(got, naive_iou(a, b))
    assert e <= FP32_TOL, f"kernel vs naive float64 loop on degenerate boxes: {e:.3g}"
    assert torch.isfinite(got).all(), "non-finite IoU"
    assert float(K.box_iou(a, a)[6, 0]) == 1.0, "a duplicate of a positive-area box must have IoU 1"


def test_box_iou_2d_broadcast_and_non_contiguous():
    g = torch.Generator().manual_seed(3)
    big_a, big_b = rand_boxes(g, 3, 80), rand_boxes(g, 1, 120)
    a = big_a[:, ::2]  # non-contiguous rows
    b = big_b.transpose(0, 1).transpose(0, 1)[:, 1::3]
    got = K.box_iou(a, b)  # [3,40,4] x [1,40,4] broadcast
    assert got.shape == (3, 40, 40)
    e = rel_err(got, R.box_iou(a.double(), b.double()))
    assert e <= FP32_TOL, f"broadcast/non-contiguous: {e:.3g}"
    a2, b2 = rand_boxes(g, 17), rand_boxes(g, 9)  # plain [N,4] x [M,4] as the matcher calls it
    e2 = rel_err(K.box_iou(a2, b2), R.box_iou(a2.double(), b2.double()))
    assert K.box_iou(a2, b2).shape == (17, 9) and e2 <= FP32_TOL, f"2-D inputs: {e2:.3g}"


@pytest.mark.parametrize("batch,n,m", [(1, 0, 4), (1, 1, 1), (2, 64, 97)])
def test_box_iou_fp16(batch, n, m):
    g = torch.Generator().manual_seed(n + m)
    a, b = rand_boxes(g, batch, n).half(), rand_boxes(g, batch, m).half()
    got = K.box_iou(a, b)
    assert got.dtype == torch.float32, "like the reference, fp16 boxes give float32 IoU"
    e = rel_err(got, R.box_iou(a.double(), b.double()))
    assert e <= FP16_TOL, f"fp16 kernel vs float64 reference: {e:.3g} > {FP16_TOL}"
    e_ref = rel_err(got, R.box_iou(a, b))
    assert e_ref <= FP16_TOL, f"fp16 kernel vs fp16 torch reference: {e_ref:.3g}"


# ---- PreNmsSelect -------------------------------------------------------------------------------------------------
def rpn_inputs(g, B, A_side=(10, 13), ratios=(0.5, 1.0, 2.0), delta_scale=0.5):
    H, W = A_side
    anchors = R.anchor_grid(torch.zeros(1, 1, H, W), torch.zeros(1, 3, H * 16, W * 16), (32.0,), ratios)
    A = anchors.shape[0]
    objectness = torch.randn(B, A, generator=g) * 3
    deltas = torch.randn(B, A, 4, generator=g) * delta_scale
    deltas[:, ::11, 2:] = 20.0  # beyond the dw/dh clamp
    hw = torch.tensor([[H * 16 - 7 * i, W * 16 - 5 * i] for i in range(B)], dtype=torch.int64)
    return anchors, objectness, deltas, hw


def assert_selection(got, ref, what: str, tol: float = FP32_TOL, min_size: float = 0.0):
    (gb, gs, gv), (rb, rs, rv) = got, ref
    e_boxes, e_scores = scaled_err(gb, rb), rel_err(gs, rs)
    assert e_boxes <= tol, f"{what}: boxes error {e_boxes:.3g} > {tol}"
    assert e_scores <= tol, f"{what}: scores error {e_scores:.3g} > {tol}"
    bad = gv != rv
    if bad.any():  # only boxes whose side is within rounding of min_size may flip
        sides = torch.minimum(rb[..., 2] - rb[..., 0], rb[..., 3] - rb[..., 1]).double()
        margin = float((sides[bad] - min_size).abs().max())
        assert margin <= 1e-3, f"{what}: {int(bad.sum())} valid flags differ, |side - min_size| up to {margin:.3g}"


@pytest.mark.parametrize(
    "B,top_k,min_size,weights",
    [
        (1, 100, 0.0, (1.0, 1.0, 1.0, 1.0)),
        (2, 1000, 16.0, (1.0, 1.0, 1.0, 1.0)),
        (3, 57, 1e-3, (10.0, 10.0, 5.0, 5.0)),
        (2, 10_000, 0.0, (1.0, 1.0, 1.0, 1.0)),  # top_k > A: K = A
        (1, 1, 0.0, (1.0, 1.0, 1.0, 1.0)),
        (2, 0, 0.0, (1.0, 1.0, 1.0, 1.0)),
    ],
)
def test_pre_nms_select(B, top_k, min_size, weights):
    g = torch.Generator().manual_seed(B * 100 + top_k)
    anchors, obj, deltas, hw = rpn_inputs(g, B)
    got = K.pre_nms_select(anchors, obj, deltas, hw, top_k, min_size, weights)
    K_ = min(top_k, anchors.shape[0])
    assert got[0].shape == (B, K_, 4) and got[1].shape == (B, K_) and got[2].dtype == torch.bool
    ref32 = R.pre_nms_select(anchors, obj, deltas, hw, top_k, min_size, weights)
    ref64 = R.pre_nms_select(anchors.double(), obj.double(), deltas.double(), hw, top_k, min_size, weights)
    assert_selection(got, ref64, "kernel vs float64 reference", FP32_TOL, min_size)
    assert_selection(got, ref32, "kernel vs float32 torch reference", 1e-4, min_size)
    # naive loop: python sort of (-logit, index), scalar float64 decode
    for b in range(B):
        order = sorted(range(anchors.shape[0]), key=lambda j: (-float(obj[b, j]), j))[:K_]
        for s, j in enumerate(order[:20]):
            x1, y1, x2, y2 = anchors[j].double().tolist()
            d = (deltas[b, j].double() / torch.tensor(weights, dtype=torch.float64)).tolist()
            w, h = x2 - x1, y2 - y1
            cx, cy = x1 + 0.5 * w, y1 + 0.5 * h
            clip = math.log(1000.0 / 16)
            pw, ph = math.exp(min(d[2], clip)) * w, math.exp(min(d[3], clip)) * h
            pcx, pcy = d[0] * w + cx, d[1] * h + cy
            H, W = hw[b].tolist()
            box = [
                min(max(v, 0.0), lim)
                for v, lim in zip((pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2), (W, H, W, H), strict=True)
            ]
            e = scaled_err(got[0][b, s], torch.tensor(box, dtype=torch.float64))
            assert e <= FP32_TOL, f"image {b} slot {s}: kernel vs naive loop {e:.3g}"


def test_pre_nms_select_ties_lower_index_first():
    g = torch.Generator().manual_seed(11)
    anchors, _, deltas, hw = rpn_inputs(g, 2)
    A = anchors.shape[0]
    obj = torch.randint(0, 4, (2, A), generator=g).float()  # 4 distinct values: the top-k boundary cuts a tie
    top_k = A // 3
    got = K.pre_nms_select(anchors, obj, deltas, hw, top_k, 0.0)
    ref = R.pre_nms_select(anchors, obj, deltas, hw, top_k, 0.0)
    # the reference's observable behaviour: the same selected values (its tie order is torch.topk's, arbitrary)
    e_ref = rel_err(got[1], ref[1])  # same values selected (sigmoid may differ from torch's by an ulp)
    assert e_ref <= 1e-6, f"selected scores differ from torch.topk's by {e_ref:.3g}"
    # the kernel's rule: among equal logits, lower anchor indices first
    for b in range(2):
        idx = torch.tensor(sorted(range(A), key=lambda j: (-float(obj[b, j]), j))[:top_k])
        exp = R.clip_boxes(R.decode_boxes(deltas[b, idx][None], anchors[idx][None]), hw[b : b + 1])[0]
        e = scaled_err(got[0][b], exp)
        assert e <= FP32_TOL, f"image {b}: boxes of the lower-index-first selection differ by {e:.3g}"


@pytest.mark.parametrize("dist", ["randn", "few_values", "sample_blind"])
def test_pre_nms_select_large_level(dist):
    """P2-sized level (A = 201,600): the sampled-threshold fast path, many ties, and its exact fallback."""
    g = torch.Generator().manual_seed(12)
    anchors, _, deltas, hw = rpn_inputs(g, 2, A_side=(200, 336), delta_scale=0.2)
    A = anchors.shape[0]
    if dist == "randn":
        obj = torch.randn(2, A, generator=g)
    elif dist == "few_values":  # the top-k boundary cuts a tie group of thousands
        obj = torch.randint(0, 50, (2, A), generator=g).float()
    else:  # only the sampled positions (every 16th) are high: the threshold overshoots, the fallback must run
        obj = torch.full((2, A), -5.0)
        obj[:, ::16] = 10 + torch.randn(2, obj[:, ::16].shape[1], generator=g)
    top_k = 2000
    got = K.pre_nms_select(anchors, obj, deltas, hw, top_k, 0.0)
    for b in range(2):
        idx = torch.sort(-obj[b], stable=True).indices[:top_k]  # lower index first among ties
        exp = R.clip_boxes(R.decode_boxes(deltas[b, idx][None].double(), anchors[idx][None].double()), hw[b : b + 1])[0]
        e = scaled_err(got[0][b], exp)
        assert e <= FP32_TOL, f"{dist} image {b}: boxes vs the expected selection differ by {e:.3g}"
        e_s = rel_err(got[1][b], torch.sigmoid(obj[b, idx].double()))
        assert e_s <= FP32_TOL, f"{dist} image {b}: scores differ by {e_s:.3g}"
    ref = R.pre_nms_select(anchors, obj, deltas, hw, top_k, 0.0)
    e_ref = rel_err(got[1], ref[1])  # same values selected (sigmoid may differ from torch's by an ulp)
    assert e_ref <= 1e-6, f"selected scores differ from torch.topk's by {e_ref:.3g}"


def test_pre_nms_select_empty_fp16_and_non_contiguous():
    g = torch.Generator().manual_seed(5)
    anchors, obj, deltas, hw = rpn_inputs(g, 2)
    empty = K.pre_nms_select(anchors[:0], obj[:, :0], deltas[:, :0], hw, 100, 0.0)  # A = 0
    assert empty[0].shape == (2, 0, 4) and empty[1].shape == (2, 0)
    none = K.pre_nms_select(anchors, obj[:0], deltas[:0], hw[:0], 100, 0.0)  # B = 0
    assert none[0].shape == (0, 100, 4)
    # non-contiguous: deltas from a [B,4,A] layout, objectness from a wider buffer
    strided_obj = torch.stack([obj, -obj], -1)[..., 0]
    assert not strided_obj.is_contiguous()
    got = K.pre_nms_select(
        anchors, strided_obj, deltas.transpose(1, 2).contiguous().transpose(1, 2), hw.t().contiguous().t(), 200, 0.0
    )
    ref = R.pre_nms_select(anchors.double(), obj.double(), deltas.double(), hw, 200, 0.0)
    assert_selection(got, ref, "non-contiguous inputs")
    # fp16 in, fp16 out (within fp16 tolerance of the float64 reference on the same fp16 inputs); logits distinct
    # in fp16 (ties would make torch.topk's order arbitrary)
    obj = (torch.stack([torch.randperm(obj.shape[1], generator=g) for _ in range(2)]).float() / obj.shape[1]) * 8 - 4
    got16 = K.pre_nms_select(anchors, obj.half(), deltas.half(), hw, 200, 0.0)
    assert got16[0].dtype == torch.float16 and got16[1].dtype == torch.float16
    ref16 = R.pre_nms_select(anchors.double(), obj.half().double(), deltas.half().double(), hw, 200, 0.0)
    assert_selection(got16, ref16, "fp16", FP16_TOL)


# ---- BoxNms -------------------------------------------------------------------------------------------------------
def nms_inputs(g, B, N, num_classes, score_levels: int | None = None):
    centers = torch.rand(B, max(N // 8, 1), 2, generator=g) * 200
    pick = torch.randint(0, centers.shape[1], (B, N), generator=g)
    ctr = torch.gather(centers, 1, pick[..., None].expand(B, N, 2)) + torch.randn(B, N, 2, generator=g) * 4
    wh = 10 + torch.rand(B, N, 2, generator=g) * 30
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1)
    scores = torch.rand(B, N, generator=g)
    if score_levels:
        scores = (scores * score_levels).floor() / score_levels
    classes = torch.randint(0, num_classes, (B, N), generator=g)
    valid = torch.rand(B, N, generator=g) > 0.1
    return boxes, scores, classes, valid


def assert_nms_equal(got, ref, what: str):
    names = ("boxes", "scores", "classes", "indices", "num")
    for name, x, y in zip(names, got, ref, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}: {name} {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}"
    if not torch.equal(got[4], ref[4]) or not torch.equal(got[3], ref[3]):
        diff = [(b, sorted(set(got[3][b].tolist()) ^ set(ref[3][b].tolist()))[:10]) for b in range(got[3].shape[0])]
        raise AssertionError(
            f"{what}: num {got[4].tolist()} vs {ref[4].tolist()}; index symmetric difference "
            f"per image (first 10): {diff}"
        )
    for name, x, y in zip(names[:3], got[:3], ref[:3], strict=True):
        assert torch.equal(x, y), f"{what}: {name} differ by {(x.double() - y.double()).abs().max()}"


@pytest.mark.parametrize(
    "B,N,C,iou,score_thr,max_out",
    [
        (1, 0, 1, 0.5, float("-inf"), 10),
        (2, 1, 1, 0.5, float("-inf"), 10),
        (1, 5, 1, 0.5, float("-inf"), 0),
        (2, 200, 1, 0.7, float("-inf"), 1000),
        (3, 300, 5, 0.5, 0.3, 50),
        (1, 1000, 3, 0.7, float("-inf"), 100),
        (2, 400, 80, 0.5, 0.05, 100),
    ],
)
def test_box_nms_vs_reference(B, N, C, iou, score_thr, max_out):
    g = torch.Generator().manual_seed(B * 7 + N + C)
    boxes, scores, classes, valid = nms_inputs(g, B, N, C)
    got = K.box_nms(boxes, scores, classes, valid, iou, score_thr, max_out)
    ref = R.box_nms_reference(boxes, scores, classes, valid, iou, score_thr, max_out)
    assert_nms_equal(got, ref, "kernel vs float64 reference loop")
    peer = R.box_nms(boxes, scores, classes, valid, iou, score_thr, max_out)  # torchvision.batched_nms
    for b in range(B):
        n = int(got[4][b])
        assert n == int(peer[4][b]), f"image {b}: {n} kept vs torchvision {int(peer[4][b])}"
        assert set(got[3][b, :n].tolist()) == set(peer[3][b, :n].tolist()), f"image {b}: index sets differ"
    # padding
    for b in range(B):
        n = int(got[4][b])
        assert (got[3][b, n:] == -1).all() and (got[1][b, n:] == 0).all() and (got[0][b, n:] == 0).all()


def test_box_nms_ties_and_degenerate_boxes():
    g = torch.Generator().manual_seed(21)
    boxes, scores, classes, valid = nms_inputs(g, 2, 500, 3, score_levels=6)  # many equal scores
    boxes[:, ::9] = edge_boxes(g, boxes[:, ::9].shape[1])[None].expand(2, -1, -1) * 0.05
    boxes[:, 1::9] = boxes[:, 0::9][:, : boxes[:, 1::9].shape[1]]  # exact duplicates, equal scores sometimes
    got = K.box_nms(boxes, scores, classes, valid, 0.5, float("-inf"), 300)
    ref = R.box_nms_reference(boxes, scores, classes, valid, 0.5, float("-inf"), 300)
    assert_nms_equal(got, ref, "ties (lower index first) and degenerate boxes")


def test_box_nms_non_contiguous_and_fp16():
    g = torch.Generator().manual_seed(4)
    boxes, scores, classes, valid = nms_inputs(g, 2, 300, 2)
    nb = boxes.transpose(0, 1).contiguous().transpose(0, 1)
    ns = torch.stack([scores, scores], -1)[..., 0]
    got = K.box_nms(nb, ns, classes.int(), valid, 0.6, 0.2, 64)  # int32 classes accepted
    ref = R.box_nms_reference(boxes, scores, classes, valid, 0.6, 0.2, 64)
    assert_nms_equal(got, ref, "non-contiguous")
    got16 = K.box_nms(boxes.half(), scores.half(), classes, valid, 0.6, 0.2, 64)
    ref16 = R.box_nms_reference(boxes.half(), scores.half(), classes, valid, 0.6, 0.2, 64)
    assert got16[0].dtype == torch.float16 and got16[1].dtype == torch.float16
    assert_nms_equal(got16, ref16, "fp16 boxes and scores")


# ---- MatchProposals -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "G,P,high,low,lq",
    [
        (0, 10, 0.7, 0.3, True),
        (3, 0, 0.7, 0.3, True),
        (1, 50, 0.7, 0.3, True),
        (5, 400, 0.7, 0.3, True),
        (5, 400, 0.5, 0.5, False),
        (12, 2000, 0.7, 0.3, False),
    ],
)
def test_match_proposals(G, P, high, low, lq):
    g = torch.Generator().manual_seed(G * 13 + P)
    gt, props = rand_boxes(g, G, min_wh=5), rand_boxes(g, P, min_wh=5)
    if G > 2:
        gt[2] = gt[0]  # duplicate ground truth: ties along columns
    iou = R.box_iou(gt, props)
    got = K.match_proposals(iou, high, low, lq)
    ref = R.match_proposals(iou, high, low, lq)
    assert torch.equal(got, ref), f"{int((got != ref).sum())} of {P} matches differ"


def test_match_proposals_quantized_ties():
    g = torch.Generator().manual_seed(9)
    iou = (torch.rand(6, 300, generator=g) * 8).floor() / 8  # many exact ties in rows and columns
    for lq in (True, False):
        got, ref = K.match_proposals(iou, 0.7, 0.3, lq), R.match_proposals(iou, 0.7, 0.3, lq)
        assert torch.equal(got, ref), f"allow_low_quality={lq}: {int((got != ref).sum())} matches differ"


def test_match_proposals_nan_negative_and_signed_zero_rows():
    """The highest IoU of a row is taken as the CUDA kernel takes it (a maximum of order-keeping integer keys):
    a NaN in a row is its maximum (no low-quality match for it, as torch.max), -0 equals +0, negatives order."""
    g = torch.Generator().manual_seed(4)
    iou = (torch.rand(5, 64, generator=g) * 8).floor() / 8
    iou[0, 7] = float("nan")  # row 0: NaN highest
    iou[1] = -(torch.rand(64, generator=g) * 8).floor() / 8  # row 1: zeros of both signs and negatives
    iou[1, 3] = 0.0
    iou[2, :] = -0.0  # row 2: only -0
    iou[3, 10] = float("inf")
    for lq in (True, False):
        got, ref = K.match_proposals(iou, 0.7, 0.3, lq), R.match_proposals(iou, 0.7, 0.3, lq)
        assert torch.equal(got, ref), f"allow_low_quality={lq}: {(got != ref).nonzero().flatten().tolist()} differ"


# ---- RoIAlign (CPU training kernel) -------------------------------------------------------------------------------
def roi_inputs(g: torch.Generator, B: int, C: int, H: int, W: int, R: int, scale: float, spill: bool = True):
    """Features and RoIs in image pixels (feature * 1/scale), some partly or wholly outside the map, some degenerate."""
    x = torch.randn(B, C, H, W, generator=g)
    size = torch.tensor([W, H]) / scale
    xy = torch.rand(R, 2, generator=g) * size * (1.2 if spill else 0.9) - (0.1 * size if spill else 0)
    wh = torch.rand(R, 2, generator=g) * size * 0.6
    if R >= 4:
        wh[0] = 0.0  # a point
        wh[1] = -3.0  # inverted (legacy mode makes it 1x1)
        xy[2] = -size  # wholly outside, top-left
        xy[3] = size * 2  # wholly outside, bottom-right
    batch = torch.randint(0, B, (R, 1), generator=g).float()
    return x, torch.cat([batch, xy, xy + wh], 1)


def roi_align_f64(x: torch.Tensor, rois: torch.Tensor, size: int, scale: float, sr: int, aligned: bool):
    """torchvision's op in float64: the accuracy reference for forward and backward."""
    return torchvision.ops.roi_align(x.double(), rois.double(), size, scale, sr, aligned)


ROI_CASES = [  # B, C, H, W, R, size, scale, sampling_ratio, aligned
    (2, 16, 40, 56, 300, 7, 0.25, 2, False),  # the box head
    (1, 8, 25, 19, 40, 14, 0.125, 2, False),  # the mask head, odd sizes
    (3, 4, 12, 12, 50, 7, 1 / 32, -1, False),  # adaptive sampling grid
    (2, 5, 30, 20, 60, 5, 0.5, 0, True),  # aligned (half-pixel), adaptive
    (1, 3, 1, 1, 9, 2, 1.0, 2, True),  # a 1x1 map
    (2, 6, 10, 10, 0, 7, 0.25, 2, False),  # no RoIs
]


@pytest.mark.parametrize("B,C,H,W,R,size,scale,sr,aligned", ROI_CASES)
def test_roi_align_equals_torchvision_bit_for_bit(B, C, H, W, R, size, scale, sr, aligned):
    g = torch.Generator().manual_seed(B * 100 + R)
    x, rois = roi_inputs(g, B, C, H, W, R, scale)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = K.roi_align(xa, rois, size, scale, sr, aligned)
    ref = torchvision.ops.roi_align(xb, rois, size, scale, sr, aligned)
    assert torch.equal(got, ref), f"forward differs by {(got - ref).abs().max()}"
    grad = torch.randn(got.shape, generator=g)
    got.backward(grad)
    ref.backward(grad)
    assert torch.equal(xa.grad, xb.grad), f"backward differs by {(xa.grad - xb.grad).abs().max()}"
    # and both are right: float64 forward and backward
    x64 = x.double().requires_grad_()
    ref64 = roi_align_f64(x64, rois, size, scale, sr, aligned)
    ref64.backward(grad.double())
    e_fwd, e_bwd = scaled_err(got, ref64), scaled_err(xa.grad, x64.grad)
    print(
        f"roi_align {(B, C, H, W, R, size, scale, sr, aligned)}: fp32 vs fp64 forward {e_fwd:.2e} backward {e_bwd:.2e}"
    )
    assert e_fwd <= FP32_TOL and e_bwd <= FP32_TOL, (e_fwd, e_bwd)


def test_roi_align_nan_and_bad_batch_index():
    x = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0], [1, float("nan"), 1.0, 6.0, 6.0], [0, 2.0, 2.0, 2.0, 2.0]])
    for sr in (2, 0):  # fixed grid, adaptive grid (a NaN extent samples nothing: zeros)
        got = K.roi_align(x, rois, 3, 1.0, sr, True)
        assert torch.isfinite(got).all() and torch.equal(got[1], torch.zeros_like(got[1])), got[1]
        ref = torchvision.ops.roi_align(x, rois[[0, 2]], 3, 1.0, sr, True)
        assert torch.equal(got[[0, 2]], ref)
    with pytest.raises(K.KernelInputError, match=r"image indices in \[0, 2\)"):
        K.roi_align(x, torch.tensor([[2, 1.0, 1.0, 6.0, 6.0]]), 3, 1.0, 2, False)  # image 2 of a batch of 2
    with pytest.raises(MrcnnError, match="invalid argument"):  # the C ABI checks too
        torch.ops.mrcnn.roi_align([x], torch.tensor([[-1, 1.0, 1.0, 6.0, 6.0]]), None, [1.0], 3, 3, 2, False)
    with pytest.raises(K.KernelInputError, match=r"levels must be in \[0, 2\)"):
        K.multilevel_roi_align([x, x], rois, torch.tensor([0, 2, 1]), [1.0, 0.5], 3, 2)
    with pytest.raises(MrcnnError, match="invalid argument"):
        torch.ops.mrcnn.roi_align([x, x], rois, torch.tensor([0, -1, 1]), [1.0, 0.5], 3, 3, 2, False)


def test_roi_align_threads_do_not_change_results():
    g = torch.Generator().manual_seed(7)
    x, rois = roi_inputs(g, 2, 33, 24, 24, 120, 0.25)
    results = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xg = x.clone().requires_grad_()
            y = K.roi_align(xg, rois, 7, 0.25, 2, False)
            y.backward(torch.ones_like(y))
            results.append((y, xg.grad))
    finally:
        torch.set_num_threads(old)
    for y, gx in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(gx, results[0][1])


def test_roi_align_autograd_and_fake_kernels():
    g = torch.Generator().manual_seed(8)
    x, rois = roi_inputs(g, 2, 4, 9, 11, 12, 0.5)
    torch.library.opcheck(torch.ops.mrcnn.roi_align, ([x.requires_grad_()], rois, None, [0.5], 3, 3, 2, False))
    y = torch.randn(2, 4, 5, 6, generator=g).requires_grad_()
    levels = torch.randint(0, 2, (12,), generator=g)
    torch.library.opcheck(torch.ops.mrcnn.roi_align, ([x, y], rois, levels, [0.5, 0.25], 2, 3, 2, True))
    fake = torch.ops.mrcnn.roi_align(
        [x.detach().to("meta"), y.detach().to("meta")], rois.to("meta"), levels.to("meta"), [0.5, 0.25], 3, 4, 2, False
    )
    assert fake.shape == (12, 4, 3, 4) and fake.device.type == "meta"


PYRAMID_CASES = [  # B, C, levels (H, W), R, size, sampling_ratio, aligned
    (2, 16, [(40, 56), (20, 28), (10, 14), (5, 7)], 300, 7, 2, False),  # box head on an FPN
    (1, 8, [(25, 19), (13, 10), (7, 5), (4, 3)], 60, 14, 2, False),  # mask head, odd sizes
    (3, 4, [(12, 12), (6, 6)], 40, 5, 0, True),  # adaptive grid, aligned
    (2, 3, [(9, 9), (5, 5), (3, 3)], 0, 7, 2, False),  # no RoIs
]


def pyramid_inputs(g, B, C, shapes, R):
    feats = [torch.randn(B, C, h, w, generator=g) for h, w in shapes]
    _, rois = roi_inputs(g, B, C, shapes[0][0], shapes[0][1], R, 0.25)
    levels = torch.randint(0, len(shapes), (R,), generator=g)
    levels[: R // 3] = 0  # an uneven split
    if len(shapes) == 4 and R < 100:
        levels[levels == 3] = 1  # a level without RoIs
    scales = [0.25 / 2**i for i in range(len(shapes))]
    return feats, rois, levels, scales


def per_level_torchvision(feats, rois, levels, scales, size, sr, aligned):
    """torchvision's way (MultiScaleRoIAlign): each level's RoIs through roi_align, back to RoI order."""
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], size, size))
    for lvl, (f, s) in enumerate(zip(feats, scales, strict=True)):
        idx = torch.where(levels == lvl)[0]
        out = out.index_put((idx,), torchvision.ops.roi_align(f, rois[idx], size, s, sr, aligned))
    return out


@pytest.mark.parametrize("B,C,shapes,R,size,sr,aligned", PYRAMID_CASES)
def test_multilevel_roi_align_equals_torchvision_per_level_bit_for_bit(B, C, shapes, R, size, sr, aligned):
    g = torch.Generator().manual_seed(R + len(shapes))
    feats, rois, levels, scales = pyramid_inputs(g, B, C, shapes, R)
    fa = [f.clone().requires_grad_() for f in feats]
    fb = [f.clone().requires_grad_() for f in feats]
    got = K.multilevel_roi_align(fa, rois, levels, scales, size, sr, aligned)
    ref = per_level_torchvision(fb, rois, levels, scales, size, sr, aligned)
    counts = torch.bincount(levels, minlength=len(shapes)).tolist()
    assert torch.equal(got, ref), f"RoIs per level {counts}: forward differs by {(got - ref).abs().max()}"
    grad = torch.randn(got.shape, generator=g)
    got.backward(grad)
    ref.backward(grad)
    for lvl, (a, b) in enumerate(zip(fa, fb, strict=True)):
        assert torch.equal(a.grad, b.grad), (
            f"level {lvl} ({counts[lvl]} RoIs): gradient differs by {(a.grad - b.grad).abs().max()}"
        )


@pytest.mark.parametrize("shapes", [[(24, 40), (12, 20), (6, 10), (3, 5)], [(17, 9), (1, 1)]])
def test_roi_align_reads_channels_last_maps_bit_for_bit(shapes):
    """CPU channels-last maps (eager inference on a channels-last model) are read in place by the NHWC kernel: the
    same values as the NCHW kernel and torchvision bit for bit, and gradients as for NCHW maps."""
    g = torch.Generator().manual_seed(7)
    feats, rois, levels, scales = pyramid_inputs(g, 2, 16, shapes, 40)
    cl = [f.contiguous(memory_format=torch.channels_last).requires_grad_() for f in feats]
    assert not cl[0].is_contiguous()
    plain = [f.clone().requires_grad_() for f in feats]
    got = K.multilevel_roi_align(cl, rois, levels, scales, 7, 2, True)
    want = K.multilevel_roi_align(plain, rois, levels, scales, 7, 2, True)
    ref = per_level_torchvision([f.detach() for f in feats], rois, levels, scales, 7, 2, True)
    print(f"max |nhwc - nchw| {(got - want).abs().max():.3g}, |nhwc - torchvision| {(got - ref).abs().max():.3g}")
    assert torch.equal(got, want) and torch.equal(got, ref)
    grad = torch.randn(got.shape, generator=g)
    got.backward(grad)
    want.backward(grad)
    for a, b in zip(cl, plain, strict=True):  # (a level without RoIs may get no gradient: zeros)
        ga, gb = (x.grad if x.grad is not None else torch.zeros_like(x) for x in (a, b))
        assert torch.equal(ga, gb)


def test_model_uses_native_roi_align_only_for_cpu_float32_training():
    x = torch.zeros(1, 2, 8, 8)
    rois = torch.zeros(3, 5)
    auto = Ops(backend="auto")
    assert not auto.native_roi_align_applies(x, rois), "no gradient needed: torchvision's op (export, eval)"
    x.requires_grad_()
    assert auto.native_roi_align_applies(x, rois)
    with torch.no_grad():
        assert not auto.native_roi_align_applies(x, rois)
    assert not auto.native_roi_align_applies(x.detach().double().requires_grad_(), rois.double())
    bf16 = x.detach().bfloat16().requires_grad_()  # AMP: features cast to float32 for the op
    assert auto.native_roi_align_applies(bf16, rois, torch.float32)
    assert not auto.native_roi_align_applies(bf16, rois)
    assert not Ops(backend="reference").native_roi_align_applies(x, rois)
    assert Ops(pyramid_roi_align_export=True).native_roi_align_applies(x.detach(), rois), "an rtx export traces it"


# ---- bad inputs: one clear Python error ---------------------------------------------------------------------------
Z = torch.zeros
BAD_INPUTS = [
    ("rank 1 boxes", lambda: K.box_iou(Z(4), Z(3, 4)), "rank"),
    ("last dim 5", lambda: K.box_iou(Z(3, 5), Z(3, 4)), "last dimension of 4"),
    ("int boxes", lambda: K.box_iou(Z(3, 4, dtype=torch.int64), Z(3, 4)), "must be float32"),
    ("float64 boxes", lambda: K.box_iou(Z(3, 4, dtype=torch.float64), Z(3, 4)), "must be float32"),
    ("devices", lambda: K.box_iou(Z(3, 4), Z(3, 4, device="meta")), "one device"),
    ("batch mismatch", lambda: K.box_iou(Z(2, 3, 4), Z(3, 3, 4)), "broadcast"),
    ("op rank", lambda: torch.ops.mrcnn.box_iou(Z(3, 4), Z(3, 4)), "rank 3"),
    (
        "negative top_k",
        lambda: K.pre_nms_select(Z(5, 4), Z(1, 5), Z(1, 5, 4), Z(1, 2, dtype=torch.int64), -1, 0.0),
        "top_k",
    ),
    ("float image sizes", lambda: K.pre_nms_select(Z(5, 4), Z(1, 5), Z(1, 5, 4), Z(1, 2), 3, 0.0), "image_sizes"),
    (
        "anchors vs A",
        lambda: K.pre_nms_select(Z(6, 4), Z(1, 5), Z(1, 5, 4), Z(1, 2, dtype=torch.int64), 3, 0.0),
        "anchors.shape",
    ),
    (
        "pre_nms devices",
        lambda: K.pre_nms_select(Z(5, 4), Z(1, 5, device="meta"), Z(1, 5, 4), Z(1, 2, dtype=torch.int64), 3, 0.0),
        "one device",
    ),
    (
        "weights",
        lambda: K.pre_nms_select(Z(5, 4), Z(1, 5), Z(1, 5, 4), Z(1, 2, dtype=torch.int64), 3, 0.0, (1.0,)),
        "weights",
    ),
    (
        "negative max_output",
        lambda: K.box_nms(Z(1, 3, 4), Z(1, 3), Z(1, 3, dtype=torch.int64), Z(1, 3, dtype=torch.bool), 0.5, 0.0, -1),
        "max_output",
    ),
    (
        "float classes",
        lambda: K.box_nms(Z(1, 3, 4), Z(1, 3), Z(1, 3), Z(1, 3, dtype=torch.bool), 0.5, 0.0, 5),
        "classes",
    ),
    (
        "scores shape",
        lambda: K.box_nms(Z(1, 3, 4), Z(1, 4), Z(1, 3, dtype=torch.int64), Z(1, 3, dtype=torch.bool), 0.5, 0.0, 5),
        "scores.shape",
    ),
    (
        "nms devices",
        lambda: K.box_nms(
            Z(1, 3, 4), Z(1, 3), Z(1, 3, dtype=torch.int64), Z(1, 3, dtype=torch.bool, device="meta"), 0.5, 0.0, 5
        ),
        "one device",
    ),
    ("negative stride", lambda: K.anchor_grid(Z(1, 1, 4, 4), Z(1, 3, 32, 32), (32.0,), (1.0,), -4), "stride"),
    ("no sizes", lambda: K.anchor_grid(Z(1, 1, 4, 4), Z(1, 3, 32, 32), (), (1.0,)), "sizes"),
    (
        "anchor devices",
        lambda: K.anchor_grid(Z(1, 1, 4, 4), Z(1, 3, 32, 32, device="meta"), (32.0,), (1.0,)),
        "one device",
    ),
    ("matcher rank", lambda: K.match_proposals(Z(2, 3, 4), 0.7, 0.3, True), "rank 2"),
    ("not a tensor", lambda: K.box_iou([[0, 0, 1, 1]], Z(1, 4)), "torch.Tensor"),
    ("roi_align rois", lambda: K.roi_align(Z(1, 2, 8, 8), Z(3, 4), 7, 0.25), "last dimension of 5"),
    ("roi_align dtype", lambda: K.roi_align(Z(1, 2, 8, 8, dtype=torch.float64), Z(3, 5), 7, 0.25), "float32"),
    ("roi_align device", lambda: K.roi_align(Z(1, 2, 8, 8, device="meta"), Z(3, 5, device="meta"), 7), "cpu"),
    ("roi_align size", lambda: K.roi_align(Z(1, 2, 8, 8), Z(3, 5), 0, 0.25), "positive"),
]


@pytest.mark.parametrize("what,call,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_one_clear_error(what, call, message):
    with pytest.raises(K.KernelInputError, match=message) as info:
        call()
    assert isinstance(info.value, MrcnnError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value), f"one-line message expected, got {str(info.value)!r}"


# ---- the built library --------------------------------------------------------------------------------------------
CUDA_SYMBOLS = [
    "mrcnn_anchor_grid_cuda",
    "mrcnn_box_iou_f32_cuda",
    "mrcnn_box_iou_f16_cuda",
    "mrcnn_pre_nms_select_cuda",
    "mrcnn_pre_nms_select_workspace_size",
    "mrcnn_box_nms_cuda",
    "mrcnn_box_nms_workspace_size",
    "mrcnn_match_proposals_cuda",
    "mrcnn_roi_align_f32_cuda",
    "mrcnn_roi_align_backward_f32_cuda",
    "mrcnn_roi_align_nhwc_f32_cuda",
    "mrcnn_roi_align_backward_nhwc_f32_cuda",
]
CPU_SYMBOLS = [
    "mrcnn_build_info",
    "mrcnn_anchor_grid_cpu",
    "mrcnn_box_iou_f32_cpu",
    "mrcnn_box_iou_f16_cpu",
    "mrcnn_pre_nms_select_cpu",
    "mrcnn_box_nms_cpu",
    "mrcnn_match_proposals_cpu",
    "mrcnn_roi_align_f32_cpu",
    "mrcnn_roi_align_backward_f32_cpu",
]


def exported_symbols() -> set[str]:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run(
        [nm, "-D", "--defined-only", str(K.library_path())], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_library_exports_cpu_abi_only_mrcnn_symbols():
    syms = exported_symbols()
    missing = [s for s in CPU_SYMBOLS if s not in syms]
    assert not missing, f"{K.library_path()} lacks {missing}"
    leaked = sorted(s for s in syms if s.startswith("cuda") or s.startswith("__cuda"))
    assert not leaked, f"static cudart symbols exported (would interpose torch's libcudart): {leaked[:5]}"


def test_library_has_cuda_symbols_when_built_with_cuda():
    if not K.cuda_built():
        pytest.skip(f"library built without CUDA: {K.build_info()}")
    syms = exported_symbols()
    missing = [s for s in CUDA_SYMBOLS if s not in syms]
    assert not missing, f"{K.library_path()} lacks {missing}"
    assert re.search(r"sm [0-9,]+", K.build_info()), K.build_info()


def test_nvcc_on_path_means_cuda_was_compiled():
    if os.environ.get("MRCNN_WITH_CUDA", "").upper() == "OFF":
        pytest.skip("MRCNN_WITH_CUDA=OFF requested")
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH: the library is expected to be CPU-only")
    assert "cuda" in K.build_info(), (
        f"nvcc is on PATH but {K.library_path()} was built without CUDA kernels: {K.build_info()}"
    )


# ---- torch.library: schemas, fake kernels ------------------------------------------------------------------------
def opcheck_cases():
    g = torch.Generator().manual_seed(0)
    anchors, obj, deltas, hw = rpn_inputs(g, 2, A_side=(4, 5))
    boxes, scores, classes, valid = nms_inputs(g, 2, 50, 3)
    return {
        "anchor_grid": (torch.ops.mrcnn.anchor_grid, (Z(1, 2, 5, 7), Z(1, 3, 40, 56), [32.0], [0.5, 1.0, 2.0], 0)),
        "box_iou": (torch.ops.mrcnn.box_iou, (rand_boxes(g, 2, 5), rand_boxes(g, 2, 6))),
        "pre_nms_select": (torch.ops.mrcnn.pre_nms_select, (anchors, obj, deltas, hw, 20, 0.0, [1.0] * 4, 4.0)),
        "box_nms": (torch.ops.mrcnn.box_nms, (boxes, scores, classes, valid, 0.5, float("-inf"), 20)),
        "match_proposals": (torch.ops.mrcnn.match_proposals, (torch.rand(3, 40, generator=g), 0.7, 0.3, True)),
    }


@pytest.mark.parametrize("name", ["anchor_grid", "box_iou", "pre_nms_select", "box_nms", "match_proposals"])
def test_opcheck(name):
    op, args = opcheck_cases()[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", ["anchor_grid", "box_iou", "pre_nms_select", "box_nms", "match_proposals"])
def test_fake_kernels_give_the_real_shapes(name):
    op, args = opcheck_cases()[name]
    real = op(*args)
    fake = op(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    real, fake = (real, fake) if isinstance(real, tuple) else ((real,), (fake,))
    for r, f in zip(real, fake, strict=True):
        assert f.shape == r.shape and f.dtype == r.dtype and f.device.type == "meta"


# ---- backend choice -----------------------------------------------------------------------------------------------
def test_ops_backends():
    g = torch.Generator().manual_seed(1)
    a, b = rand_boxes(g, 6), rand_boxes(g, 9)
    for name in ("reference", "native", "auto"):
        assert rel_err(Ops(backend=name).box_iou(a, b), R.box_iou(a, b)) <= 1e-6, name
    assert Ops(backend="reference").implementation("box_iou", (a, b)) is R.box_iou
    assert Ops(backend="native").implementation("box_iou", (a, b)) is K.box_iou
    # float64: no kernel, "auto" falls back to the reference, "native" refuses
    assert Ops(backend="auto").box_iou(a.double(), b.double()).dtype == torch.float64
    with pytest.raises(K.KernelInputError):
        Ops(backend="native").box_iou(a.double(), b.double())
    with pytest.raises(MrcnnError, match="unknown ops backend 'fast'"):
        Ops(backend="fast")


@pytest.mark.parametrize(
    "var,value,message",
    [
        ("MRCNN_OPS_BACKEND", "bogus", "MRCNN_OPS_BACKEND='bogus': choose one of reference, native, auto"),
        ("MRCNN_CUDA_ROI_ALIGN", "yes", "MRCNN_CUDA_ROI_ALIGN='yes': must be 0 or 1"),
        ("MRCNN_CUDA_ROI_ALIGN_NHWC", "2", "MRCNN_CUDA_ROI_ALIGN_NHWC='2': must be 0 or 1"),
    ],
)
def test_ops_from_env_names_a_bad_variable(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(MrcnnError) as e:
        Ops.from_env()
    print(e.value)
    assert str(e.value) == message


def test_two_models_choose_their_ops_independently():
    """The choice is a model's own value: setting one model's ops leaves another's as it was."""
    from mrcnn.config import get_config
    from mrcnn.model import build_model

    a, b = build_model(get_config("shapes-tiny").model), build_model(get_config("shapes-tiny").model)
    a.set_ops(Ops(backend="reference"))
    b.set_ops(Ops(backend="native", pyramid_roi_align_export=True))
    assert (a.ops.backend, a.rpn.ops.backend, a.roi_heads.ops.backend) == ("reference",) * 3
    assert (b.ops.backend, b.rpn.ops.backend, b.roi_heads.ops.backend) == ("native",) * 3
    assert b.roi_heads.ops.pyramid_roi_align_export and not a.roi_heads.ops.pyramid_roi_align_export


# ---- CUDA vs CPU kernels (GPU machines) ---------------------------------------------------------------------------
@pytest.mark.cuda
@needs_gpu
def test_cuda_anchor_grid_equals_cpu():
    for fshape, ishape, sizes, ratios, stride in ANCHOR_CASES:
        f, i = torch.zeros(fshape), torch.zeros(ishape)
        cpu = K.anchor_grid(f, i, sizes, ratios, stride)
        gpu = K.anchor_grid(f.cuda(), i.cuda(), sizes, ratios, stride)
        assert torch.equal(gpu.cpu(), cpu), f"{fshape}: max diff {(gpu.cpu() - cpu).abs().max()}"


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_box_iou_equals_cpu(dtype):
    g = torch.Generator().manual_seed(2)
    for batch, n, m in [(1, 0, 3), (1, 1, 1), (3, 37, 530), (2, 1000, 1000), (1, 70_000, 3)]:
        a, b = rand_boxes(g, batch, n).to(dtype), rand_boxes(g, batch, m).to(dtype)
        cpu, gpu = K.box_iou(a, b), K.box_iou(a.cuda(), b.cuda()).cpu()
        assert torch.equal(gpu, cpu), f"{(batch, n, m)} {dtype}: max diff {(gpu - cpu).abs().max()}"
    a, b = edge_boxes(g, 70), edge_boxes(g, 90)
    assert torch.equal(K.box_iou(a.cuda(), b.cuda()).cpu(), K.box_iou(a, b))


@pytest.mark.cuda
@needs_gpu
def test_cuda_pre_nms_select_equals_cpu():
    g = torch.Generator().manual_seed(3)
    for B, side, top_k in [(1, (10, 13), 100), (2, (50, 80), 2000), (3, (4, 5), 1000), (2, (4, 5), 0)]:
        anchors, obj, deltas, hw = rpn_inputs(g, B, side)
        obj[:, ::3] = obj[:, 1::3][:, : obj[:, ::3].shape[1]]  # ties
        cpu = K.pre_nms_select(anchors, obj, deltas, hw, top_k, 1.0, (10.0, 10.0, 5.0, 5.0))
        gpu = K.pre_nms_select(anchors.cuda(), obj.cuda(), deltas.cuda(), hw.cuda(), top_k, 1.0, (10.0, 10.0, 5.0, 5.0))
        assert_selection(tuple(t.cpu() for t in gpu), cpu, f"CUDA vs CPU {B} {side} {top_k}", 1e-6, 1.0)


@pytest.mark.cuda
@needs_gpu
def test_cuda_box_nms_equals_cpu():
    g = torch.Generator().manual_seed(4)
    for B, N, C, thr, max_out, levels in [
        (1, 0, 1, float("-inf"), 10, None),
        (2, 1, 1, float("-inf"), 10, None),
        (2, 5000, 5, float("-inf"), 1000, None),
        (3, 700, 80, 0.05, 100, 8),
        (1, 300, 2, 0.2, 0, None),
    ]:
        boxes, scores, classes, valid = nms_inputs(g, B, N, C, levels)
        cpu = K.box_nms(boxes, scores, classes, valid, 0.7, thr, max_out)
        gpu = K.box_nms(boxes.cuda(), scores.cuda(), classes.cuda(), valid.cuda(), 0.7, thr, max_out)
        assert_nms_equal(tuple(t.cpu() for t in gpu), cpu, f"CUDA vs CPU B={B} N={N} C={C}")


@pytest.mark.cuda
@needs_gpu
def test_cuda_match_proposals_equals_cpu():
    g = torch.Generator().manual_seed(5)
    for G, P in [(0, 10), (3, 0), (1, 5), (7, 20_000), (20, 201_600), (3, 4096 * 4097 + 5)]:  # one row: > 4096 chunks
        iou = (torch.rand(G, P, generator=g) * 8).floor() / 8
        if G >= 3:
            iou[0, P // 2] = float("nan")
            iou[1, :] = -iou[1, :]
            iou[2, : P // 3] = float("inf")
        for lq in (True, False):
            cpu = K.match_proposals(iou, 0.7, 0.3, lq)
            gpu = K.match_proposals(iou.cuda(), 0.7, 0.3, lq).cpu()
            assert torch.equal(gpu, cpu), f"G={G} P={P} lq={lq}: {int((gpu != cpu).sum())} differ"


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("B,C,shapes,R,size,sr,aligned", PYRAMID_CASES)
def test_cuda_roi_align_equals_cpu(B, C, shapes, R, size, sr, aligned):
    g = torch.Generator().manual_seed(R + 17)
    feats, rois, levels, scales = pyramid_inputs(g, B, C, shapes, R)
    fc = [f.clone().requires_grad_() for f in feats]
    fg = [f.cuda().requires_grad_() for f in feats]
    cpu = K.multilevel_roi_align(fc, rois, levels, scales, size, sr, aligned)
    gpu = K.multilevel_roi_align(fg, rois.cuda(), levels.cuda(), scales, size, sr, aligned)
    assert torch.equal(gpu.cpu(), cpu), f"forward: max diff {(gpu.cpu() - cpu).abs().max()}"
    grad = torch.randn(cpu.shape, generator=g)
    cpu.backward(grad)
    gpu.backward(grad.cuda())
    for lvl, (a, b) in enumerate(zip(fc, fg, strict=True)):  # atomicAdd: sums in another order
        e = rel_err(b.grad.cpu(), a.grad)
        assert e <= FP32_TOL, f"level {lvl}: gradient CUDA vs CPU rel {e:.2e}"


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize(
    "B,C,shapes,R,size,sr,aligned", PYRAMID_CASES + [(2, 64, [(40, 56), (20, 28), (10, 14), (5, 7)], 300, 7, 2, False)]
)  # whole warps of channels
@pytest.mark.parametrize("nhwc", [True, False])
def test_cuda_roi_align_nhwc_equals_cpu(B, C, shapes, R, size, sr, aligned, nhwc):
    """Channels-last maps on CUDA: with the NHWC kernels on, the forward equals the CPU kernel bit for bit and the
    gradients (NHWC, from coalesced atomics) equal its within rounding; with them off, the maps are pooled from
    NCHW copies and the gradients come back NCHW."""
    g = torch.Generator().manual_seed(R + 29)
    feats, rois, levels, scales = pyramid_inputs(g, B, C, shapes, R)
    fc = [f.clone().requires_grad_() for f in feats]
    fg = [f.cuda().contiguous(memory_format=torch.channels_last).requires_grad_() for f in feats]
    cpu = K.multilevel_roi_align(fc, rois, levels, scales, size, sr, aligned)
    gpu = K.multilevel_roi_align(fg, rois.cuda(), levels.cuda(), scales, size, sr, aligned, cuda_nhwc=nhwc)
    grad = torch.randn(cpu.shape, generator=g)
    gpu.backward(grad.cuda())
    cpu.backward(grad)
    assert torch.equal(gpu.cpu(), cpu), f"forward: max diff {(gpu.cpu() - cpu).abs().max()}"
    maps = torch.ops.mrcnn.roi_align_backward(
        grad.cuda(),
        rois.cuda(),
        levels.cuda(),
        scales,
        size,
        size,
        B,
        [h for h, _ in shapes],
        [w for _, w in shapes],
        sr,
        aligned,
        nhwc,
    )
    layout = torch.channels_last if nhwc else torch.contiguous_format
    assert all(m.is_contiguous(memory_format=layout) for m in maps), [m.stride() for m in maps]
    for lvl, (a, b) in enumerate(zip(fc, fg, strict=True)):  # (a leaf's .grad takes the leaf's layout either way)
        e = rel_err(b.grad.cpu(), a.grad)
        assert e <= FP32_TOL, f"level {lvl}: gradient CUDA vs CPU rel {e:.2e}"


# ---- the contract table (plugins/README.md) -----------------------------------------------------------------------
def test_contract_table_matches_the_torch_ops():
    rows = contract_rows()
    ops = sorted({r["op"] for r in rows})
    assert ops == ["AnchorGrid", "BoxIou", "BoxNms", "MatchProposals", "PreNmsSelect"], ops
    for op in ops:
        mine = [r for r in rows if r["op"] == op]
        torch_names = {r["torch"] for r in mine}
        assert len(torch_names) == 1 and {r["onnx_op_type"] for r in mine} == {op}, f"{op}: names inconsistent"
        assert {r["plugin_version"] for r in mine} == {"1"}, f"{op}: plugin_version"
        schema = getattr(torch.ops.mrcnn, torch_names.pop().split("::")[1]).default._schema
        args = [r["name"] for r in mine if r["kind"] in ("input", "attribute")]
        assert [a.name for a in schema.arguments] == args, f"{op}: table {args} vs schema {schema}"
        tensors = [r["name"] for r in mine if r["kind"] == "input"]
        assert [a.name for a in schema.arguments if str(a.type) == "Tensor"] == tensors, f"{op}: tensor inputs"
        outs = [r for r in mine if r["kind"] == "output"]
        assert len(outs) == len(schema.returns), f"{op}: {len(outs)} outputs in the table, schema {schema}"
    # the fills are what the kernel writes into padding slots
    g = torch.Generator().manual_seed(0)
    boxes, scores, classes, valid = nms_inputs(g, 1, 3, 1)
    out = K.box_nms(boxes, scores, classes, valid, 0.5, 2.0, 4)  # score_threshold 2: no candidates
    fills = {r["name"]: r["fill"] for r in rows if r["op"] == "BoxNms" and r["kind"] == "output"}
    for name, t in zip(("boxes", "scores", "classes", "indices"), out[:4], strict=True):
        assert (t == float(fills[name])).all(), f"padding of {name}: {t.flatten()[:4].tolist()} vs {fills[name]}"
