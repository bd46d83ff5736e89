"""`--device` as every command takes it."""

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
