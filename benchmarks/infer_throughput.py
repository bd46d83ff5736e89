"""Inference end to end, ours against torchvision's eager Mask R-CNN: the same (converted) R-50-FPN weights, a real
photograph at the default 800/1333 sizes, resize + network + masks pasted, calls interleaved round by round.

  python benchmarks/infer_throughput.py [--iters 7] [--warmup 1] [--threads 2] [--photo motorcycle_left.png] [--ort]

Rows: torchvision eager; ours plain (the PyTorch predictor as it was); ours with the inference levers
(`Predictor(optimize=True)`: BatchNorms folded, channels-last, masks of the detections only), which `mrcnn predict`,
`eval`, `validate` and `bench` use for checkpoints; with `--ort` the portable ONNX export on ONNX Runtime. Each row:
median and p90 seconds and torchvision's median / its median with a 95% bootstrap interval over the paired rounds.
The FLOP floor row: the network's FLOPs at the padded input (torch's FlopCounterMode on our model) divided by the
3x3-convolution rate this host reaches with the same threads. Goals (issue 24): ours >= 1.5x torchvision; the
fastest path <= 2x the floor.

Weights: torchvision's architecture with random weights made well conditioned (tests/helpers.py `tame`: calibrated
frozen BatchNorm, damped residual branches, a decisive classifier) and seed 1: about 100 detections per photograph,
so the mask head and the pasting work as much as on a busy real image. Photographs: scikit-image's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, ratio_interval, save, timed_interleaved

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.tame: the equivalence tests' weights


def conv_rate(threads: int, reps: int = 5) -> float:
    """GFLOP/s of a 3x3 256->256 convolution on a 200x304 map (FPN / mask-head sized), float32, channels-last."""
    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, 200, 304).contiguous(memory_format=torch.channels_last)
    flops = 2 * 256 * 256 * 9 * 200 * 304
    with torch.inference_mode():
        conv(x)
        best = min(_timed(lambda: conv(x)) for _ in range(reps))
    return flops / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def network_flops(model, h: int, w: int) -> float:
    """FLOPs of one forward of our model (eval) on a [1,3,h,w] input, counted by torch (convs, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.rand(1, 3, h, w), torch.tensor([[h, w]]))
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photo", default="motorcycle_left.png", help="one of scikit-image's photographs")
    ap.add_argument("--ort", action="store_true", help="also the portable ONNX export on ONNX Runtime")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import skimage.data
    from helpers import tame
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from mrcnn.deploy import load_artifact
    from mrcnn.deploy.predict import read_image
    from mrcnn.model.convert import convert_torchvision
    from mrcnn.model.preprocess import resize_image, to_float_image

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    tame(tv)
    tv.eval()
    image = read_image(Path(skimage.data.__file__).parent / args.photo)
    tmp = Path(tempfile.mkdtemp(prefix="mrcnn-infer-"))
    torch.save({"model": tv.state_dict()}, tmp / "tv.pth")
    convert_torchvision(str(tmp / "tv.pth"), str(tmp / "ours.pt"))
    quiet = lambda m: None  # noqa: E731
    plain = load_artifact(tmp / "ours.pt", "cpu", log=quiet, optimize=False)
    fast = load_artifact(tmp / "ours.pt", "cpu", log=quiet)
    runners = {
        "torchvision eager": lambda: tv([image.float() / 255]),
        "ours plain": lambda: plain([image]),
        "ours optimized": lambda: fast([image]),
    }
    if args.ort:
        from mrcnn.export import export_checkpoint

        export_checkpoint(tmp / "ours.pt", tmp / "ours.onnx", target="portable", log=quiet)
        ort = load_artifact(tmp / "ours.onnx", "cpu", log=quiet)
        runners["ours ONNX Runtime (portable)"] = lambda: ort([image])
    counts = {}
    with torch.inference_mode():
        for name, run in runners.items():
            out = run()[0]
            counts[name] = len(out["scores"])
        times, _ = timed_interleaved({k: (lambda r=r: torch.inference_mode()(r)()) for k, r in runners.items()},
                                     args.iters, args.warmup, "cpu")
    cfg = plain.cfg.input
    resized = resize_image(to_float_image(image), cfg.min_size, cfg.max_size)
    h, w = resized.shape[-2:]
    div = cfg.size_divisible
    ph, pw = -(-h // div) * div, -(-w // div) * div
    flops = network_flops(plain.model, ph, pw)
    rate = conv_rate(args.threads)
    floor = flops / (rate * 1e9)
    peer = times["torchvision eager"]
    rows = {}
    for name, ts in times.items():
        lo, hi = ratio_interval(peer, ts)
        rows[name] = {"median_s": statistics.median(ts), "p90_s": sorted(ts)[int(0.9 * (len(ts) - 1))],
                      "detections": counts[name], "speedup_vs_torchvision": statistics.median(peer) /
                      statistics.median(ts), "speedup_95ci": [lo, hi],
                      "times_floor": statistics.median(ts) / floor}
    print(f"{args.photo} {tuple(image.shape[1:])} -> padded {ph}x{pw}, {args.threads} threads, {args.iters} rounds")
    print(f"{'':32s} {'median s':>9s} {'p90 s':>8s} {'vs torchvision':>22s} {'x floor':>8s} {'dets':>5s}")
    for name, r in rows.items():
        ci = f"{r['speedup_vs_torchvision']:.2f}x [{r['speedup_95ci'][0]:.2f}, {r['speedup_95ci'][1]:.2f}]"
        print(f"{name:32s} {r['median_s']:9.3f} {r['p90_s']:8.3f} {ci:>22s} {r['times_floor']:8.2f} "
              f"{r['detections']:5d}")
    print(f"{'FLOP floor':32s} {floor:9.3f}   ({flops / 1e9:.1f} GFLOP at {rate:.1f} GFLOP/s, 3x3 conv, "
          f"{args.threads} threads)")
    fastest = min(rows, key=lambda k: rows[k]["median_s"] if k != "torchvision eager" else float("inf"))
    payload = {"photo": args.photo, "image": list(image.shape[1:]), "padded": [ph, pw], "threads": args.threads,
               "iters": args.iters, "rows": rows, "floor": {"gflop": flops / 1e9, "conv_gflops": rate,
                                                             "seconds": floor},
               "goals": {"ours_vs_torchvision_ge_1.5": rows["ours optimized"]["speedup_vs_torchvision"] >= 1.5,
                         "fastest": fastest, "fastest_le_2x_floor": rows[fastest]["times_floor"] <= 2.0},
               "machine": machine("cpu")}
    print(f"goals: {payload['goals']}")
    print(f"-> {save('infer_throughput', payload, args.out)}")


if __name__ == "__main__":
    main()
