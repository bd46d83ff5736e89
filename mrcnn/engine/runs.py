"""Default output folders, as Ultralytics' runs/TASK/exp, exp2, ...: a command without --out never writes over an
earlier run's files."""
from __future__ import annotations

import os
from pathlib import Path

from mrcnn.errors import MrcnnError

ROOT = Path("runs")


def _name(n: int) -> str:
    return "exp" if n == 1 else f"exp{n}"


def next_run_dir(task: str, root: str | Path = ROOT) -> Path:
    """The first free ROOT/TASK/exp{N}."""
    base = Path(root) / task
    n = 1
    while (base / _name(n)).exists():
        n += 1
    return base / _name(n)


def default_run_dir(resume: bool, root: str | Path = ROOT) -> Path:
    """`mrcnn train` without --out: a new run takes the next runs/train/exp{N}; --resume the run whose last.pt is
    newest. Under torchrun every rank must name the same folder, which only --out guarantees."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MrcnnError("under torchrun give --out: every rank must name the same run folder")
    base = Path(root) / "train"
    if resume:
        runs = [p.parent for p in base.glob("exp*/last.pt")]
        if not runs:
            raise MrcnnError(f"--resume: no run with a last.pt under {base}; pass --out")
        return max(runs, key=lambda p: (p / "last.pt").stat().st_mtime)
    return next_run_dir("train", root)
