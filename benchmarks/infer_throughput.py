"""Inference end to end, ours against torchvision's eager Mask R-CNN: the same (converted) R-50-FPN weights, a real
photograph at the default 800/1333 sizes, resize + network + masks pasted, calls interleaved round by round.

  python benchmarks/infer_throughput.py [--iters 7] [--warmup 1] [--threads 2] [--photo motorcycle_left.png] [--ort]
  python benchmarks/infer_throughput.py --device cuda --batch 8 --amp bf16 --iters 30     (gpu_session.sh `infer`)

Rows: torchvision eager; ours plain (the PyTorch predictor as it was); ours with the inference levers
(`Predictor(optimize=True)`: BatchNorms folded, channels-last, masks of the detections only, the native RoIAlign),
which `mrcnn predict`, `eval`, `validate` and `bench` use for checkpoints; the same in bfloat16 (`--precision bf16`)
on CPUs with AVX512-BF16 or AMX; with `--ort` the portable ONNX export on ONNX Runtime. Each row:
median and p90 seconds and torchvision's median / its median with a 95% bootstrap interval over the paired rounds.
The FLOP floor row: the network's FLOPs at the padded input (torch's FlopCounterMode on our model) divided by the
3x3-convolution rate this host reaches with the same threads. Goals: ours >= 1.5x torchvision; the
fastest path <= 2x the floor; bf16 >= 1.6x our fp32. On CUDA (CUDA events): batch 1 or 8, autocast bf16 / fp16 for
both models, and "ours CUDA graph": the network captured once for the input shape and replayed, postprocess after
(a capture that fails is reported, with its reason, instead of the row). The GPU rows have not run yet.

Weights: torchvision's architecture with random weights made well conditioned (tests/helpers.py `tame`: calibrated
frozen BatchNorm, damped residual branches, a decisive classifier) and seed 1: about 100 detections per photograph,
so the mask head and the pasting work as much as on a busy real image. Photographs: scikit-image's.
"""

from __future__ import annotations

import argparse
import math
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


def photo_path(name: str) -> Path | None:
    """The file of a scikit-image photograph, or None without scikit-image (the GPU image)."""
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(skimage.data.__file__).parent / name


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as [3,H,W] uint8; without scikit-image (the GPU image) a synthetic shapes image of
    the same size as motorcycle_left.png (500 x 741)."""
    from mrcnn.deploy.predict import read_image

    path = photo_path(name)
    if path is None:
        from helpers import synthetic, u8

        print("scikit-image is not installed: a synthetic 500x741 image instead of the photograph")
        return u8(synthetic(500, 741, 3))
    return read_image(path)


def _cuda_graph_runner(pred, images: list[torch.Tensor], amp):
    """Ours with the network captured once as a CUDA graph for this input shape (resize and padding done once, as a
    serving pipeline with fixed-size inputs does) and replayed; postprocess (boxes to the image, masks pasted) after
    each replay. None and the reason where capture fails (an op that syncs with the host)."""
    from mrcnn.errors import first_line
    from mrcnn.model.preprocess import postprocess_detections

    pred.model.roi_heads.native_roi_align = True  # no host sync (torchvision's per-level split has one); all 100
    pred.model.roi_heads.masks_of_detections_only = False  # mask slots: the count stays on the device
    batch, sizes, originals = pred.prepare(images)
    static_in, static_sizes = batch.clone(), sizes.to(pred.device)
    model = pred.model
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode(), amp():
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
                model(static_in, static_sizes)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode(), amp():
            static_out = model(static_in, static_sizes)
    except Exception as e:
        return None, first_line(e)

    def run():
        graph.replay()
        return postprocess_detections(static_out, sizes, originals, paste=pred.paste)

    return run, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--batch", type=int, default=1, help="images per call (copies of the photograph)")
    ap.add_argument(
        "--amp",
        default="none",
        choices=["none", "bf16", "fp16"],
        help="cuda: autocast for torchvision and ours (and the graph)",
    )
    ap.add_argument("--photo", default="motorcycle_left.png", help="one of scikit-image's photographs")
    ap.add_argument("--ort", action="store_true", help="also the portable ONNX export on ONNX Runtime")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import contextlib

    from helpers import tame
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from mrcnn.deploy import load_artifact
    from mrcnn.model.convert import convert_torchvision
    from mrcnn.model.inference import cpu_has_bf16

    cuda = args.device.startswith("cuda")
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    tame(tv)
    tv.eval().to(args.device)
    image = photo(args.photo)
    images = [image] * args.batch
    images_dev = [im.to(args.device) for im in images]
    scratch = tempfile.TemporaryDirectory(prefix="mrcnn-infer-")  # two 170 MB checkpoints: removed when main ends
    tmp = Path(scratch.name)
    torch.save({"model": tv.state_dict()}, tmp / "tv.pth")
    convert_torchvision(str(tmp / "tv.pth"), str(tmp / "ours.pt"))
    quiet = lambda m: None  # noqa: E731
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    def amp():
        return torch.autocast("cuda", dtype=dtype) if cuda and dtype else contextlib.nullcontext()

    def under_amp(fn):
        def run():
            with amp():
                return fn()

        return run

    plain = load_artifact(tmp / "ours.pt", args.device, log=quiet, optimize=False)
    fast = load_artifact(tmp / "ours.pt", args.device, log=quiet)
    runners = {
        "torchvision eager": under_amp(lambda: tv([im.float() / 255 for im in images_dev])),
        "ours plain": under_amp(lambda: plain(images_dev)),
        "ours optimized": under_amp(lambda: fast(images_dev)),
    }
    notes = {}
    if not cuda and cpu_has_bf16():  # the networks in bfloat16 where the CPU runs it natively
        bf16 = load_artifact(tmp / "ours.pt", "cpu", log=quiet, precision="bf16")
        runners["ours optimized bf16"] = lambda: bf16(images_dev)
    if cuda:
        graph_pred = load_artifact(tmp / "ours.pt", args.device, log=quiet, optimize=False)
        graphed, why = _cuda_graph_runner(graph_pred, images_dev, amp)
        if graphed is not None:
            runners["ours CUDA graph"] = graphed
        else:
            notes["ours CUDA graph"] = f"not captured: {why}"
            print(notes["ours CUDA graph"])
    if args.ort:
        from mrcnn.export import export_checkpoint

        export_checkpoint(tmp / "ours.pt", tmp / "ours.onnx", flavour="portable", log=quiet)
        ort = load_artifact(tmp / "ours.onnx", args.device, log=quiet)
        runners["ours ONNX Runtime (portable)"] = lambda: ort(images)
    counts = {}
    with torch.inference_mode():
        for name, run in runners.items():
            counts[name] = len(run()[0]["scores"])
        times, _ = timed_interleaved(
            {k: (lambda r=r: torch.inference_mode()(r)()) for k, r in runners.items()},
            args.iters,
            args.warmup,
            args.device,
        )
    ph, pw = (int(d) for d in plain.prepare([image])[0].shape[-2:])  # the padded input the network sees
    floor = None
    if not cuda:
        flops = network_flops(plain.model, ph, pw) * args.batch
        rate = conv_rate(args.threads)
        floor = flops / (rate * 1e9)
    peer = times["torchvision eager"]
    rows = {}
    for name, ts in times.items():
        lo, hi = ratio_interval(peer, ts)
        med = statistics.median(ts)
        p90 = sorted(ts)[max(0, math.ceil(0.9 * len(ts)) - 1)]
        rows[name] = {
            "median_s": med,
            "p90_s": p90,
            "detections": counts[name],
            "images_per_s": args.batch / med,
            "speedup_vs_torchvision": statistics.median(peer) / med,
            "speedup_95ci": [lo, hi],
            "times_floor": med / floor if floor else None,
        }
    amp_text = f", autocast {args.amp}" if cuda and dtype else ""
    print(
        f"{args.photo} {tuple(image.shape[1:])} -> padded {ph}x{pw}, batch {args.batch}, {args.device}{amp_text}, "
        f"{args.threads} threads, {args.iters} rounds"
    )
    print(f"{'':32s} {'median s':>9s} {'p90 s':>8s} {'img/s':>7s} {'vs torchvision':>22s} {'x floor':>8s} {'dets':>5s}")
    for name, r in rows.items():
        ci = f"{r['speedup_vs_torchvision']:.2f}x [{r['speedup_95ci'][0]:.2f}, {r['speedup_95ci'][1]:.2f}]"
        xf = f"{r['times_floor']:8.2f}" if r["times_floor"] else f"{'':8s}"
        print(
            f"{name:32s} {r['median_s']:9.4f} {r['p90_s']:8.4f} {r['images_per_s']:7.1f} {ci:>22s} {xf} "
            f"{r['detections']:5d}"
        )
    payload = {
        "photo": args.photo,
        "image": list(image.shape[1:]),
        "padded": [ph, pw],
        "batch": args.batch,
        "device": args.device,
        "amp": args.amp,
        "threads": args.threads,
        "iters": args.iters,
        "rows": rows,
        "notes": notes,
        "machine": machine(args.device),
    }
    if floor:
        print(
            f"{'FLOP floor':32s} {floor:9.3f}   ({flops / 1e9:.1f} GFLOP at {rate:.1f} GFLOP/s, 3x3 conv, "
            f"{args.threads} threads)"
        )
        fastest = min((k for k in rows if k != "torchvision eager"), key=lambda k: rows[k]["median_s"])
        payload["floor"] = {"gflop": flops / 1e9, "conv_gflops": rate, "seconds": floor}
        payload["goals"] = {
            "ours_vs_torchvision_ge_1.5": rows["ours optimized"]["speedup_vs_torchvision"] >= 1.5,
            "fastest": fastest,
            "fastest_le_2x_floor": rows[fastest]["times_floor"] <= 2.0,
        }
        payload["bf16_vs_fp32"] = (
            rows["ours optimized"]["median_s"] / rows["ours optimized bf16"]["median_s"]
            if "ours optimized bf16" in rows
            else "not measured: no AVX512-BF16 / AMX here"
        )
        print(f"goals: {payload['goals']}; bf16 / fp32 speed-up: {payload['bf16_vs_fp32']}")
    name = "infer_throughput" if not cuda else f"infer_throughput-b{args.batch}-{args.amp}"
    print(f"-> {save(name, payload, args.out)}")


if __name__ == "__main__":
    main()
