"""ONNX Runtime (CPU) latency of the exported graph vs our PyTorch eager model: same weights, same padded input,
same thread count, same run. Prints the p50 latency of each (interleaved rounds, so that load from other processes
hits all alike) and the ratio eager / ORT for both flavours (`trt`: mrcnn custom ops as ORT Python ops on the C++
kernels; `portable`: standard ONNX ops only). Goal: ORT >= 1.5x faster than eager on CPU.

  python benchmarks/ort_latency.py                                   # shapes-tiny 256 px + r50-fpn 512 px
  python benchmarks/ort_latency.py --model r50-fpn:800x1216 --iters 5 --threads 1

Timed: the network forward only (images [B,3,H,W] + image_sizes -> fixed-size outputs); resize/paste are the same
Python code for both and excluded. Random weights (seeded). Eager runs under torch.inference_mode with the
pure-torch reference ops ("eager") and, where the native library is built, with the C++ kernels ("eager_kernels").
ORT idle threads sleep instead of spinning (they would steal the cores torch runs on). On a machine shared with
other jobs, torch's OpenMP barriers suffer more from oversubscription than ORT: compare runs with --threads 1 too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from common import machine, save, timed_interleaved


def _interleaved(runners: dict, warmup: int, iters: int) -> dict:
    """Round-robin timing (_common.timed_interleaved: one call of each runner per round, so that load from other
    processes on a shared machine hits every runner alike); statistics per runner."""
    ts, _ = timed_interleaved(runners, iters, warmup, "cpu")
    return {
        k: {
            "mean_ms": 1e3 * statistics.fmean(v),
            "p50_ms": 1e3 * statistics.median(v),
            "min_ms": 1e3 * min(v),
            "iters": iters,
        }
        for k, v in ts.items()
    }


def bench_model(spec: str, batch: int, threads: int, warmup: int, iters: int, flavours: list[str], tmp: Path) -> dict:
    import onnx

    from mrcnn import native as kernels
    from mrcnn.config import get_config
    from mrcnn.deploy.ort_predictor import ort_session
    from mrcnn.export import export_model
    from mrcnn.model import build_model
    from mrcnn.ops import Ops

    name, _, size = spec.partition(":")
    h, w = (int(v) for v in (size or "256x256").split("x"))
    torch.manual_seed(0)
    cfg = get_config(name)
    model = build_model(cfg.model).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, h, w, generator=g)
    sizes = torch.tensor([[h, w]] * batch)
    torch.set_num_threads(threads)

    def eager(backend: str):
        def run():
            with torch.inference_mode(), model.using_ops(Ops(backend=backend)):
                model(images, sizes)

        return run

    runners = {"eager": eager("reference")}
    if kernels.available():
        runners["eager_kernels"] = eager("native")
    names = [f"c{i}" for i in range(1, cfg.model.num_classes)]
    feeds = {"images": images.numpy(), "image_sizes": sizes.numpy()}
    for flavour in flavours:
        path = tmp / f"{name}-{flavour}.onnx"
        export_model(model, cfg, names, path, flavour=flavour, log=lambda m: None)
        sess = ort_session(onnx.load(str(path)), ["CPUExecutionProvider"], threads, spin=False)
        runners[f"ort_{flavour}"] = (lambda s: lambda: s.run(None, feeds))(sess)
    row = {"model": name, "input": [batch, 3, h, w], "threads": threads}
    row.update(_interleaved(runners, warmup, iters))
    line = f"{name} {batch}x3x{h}x{w}: eager (reference ops) p50 {row['eager']['p50_ms']:.1f} ms"
    if "eager_kernels" in row:
        line += f", eager (C++ kernels) {row['eager_kernels']['p50_ms']:.1f} ms"
    print(line, flush=True)
    for flavour in flavours:
        r = row[f"ort_{flavour}"]
        r["speedup_vs_eager"] = row["eager"]["p50_ms"] / r["p50_ms"]
        extra = ""
        if "eager_kernels" in row:
            r["speedup_vs_eager_kernels"] = row["eager_kernels"]["p50_ms"] / r["p50_ms"]
            extra = f", eager(C++ kernels)/ORT = {r['speedup_vs_eager_kernels']:.2f}x"
        print(
            f"  ORT {flavour:8s} p50 {r['p50_ms']:.1f} ms  -> eager/ORT = {r['speedup_vs_eager']:.2f}x{extra}",
            flush=True,
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        action="append",
        default=None,
        help="config[:HxW] (repeatable; default shapes-tiny:256x256 and r50-fpn:512x512)",
    )
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--flavours", nargs="+", default=["trt", "portable"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    specs = a.model or ["shapes-tiny:256x256", "r50-fpn:512x512"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            rows.append(bench_model(spec, a.batch, a.threads, a.warmup, a.iters, a.flavours, Path(tmp)))
    import onnxruntime

    print("\np50 latency, ms (speed-up of ORT vs eager with reference ops, vs eager with the C++ kernels)")
    print("model        input            eager (C++ kernels)   " + "   ".join(f"ORT {t:24s}" for t in a.flavours))
    for r in rows:
        ek = r.get("eager_kernels", {}).get("p50_ms", float("nan"))
        cells = "   ".join(
            f"{r[f'ort_{t}']['p50_ms']:9.1f} ({r[f'ort_{t}']['speedup_vs_eager']:.2f}x, "
            f"{r[f'ort_{t}'].get('speedup_vs_eager_kernels', float('nan')):.2f}x)"
            for t in a.flavours
        )
        shape = "x".join(map(str, r["input"]))
        print(f"{r['model']:12s} {shape:16s} {r['eager']['p50_ms']:9.1f} ({ek:7.1f})   {cells}")
    if not a.no_save:
        m = machine("cpu")
        m["onnxruntime"] = onnxruntime.__version__
        p = save("ort_latency", {"machine": m, "goal": "ORT >= 1.5x faster than eager (CPU)", "rows": rows}, a.json)
        print(f"saved {p}")


if __name__ == "__main__":
    main()
