"""Shared fixtures: a tiny synthetic dataset generated once per session, tiny training configs."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
import torch

# Bounded CPU use: the cores shared among pytest-xdist's workers (scripts/test.sh runs -n 2 on the 2-core CI
# machine: one thread each), at most 2 threads for a serial run.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from mrcnn.data.synth import generate_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(out, n_train=12, n_val=4, size=128, seed=3)
    return out


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")


def on_devices(*devices: str) -> list:
    """pytest params for a device argument: 'cuda' is marked `cuda` and skips with a reason without a GPU."""
    return [pytest.param(d, marks=[pytest.mark.cuda, needs_cuda]) if d == "cuda" else d for d in devices]


@contextlib.contextmanager
def fp32_exact_cuda():
    """CUDA convolutions and matmuls in true float32 (no TF32) inside the block, restored afterwards: peers compared
    at float32 tolerances must not differ by TF32 rounding (about 1e-3 relative)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def tiny_config(**solver):
    """shapes-tiny at 128 px: a few training steps take about a second on 2 cores."""
    from mrcnn.config import get_config

    cfg = get_config("shapes-tiny")
    cfg.input.min_size = 128
    cfg.input.max_size = 128
    cfg.solver.batch = 2
    cfg.solver.max_iter = 3
    cfg.solver.warmup_iters = 1
    for k, v in solver.items():
        setattr(cfg.solver, k, v)
    return cfg


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None):
    """Run `python -m mrcnn ARGS` in a subprocess (cwd outside the checkout, so the installed package is used)."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "mrcnn", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e)


def max_rel_diff(sd_a: dict, sd_b: dict) -> tuple[float, str]:
    """Relative difference of two state dicts: ||a - b|| / ||b|| over all floating-point parameters together.
    Also returns the key whose tensor contributes most to ||a - b||."""
    assert sd_a.keys() == sd_b.keys()
    num = den = 0.0
    worst, key = -1.0, ""
    for k in sd_a:
        a, b = sd_a[k], sd_b[k]
        if not a.is_floating_point() or a.numel() == 0:
            continue
        d = float(((a.double() - b.double()) ** 2).sum())
        num += d
        den += float((b.double() ** 2).sum())
        if d > worst:
            worst, key = d, k
    return (num ** 0.5) / max(den ** 0.5, 1e-30), key


def one_error_line(result) -> str:
    """A CliRunner result that failed the project way: exit 1, one `error: ...` line on stderr, no traceback."""
    err = result.stderr.strip()
    assert result.exit_code == 1, (result.exit_code, result.stdout, err)
    assert "Traceback" not in err + result.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err
