"""`--device` and `--threads` as every command takes them."""

from __future__ import annotations

import torch

from mrcnn.errors import MrcnnError


def parse_device(device: str) -> torch.device:
    """`--device` of train / eval / predict: cpu, cuda, cuda:N (a GPU torch sees), or one MrcnnError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise MrcnnError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise MrcnnError(f"--device {device}: no CUDA GPU visible to torch (torch {torch.__version__})")
        if dev.index is not None and dev.index >= n:
            raise MrcnnError(f"--device {device}: torch sees {n} GPU(s) (cuda:0..cuda:{n - 1})")
    elif dev.type != "cpu":
        raise MrcnnError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    return dev


MAX_THREADS = 1024  # more CPU threads than any host has cores; 100,000 used to exhaust the address space


def check_threads(threads: int) -> int:
    """`--threads` of bench / serve: 0 (the runtime's default) .. MAX_THREADS, or one MrcnnError."""
    if not 0 <= threads <= MAX_THREADS:
        raise MrcnnError(f"--threads must be in 0..{MAX_THREADS} (0: the runtime's default), got {threads}")
    return threads
