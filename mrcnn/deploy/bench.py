"""`mrcnn bench ARTIFACT...`: end-to-end latency of artifacts side by side (a .pt on PyTorch, an .onnx on ONNX
Runtime, a .plan on TensorRT), on the same images, in the same process, taking turns call by call, so that whatever
else the machine does falls on all of them alike (what a sequential benchmark of one model after another cannot
give).

A timed call is what a production caller pays: `predictor(images)` on B uint8 images, i.e. resize, the network,
box rescaling and mask pasting (`--no-paste`: the 28x28 masks only). Reported per artifact: mean / p50 / p90 / p99
latency of a call (p99 of 50 calls is close to their maximum), images per second (B / mean), the memory it holds
(on the CPU the resident memory that loading it and its warm-up calls added, where the first artifact also pays the
process's one-time costs, ~40 MB of torch's; on CUDA with PyTorch the peak allocated), and each artifact's p50
speed-up over the first one with a 95% bootstrap interval over the paired rounds.

Also the timing core of `benchmarks/` (timed_interleaved, ratio_interval).
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mrcnn.device import check_threads
from mrcnn.errors import MrcnnError


def timed_interleaved(steps: dict, iters: int, warmup: int, device: str) -> tuple[dict, dict]:
    """Seconds of each step, the models taking turns step by step (machine drift and noise fall on all of them alike;
    on CUDA timed with CUDA events);
    `warmup` untimed steps each first. The process's existing objects are frozen out of the garbage collector so that
    a full collection cannot land in one model's step. On CUDA also, per model, the cudaMalloc calls and allocator
    retries (each retry frees the cache: a device-wide sync) during its timed steps."""
    cuda = device.startswith("cuda")
    for step in steps.values():
        for _ in range(warmup):
            step()
    gc.collect()
    gc.freeze()
    times: dict[str, list[float]] = {k: [] for k in steps}
    allocs: dict[str, list[int]] = {k: [0, 0] for k in steps} if cuda else {}
    try:
        for _ in range(iters):
            for k, step in steps.items():
                if cuda:  # CUDA events on the current stream, from an idle device to the step's last kernel
                    before = _alloc_counts()
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    step()
                    end.record()
                    end.synchronize()
                    times[k].append(start.elapsed_time(end) / 1e3)
                    allocs[k] = [a + (c - b) for a, b, c in zip(allocs[k], before, _alloc_counts(), strict=True)]
                else:
                    t0 = time.perf_counter()
                    step()
                    times[k].append(time.perf_counter() - t0)
    finally:
        gc.unfreeze()
    return times, allocs


def _alloc_counts() -> tuple[int, int]:
    st = torch.cuda.memory_stats()
    return st.get("num_device_alloc", 0), st.get("num_alloc_retries", 0)


def ratio_interval(
    peer: list[float], ours: list[float], level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """Two-sided `level` bootstrap interval of median(peer) / median(ours) (a speed ratio: > 1 means ours is faster).
    The two lists are the per-round times of timed_interleaved, so rounds are resampled as pairs: a round where the
    whole machine was slow stays one round for both. Deterministic for a given seed."""
    if len(peer) != len(ours) or len(peer) < 2:
        raise ValueError("need two equal-length lists of at least 2 paired times")
    rng = random.Random(seed)
    n = len(peer)
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(peer[i] for i in idx) / statistics.median(ours[i] for i in idx))
    ratios.sort()
    lo = ratios[int((1 - level) / 2 * resamples)]
    hi = ratios[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc; elsewhere 0: not reported)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def bench_images(
    data: str | Path | None,
    batch: int,
    size: tuple[int, int],
    split: str = "val2017",
    log: Callable[[str], None] = print,
) -> list[torch.Tensor]:
    """`batch` uint8 images [3,H,W]: the first readable ones of a dataset split, or synthetic shapes of `size`."""
    if data is not None:
        from mrcnn.data.layout import open_split

        ds = open_split(data, split, logger=log)
        images = []
        for i in range(len(ds)):
            img = ds.load_image(i)
            if img is not None:
                images.append(img)
            if len(images) == batch:
                break
        if not images:
            raise MrcnnError(f"{data}: no readable image in the {split} split")
        return [images[i % len(images)] for i in range(batch)]
    from mrcnn.data.synth import render_sample

    out = []
    for i in range(batch):  # the synthetic set's val images, stretched to H x W
        img = torch.from_numpy(render_sample(0, "val2017", i, size=max(size))[0]).permute(2, 0, 1)[None].float()
        img = torch.nn.functional.interpolate(img, size=size, mode="bilinear", align_corners=False)
        out.append(img[0].round().clamp(0, 255).to(torch.uint8).contiguous())
    return out


def bench_artifacts(
    paths: list[str | Path],
    *,
    batch: int = 1,
    size: tuple[int, int] = (480, 640),
    data: str | Path | None = None,
    iters: int = 50,
    warmup: int = 5,
    device: str | None = None,
    threads: int = 0,
    paste: bool = True,
    json_out: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Time each artifact's `predictor(images)` (module docstring); returns {"rows": [...], "batch", "images"},
    also written to `json_out` (checked writable before anything runs)."""
    from mrcnn.deploy import THREADED_SUFFIXES, load_artifact
    from mrcnn.io import check_writable_file, write_json

    if json_out:
        check_writable_file(json_out, "--json")

    if not paths:
        raise MrcnnError("give one or more artifacts (.pt, .onnx, .plan, .xml) to benchmark")
    for name, v, low in (
        ("--batch", batch, 1),
        ("--iters", iters, 2),
        ("--warmup", warmup, 0),
    ):
        if v < low:
            raise MrcnnError(f"{name} must be >= {low}, got {v}")
    check_threads(threads)
    if size[0] < 1 or size[1] < 1:
        raise MrcnnError(f"--size must be HxW with positive sides, got {size[0]}x{size[1]}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    images = bench_images(data, batch, size, log=log)
    cuda = dev.startswith("cuda")
    images_on = [im.to(dev) for im in images] if cuda else images
    names: list[str] = []
    calls: dict[str, Callable] = {}
    rows: dict[str, dict] = {}
    for p in paths:  # loaded and warmed one after another: what each adds to the process is its own
        gc.collect()
        rss0 = _rss_mb()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        kwargs = {"paste": paste}
        if Path(p).suffix.lower() in THREADED_SUFFIXES:
            kwargs.update(threads=threads, spin=False)  # idle ORT threads sleep: they would steal torch's cores
        pred = load_artifact(p, dev, log=log, **kwargs)
        name = str(p) if str(p) not in calls else f"{p} #{len(names) + 1}"
        inputs = images if Path(p).suffix.lower() in THREADED_SUFFIXES else images_on  # (CPU runtimes)

        def call(pred=pred, inputs=inputs):
            with torch.inference_mode():
                return pred(inputs)

        detections = sum(len(r["scores"]) for r in call())
        for _ in range(warmup):
            call()
        row = {"artifact": str(p), "runtime": pred.runtime, "detections_per_call": detections}
        if cuda and Path(p).suffix.lower() not in THREADED_SUFFIXES:
            row["memory_mb"], row["memory"] = torch.cuda.max_memory_allocated() / 2**20, "peak CUDA allocated"
        else:
            row["memory_mb"], row["memory"] = max(0.0, _rss_mb() - rss0), "resident memory added"
        names.append(name)
        calls[name] = call
        rows[name] = row
    log(f"timing {len(names)} artifact(s), {iters} calls each, taking turns; batch {batch}")
    times, _ = timed_interleaved(calls, iters, 0, dev)
    first = names[0]
    for name in names:
        t = np.asarray(times[name]) * 1e3
        r = rows[name]
        r.update(
            mean_ms=float(t.mean()),
            p50_ms=float(np.percentile(t, 50)),
            p90_ms=float(np.percentile(t, 90)),
            p99_ms=float(np.percentile(t, 99)),
            min_ms=float(t.min()),
            img_s=batch / (float(t.mean()) / 1e3),
            iters=iters,
        )
        if name != first:
            r["speedup_vs_first"] = statistics.median(times[first]) / statistics.median(times[name])
            r["speedup_interval"] = list(ratio_interval(times[first], times[name]))
    report = {
        "rows": [rows[n] for n in names],
        "batch": batch,
        "device": dev,
        "threads": torch.get_num_threads(),
        "images": [list(im.shape[-2:]) for im in images],
        "paste": paste,
    }
    if json_out:
        write_json(json_out, report)
    return report


def format_bench(report: dict) -> str:
    rows = report["rows"]
    width = max(8, *(len(Path(r["artifact"]).name) for r in rows))
    lines = [
        f"batch {report['batch']} ({', '.join('x'.join(map(str, s)) for s in report['images'][:3])}"
        f"{', ...' if len(report['images']) > 3 else ''}), {report['device']}, {report['threads']} torch threads",
        f"{'artifact':<{width}}  {'runtime':<22}{'mean':>8}{'p50':>8}{'p90':>8}{'p99':>8} ms{'img/s':>9}"
        f"{'MB':>8}  vs first (95% interval)",
    ]
    for r in rows:
        vs = (
            f"{r['speedup_vs_first']:.2f}x ({r['speedup_interval'][0]:.2f}-{r['speedup_interval'][1]:.2f})"
            if "speedup_vs_first" in r
            else "-"
        )
        lines.append(
            f"{Path(r['artifact']).name:<{width}}  {r['runtime'][:21]:<22}{r['mean_ms']:8.1f}"
            f"{r['p50_ms']:8.1f}{r['p90_ms']:8.1f}{r['p99_ms']:8.1f}   {r['img_s']:9.1f}"
            f"{r['memory_mb']:8.0f}  {vs}"
        )
    kinds = sorted({r["memory"] for r in rows})
    lines.append(
        "MB: "
        + "; ".join(f"{k} ({', '.join(Path(r['artifact']).name for r in rows if r['memory'] == k)})" for k in kinds)
        if len(kinds) > 1
        else f"MB: {kinds[0]}"
    )
    return "\n".join(lines)
