"""Checkpoints: one format, written atomically, read with `weights_only=True` (untrusted files stay safe).

Format (a plain dict of tensors and builtins):
  format="mrcnn-checkpoint", version=1, config=Config.to_dict(), class_names=[...], model=state_dict,
  and for training runs: optimizer, scheduler, scaler, iteration, rng, metrics. With a weight average
  (`solver.ema_decay`) "model" holds the average (what eval / export / predict use) and ema={decay, tau, updates,
  online} the weights the optimizer steps (what --resume continues).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mrcnn.config import Config
from mrcnn.errors import MrcnnError, file_kind, message_line, require_file
from mrcnn.io import atomic_write

FORMAT = "mrcnn-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = {"format": FORMAT, "version": VERSION, **payload}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # through a Python file: a full disk's OSError stays behind torch's RuntimeError
            torch.save(payload, f)

    return atomic_write(path, write)


def _load_failure(e: BaseException) -> str:
    """The reason in one short clause. torch's weights-only refusal is a paragraph that ends by advising
    `weights_only=False` (running the file's code): only its WeightsUnpickler reason is kept."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        m = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
        why = m.group(1).split(". Please use")[0].rstrip(". ") if m else ""
        return "refused by the weights-only loader" + (f": {why}" if why else "") + "; mrcnn runs no code from files"
    if isinstance(e, EOFError):
        return "the file is empty or cut short"
    if "failed finding central directory" in text:
        return "the file is cut short: its zip archive has no end"
    return message_line(e)


def safe_load(path: str | Path, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` of a user's file: tensors and builtins only, no code runs. A missing, unreadable
    or refused file is one MrcnnError line naming it."""
    path = require_file(path, f"no such {what}", f"a {what}")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols of garbage files: the error says it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        kind = file_kind(path)
        if kind and kind != "empty" and "torch" not in kind:
            raise MrcnnError(f"{path}: not a {what}: the file is {kind}") from None
        raise MrcnnError(f"{path}: not a readable {what} ({_load_failure(e)})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    ckpt = safe_load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MrcnnError(f"{path}: not an mrcnn checkpoint (use `mrcnn convert` for torchvision weights)")
    if "config" not in ckpt or "model" not in ckpt:
        raise MrcnnError(f"{path}: checkpoint has no embedded config or model weights")
    return ckpt


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    overrides: list[str] | None = None,
    max_score_thresh: float | None = None,
):
    """Checkpoint -> (model in eval mode, Config, class_names). `overrides` (section.key=value) adjust inference
    settings such as model.box_score_thresh; `max_score_thresh` lowers the checkpoint's box score threshold to it
    where it is higher (predict --score below it)."""
    from mrcnn.model.mask_rcnn import build_model

    ckpt = load_checkpoint(path)
    cfg = Config.from_dict(ckpt["config"]).override(overrides)
    if max_score_thresh is not None and cfg.model.box_score_thresh > max_score_thresh:
        cfg = cfg.override([f"model.box_score_thresh={float(max_score_thresh)!r}"])
    model = build_model(cfg.model)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=True)
    if missing or unexpected:
        raise MrcnnError(
            f"{path}: weights do not fit config {cfg.name!r} "
            f"(missing {len(missing)}, unexpected {len(unexpected)}, e.g. {(missing or unexpected)[0]})"
        )
    model.to(device).eval()
    names = list(ckpt.get("class_names") or [f"class_{i}" for i in range(1, cfg.model.num_classes)])
    return model, cfg, names
