"""Shared bits of the benchmark scripts: machine description and dated JSON results."""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str) -> dict:
    d = {"device": device, "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
         "platform": platform.platform(), "torch": torch.__version__}
    try:  # the CPU model and its vector extensions: float rounding (and so a long chaotic training run) follows them
        info = Path("/proc/cpuinfo").read_text()
        d["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                               if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
        d["cpu_vector"] = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name(0)
    return d


def commit() -> str:
    if os.environ.get("MRCNN_COMMIT"):  # a copy of the tree without .git (the GPU machine)
        return os.environ["MRCNN_COMMIT"]
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=here).stdout.strip() or "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, cwd=here).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+uncommitted" if changed else "")  # a result must say when it came from an edited tree


def save(name: str, payload: dict, out: str | None = None) -> Path:
    payload = {"benchmark": name, "date": datetime.date.today().isoformat(), "commit": commit(), **payload}
    path = Path(out) if out else RESULTS / f"{name}-{payload['machine']['device'].split(':')[0]}-{payload['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def timed_interleaved(steps: dict, iters: int, warmup: int, device: str) -> tuple[dict, dict]:
    """Seconds of each step, the models taking turns step by step (machine drift and noise fall on all of them alike);
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
    for _ in range(iters):
        for k, step in steps.items():
            if cuda:
                before = _alloc_counts()
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
            if cuda:
                allocs[k] = [a + (c - b) for a, b, c in zip(allocs[k], before, _alloc_counts())]
    gc.unfreeze()
    return times, allocs


def _alloc_counts() -> tuple[int, int]:
    st = torch.cuda.memory_stats()
    return st.get("num_device_alloc", 0), st.get("num_alloc_retries", 0)


def ratio_interval(peer: list[float], ours: list[float], level: float = 0.95, resamples: int = 4000,
                   seed: int = 0) -> tuple[float, float]:
    """Two-sided `level` bootstrap interval of median(peer) / median(ours) (a speed ratio: > 1 means ours is faster).
    The two lists are the per-round times of timed_interleaved, so rounds are resampled as pairs: a round where the
    whole machine was slow stays one round for both. Deterministic for a given seed."""
    import random
    import statistics

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
