"""Run folders of `mrcnn train`: the default one (runs/train/exp{N}, or with --resume the newest), and what
--resume takes from a run's last.pt."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mrcnn.errors import MrcnnError
from mrcnn.io import ROOT, atomic_write, next_run_dir

RUN_FILES = ("last.pt", "model_final.pt", "model_best.pt", "metrics.jsonl")


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
    from mrcnn.model.checkpoint import load_checkpoint

    last = Path(out_dir) / "last.pt"
    if config is not None and data is not None:
        return get_config(config, overrides), data
    if not last.exists():
        raise MrcnnError(f"--resume: no checkpoint at {last}")
    ck = load_checkpoint(last)
    cfg = (
        get_config(config, overrides)
        if config is not None
        else Config.from_dict(ck["config"]).override(overrides).validate()
    )
    if data is None:
        data = ck.get("data")
        if not data:
            raise MrcnnError(f"--resume: {last} does not say which dataset it was trained on; pass --data")
    return cfg, data


def check_run_folder(out_dir: Path, resume: bool, overwrite: bool) -> list[Path]:
    """A new run never lands on an old one's checkpoints and metrics unless asked to (`--overwrite`); returns the
    old run's files to remove once the new run is set up (so a failing start leaves them as they were)."""
    if resume and overwrite:
        raise MrcnnError("--resume continues the run in --out, --overwrite starts it over: choose one")
    if resume or not out_dir.is_dir():
        return []
    held = [out_dir / n for n in RUN_FILES if (out_dir / n).exists()]
    if held and not overwrite:
        raise MrcnnError(
            f"{out_dir} already holds a training run ({', '.join(p.name for p in held)}); --resume "
            "continues it, --overwrite starts over in it, or choose another --out"
        )
    return held


def keep_metrics_until(path: Path, iteration: int) -> None:
    """On resume, drop the metrics rows a killed run wrote after its last checkpoint (they are computed again), so
    that every iteration has one row. Rewritten atomically."""
    if iteration == 0 or not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if int(json.loads(line).get("iter", 0)) <= iteration:
                keep.append(line)
        except (ValueError, AttributeError, TypeError):
            continue  # a line the kill cut short
    if len(keep) != len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{k}\n" for k in keep)))
