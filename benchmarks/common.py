"""Shared bits of the benchmark scripts: machine description and dated JSON results."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

# the timing core, shared with `mrcnn bench`
from mrcnn.deploy.bench import ratio_interval, timed_interleaved  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str) -> dict:
    d = {
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    try:  # the CPU model and its vector extensions: float rounding (and so a long chaotic training run) follows them
        info = Path("/proc/cpuinfo").read_text()
        d["cpu_model"] = next(
            (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), ""
        )
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
        head = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here
            ).stdout.strip()
            or "unknown"
        )
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+uncommitted" if changed else "")  # a result must say when it came from an edited tree


def save(name: str, payload: dict, out: str | None = None) -> Path:
    payload = {"benchmark": name, "date": datetime.date.today().isoformat(), "commit": commit(), **payload}
    path = Path(out) if out else RESULTS / f"{name}-{payload['machine']['device'].split(':')[0]}-{payload['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
