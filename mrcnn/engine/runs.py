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


def resume_settings(out_dir: str | Path, config: str | None, overrides: list[str], data: str | Path | None):
    """(config, dataset) for `mrcnn train --resume`: without --config the run's own config from its last.pt (the
    `--set` overrides and explicit options apply on top), without --data the dataset it was trained on, so that
    `mrcnn train --resume --out RUN` alone continues a run, as a stopped run's last line says."""
    from mrcnn.config import Config, get_config
    from mrcnn.engine.checkpoint import load_checkpoint

    last = Path(out_dir) / "last.pt"
    if config is not None and data is not None:
        return get_config(config, overrides), data
    if not last.exists():
        raise MrcnnError(f"--resume: no checkpoint at {last}")
    ck = load_checkpoint(last)
    cfg = get_config(config, overrides) if config is not None else Config.from_dict(ck["config"]).override(
        overrides).validate()
    if data is None:
        data = ck.get("data")
        if not data:
            raise MrcnnError(f"--resume: {last} does not say which dataset it was trained on; pass --data")
    return cfg, data
