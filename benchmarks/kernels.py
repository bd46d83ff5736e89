"""Native kernels vs their torch / torchvision peers, same inputs, same run; prints times and ratios (peer / kernel,
> 1 means the kernel is faster).

  python benchmarks/kernels.py                  # CPU (torch uses its default intra-op threads; kernels 1 thread)
  python benchmarks/kernels.py --device cuda    # CUDA, with the DRAM-roofline share of BoxIou

Realistic sizes (R-50-FPN at 800x1344): P2 has 200x336x3 = 201,600 anchors; pre-NMS top-k 1000 / 2000 per level;
RPN NMS over ~5 levels x 1000 boxes; RoI-head NMS over 1000 proposals x 80 classes after the 0.05 score threshold;
IoU 1000x1000 (matcher of 1000 proposals, or 20 ground truths x 201,600 anchors).

    AnchorGrid      vs mrcnn.ops.anchor_grid (torchvision's AnchorGenerator math)
    BoxIou          vs torchvision.ops.box_iou
    PreNmsSelect    vs mrcnn.ops.pre_nms_select (topk + gather + decode + clip + min-size)
    BoxNms          vs torchvision.ops.batched_nms + fixed-size packing (mrcnn.ops.box_nms), and vs
                    torchvision.ops.nms alone (single class, no packing)
    MatchProposals  vs mrcnn.ops.match_proposals
    RoIAlign        vs torchvision.ops.roi_align, forward and forward+backward (CPU training kernel; threads as torch);
                    multi-level (one call per FPN) vs torchvision.ops.MultiScaleRoIAlign, forward+backward
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import torchvision
from common import machine, save

from mrcnn import native as K
from mrcnn.ops import REFERENCE as R  # the pure-torch peers (mrcnn.ops.<name> itself dispatches to the kernels)
from mrcnn.ops import Ops


def timed(fn, device: str, iters: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":  # device events around the call (launches included), read after a synchronize
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
            continue
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def boxes(g: torch.Generator, *lead: int, scale: float = 800.0) -> torch.Tensor:
    xy = torch.rand(*lead, 2, generator=g) * scale
    wh = 8 + torch.rand(*lead, 2, generator=g) * scale * 0.3
    return torch.cat([xy, xy + wh], -1)


def clustered(g: torch.Generator, B: int, N: int, classes: int, score_lo: float = 0.0):
    ctr = torch.rand(B, N // 8 + 1, 2, generator=g) * 800
    pick = torch.randint(0, ctr.shape[1], (B, N), generator=g)
    c = torch.gather(ctr, 1, pick[..., None].expand(B, N, 2)) + torch.randn(B, N, 2, generator=g) * 10
    wh = 16 + torch.rand(B, N, 2, generator=g) * 100
    b = torch.cat([c - wh / 2, c + wh / 2], -1)
    s = score_lo + torch.rand(B, N, generator=g) * (1 - score_lo)
    return b, s, torch.randint(0, classes, (B, N), generator=g), torch.ones(B, N, dtype=torch.bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads for the peers (0: default)")
    ap.add_argument("--json", default=None, help="write results here (default: benchmarks/results/...)")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    dev = a.device
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if not K.available():
        raise SystemExit(f"native kernels not available: {K.build_info()}")
    if dev == "cuda" and not K.cuda_available():
        raise SystemExit(f"CUDA kernels not runnable here (GPU visible: {torch.cuda.is_available()}; {K.build_info()})")
    g = torch.Generator().manual_seed(0)
    rows = []

    def bench(name: str, size: str, kernel, peer, peer_name: str, extra: dict | None = None):
        tk, tp = timed(kernel, dev, a.iters), timed(peer, dev, a.iters)
        row = {
            "op": name,
            "size": size,
            "peer": peer_name,
            "kernel_ms": tk * 1e3,
            "peer_ms": tp * 1e3,
            "speedup": tp / tk,
            **(extra or {}),
        }
        rows.append(row)
        more = "".join(f"  {k} {v:.1f}" if isinstance(v, float) else f"  {k} {v}" for k, v in (extra or {}).items())
        print(
            f"{name:15s} {size:34s} kernel {tk * 1e3:9.3f} ms   {peer_name:28s} {tp * 1e3:9.3f} ms   "
            f"ratio {tp / tk:6.2f}x{more}"
        )
        return tk

    to = (lambda t: t.to(dev)) if dev == "cuda" else (lambda t: t)

    # AnchorGrid: P2 of an 800x1344 batch
    f, im = to(torch.zeros(1, 1, 200, 336)), to(torch.zeros(1, 3, 800, 1344))
    bench(
        "AnchorGrid",
        "200x336x3 (P2)",
        lambda: K.anchor_grid(f, im, (32.0,), (0.5, 1.0, 2.0)),
        lambda: R["anchor_grid"](f, im, (32.0,), (0.5, 1.0, 2.0)),
        "mrcnn.ops (torch)",
    )

    # BoxIou
    for n, m in [(1000, 1000), (20, 201_600)] + ([(4000, 100_000)] if dev == "cuda" else []):  # last: 1.6 GB out
        x, y = to(boxes(g, n)), to(boxes(g, m))
        extra = None
        if dev == "cuda":
            tk = timed(partial(K.box_iou, x, y), dev, a.iters)
            moved = (n + m) * 16 + n * m * 4
            props = torch.cuda.get_device_properties(0)
            big = torch.empty(1024 * 2**20, dtype=torch.uint8, device=dev).random_()
            t_copy = timed(big.clone, dev, a.iters)
            copy_bw = 2 * big.numel() / t_copy  # measured DRAM ceiling: bytes read + written
            extra = {"GB/s": moved / tk / 1e9, "copy_GB/s": copy_bw / 1e9, "of_copy_bw_%": 100 * moved / tk / copy_bw}
            clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
            if clock and bus:  # datasheet-style peak (DDR: 2 transfers per clock)
                extra["roofline_%"] = 100 * moved / tk / (2 * clock * 1e3 * bus / 8)
        bench(
            "BoxIou",
            f"{n}x{m} fp32",
            partial(K.box_iou, x, y),
            partial(torchvision.ops.box_iou, x, y),
            "torchvision.ops.box_iou",
            extra,
        )

    # PreNmsSelect: P2-sized level
    A = 201_600
    anchors = to(R["anchor_grid"](torch.zeros(1, 1, 200, 336), torch.zeros(1, 3, 800, 1344), (32.0,), (0.5, 1.0, 2.0)))
    for B, k in [(1, 1000), (1, 2000), (2, 2000)]:
        obj, dl = to(torch.randn(B, A, generator=g)), to(torch.randn(B, A, 4, generator=g) * 0.3)
        hw = to(torch.tensor([[800, 1333]] * B))
        bench(
            "PreNmsSelect",
            f"B={B} A={A} top_k={k}",
            partial(K.pre_nms_select, anchors, obj, dl, hw, k, 1e-3),
            partial(R["pre_nms_select"], anchors, obj, dl, hw, k, 1e-3),
            "mrcnn.ops (topk+decode+clip)",
        )

    # BoxNms: RPN (5 levels as classes, 5000 boxes), RoI heads (multi-class after the score threshold)
    for B, N, C, thr, max_out, iou in [
        (1, 5000, 5, float("-inf"), 1000, 0.7),
        (2, 5000, 5, float("-inf"), 1000, 0.7),
        (1, 4000, 1, float("-inf"), 1000, 0.7),
        (1, 8000, 80, 0.05, 100, 0.5),
    ]:
        bx, sc, cl, va = (to(t) for t in clustered(g, B, N, C))
        bench(
            "BoxNms",
            f"B={B} N={N} classes={C} max={max_out}",
            partial(K.box_nms, bx, sc, cl, va, iou, thr, max_out),
            partial(R["box_nms"], bx, sc, cl, va, iou, thr, max_out),
            "batched_nms + packing",
        )
        if B == 1 and C == 1:
            bench(
                "BoxNms",
                f"B=1 N={N} single class (vs nms)",
                partial(K.box_nms, bx, sc, cl, va, iou, thr, max_out),
                partial(torchvision.ops.nms, bx[0], sc[0], iou),
                "torchvision.ops.nms (no pack)",
            )

    # MatchProposals: 20 ground truths x P2 anchors
    iou = K.box_iou(to(boxes(g, 20)), anchors)
    bench(
        "MatchProposals",
        "G=20 P=201600 low-quality",
        lambda: K.match_proposals(iou, 0.7, 0.3, True),
        lambda: R["match_proposals"](iou, 0.7, 0.3, True),
        "mrcnn.ops (torch)",
    )

    # RoIAlign (CPU training kernel): the box head's 1024 RoIs on P2 of a 2 x 512 x 512 batch, forward and
    # forward + backward, against torchvision's (single-threaded) CPU kernels; both at the same thread count
    if dev == "cpu":
        feat = torch.randn(2, 256, 128, 128, generator=g)
        xy, wh = torch.rand(1024, 2, generator=g) * 400, 16 + torch.rand(1024, 2, generator=g) * 100
        rois = torch.cat([torch.randint(0, 2, (1024, 1), generator=g).float(), xy, xy + wh], 1)
        grad = torch.randn(1024, 256, 7, 7, generator=g)
        fg = feat.clone().requires_grad_()

        def fwd_bwd(fn):
            fg.grad = None
            fn(fg, rois, 7, 0.25, 2, False).backward(grad)

        bench(
            "RoIAlign",
            "fwd R=1024 C=256 7x7 on 128x128",
            lambda: K.roi_align(feat, rois, 7, 0.25, 2, False),
            lambda: torchvision.ops.roi_align(feat, rois, 7, 0.25, 2, False),
            "torchvision.ops.roi_align",
        )
        bench(
            "RoIAlign",
            "fwd+bwd R=1024 C=256 7x7 on 128x128",
            lambda: fwd_bwd(K.roi_align),
            lambda: fwd_bwd(torchvision.ops.roi_align),
            "torchvision.ops.roi_align",
        )

    # Multi-level RoIAlign (training): the box head's 512 RoIs per image on an FPN (P2-P5) of 4 x 800 x 800 (CPU:
    # 2 x 512 x 512), forward + backward, against torchvision's MultiScaleRoIAlign (level mapper, one nonzero and
    # one roi_align per level, reorder). Both run the level mapper; only ours needs no host sync.
    if dev == "cpu" or Ops.from_env().cuda_roi_align:  # CUDA: unless MRCNN_CUDA_ROI_ALIGN=0
        from mrcnn.model.roi_heads import map_levels

        B, side = (4, 800) if dev == "cuda" else (2, 512)
        names = ["0", "1", "2", "3"]
        pyramid = [torch.randn(B, 256, side // s, side // s, generator=g).to(dev) for s in (4, 8, 16, 32)]
        per_image = [to(boxes(g, 512, scale=side * 0.8)) for _ in range(B)]
        rois = torch.cat(
            [torch.cat([torch.full((512, 1), float(i), device=dev), b], 1) for i, b in enumerate(per_image)]
        )
        grad = torch.randn(B * 512, 256, 7, 7, generator=g).to(dev)
        pooler = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
        leaves = [f.clone().requires_grad_() for f in pyramid]
        scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]

        def ours_ml():
            for f in leaves:
                f.grad = None
            K.multilevel_roi_align(leaves, rois, map_levels(rois[:, 1:], 2, 5), scales, 7, 2, False).backward(grad)

        def peer_ml():
            for f in leaves:
                f.grad = None
            pooler(dict(zip(names, leaves, strict=True)), per_image, [(side, side)] * B).backward(grad)

        with torch.no_grad():
            diff = (
                (
                    K.multilevel_roi_align(pyramid, rois, map_levels(rois[:, 1:], 2, 5), scales, 7, 2, False)
                    - pooler(dict(zip(names, pyramid, strict=True)), per_image, [(side, side)] * B)
                )
                .abs()
                .max()
            )
        assert diff <= 1e-4, f"multi-level RoIAlign differs from torchvision's MultiScaleRoIAlign by {diff}"
        bench(
            "RoIAlign",
            f"multi-level fwd+bwd B={B} R={B * 512} C=256 7x7 on P2-P5 of {side}x{side}",
            ours_ml,
            peer_ml,
            "torchvision MultiScaleRoIAlign",
        )

    # RoIAlign backward (goal: half the NCHW kernel's time): the box head's 2,048 RoIs x 256 channels on P2-P5 of a
    # 4 x 800 x 1344 batch, the NHWC kernel (gradients channels-last, a warp's atomics on one line) against the NCHW
    # one; the NHWC result is checked against the NCHW one first
    if dev == "cuda":
        from mrcnn.model.roi_heads import map_levels

        B, (H, W) = 4, (800, 1344)
        hs, ws = [H // s for s in (4, 8, 16, 32)], [W // s for s in (4, 8, 16, 32)]
        per_image = [to(boxes(g, 512, scale=H * 0.8)) for _ in range(B)]
        rois = torch.cat(
            [torch.cat([torch.full((512, 1), float(i), device=dev), b], 1) for i, b in enumerate(per_image)]
        )
        levels = map_levels(rois[:, 1:], 2, 5)
        grad = torch.randn(B * 512, 256, 7, 7, generator=g).to(dev)
        scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]

        def backward(nhwc: bool):
            return torch.ops.mrcnn.roi_align_backward(grad, rois, levels, scales, 7, 7, B, hs, ws, 2, False, nhwc)

        worst = max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            for a, b in zip(backward(True), backward(False), strict=True)
        )
        assert worst <= 1e-5, f"NHWC RoIAlign backward differs from the NCHW one by {worst:.2e} (relative)"
        bench(
            "RoIAlign",
            f"backward NHWC B={B} R={B * 512} C=256 7x7 on P2-P5 of {H}x{W}",
            lambda: backward(True),
            lambda: backward(False),
            "ours NCHW backward",
        )

    print(f"device {dev}; torch threads {torch.get_num_threads()}; {K.build_info()}")
    if not a.no_save:
        p = save("kernels", {"machine": machine(dev), "args": vars(a), "results": rows}, a.json)
        print(f"saved {p}")


if __name__ == "__main__":
    main()
