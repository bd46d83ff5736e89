"""Library entry points behind the CLI commands (the CLI only parses and prints)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from mrcnn.errors import MrcnnError


def evaluate_artifact(artifact: str | Path, data_dir: str | Path, *, split: str = "val2017", batch_size: int = 2,
                      device: str | None = None, json_out: str | Path | None = None, strict: bool = False,
                      log: Callable[[str], None] = print, progress: bool = True, max_images: int = 0) -> dict:
    """COCO bbox + segm AP of a checkpoint (.pt) on a COCO-format folder."""
    from mrcnn.data.coco import CocoDetection
    from mrcnn.engine.checkpoint import load_model
    from mrcnn.engine.evaluation import evaluate, write_json
    from mrcnn.model.predictor import Predictor

    artifact = Path(artifact)
    if artifact.suffix not in (".pt", ".pth"):
        raise MrcnnError(f"{artifact}: unsupported artifact type {artifact.suffix!r} (expected .pt)")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, names = load_model(artifact, dev)
    ds = CocoDetection(data_dir, split, strict=strict, logger=log)
    if len(names) != len(ds.class_names):
        raise MrcnnError(f"{artifact} predicts {len(names)} classes but {data_dir} has {len(ds.class_names)}")
    metrics, results = evaluate(Predictor(model, cfg.input), ds, batch_size=batch_size, log=log,
                                progress=progress, max_images=max_images)
    if json_out:
        write_json(json_out, {"metrics": metrics, "results": results})
    return metrics


def demo(out: str | Path = "mrcnn-demo", *, max_iter: int | None = None, n_train: int = 200, n_val: int = 50,
         log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """The whole pipeline on the embedded synthetic dataset: data -> train (CPU config) -> COCO evaluation."""
    from mrcnn.config import get_config
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.engine.trainer import train

    out = Path(out)
    data = out / "data"
    if not (data / "annotations" / "instances_val2017.json").exists():
        log(f"[1/3] synthetic dataset -> {data}")
        generate_synthetic(data, n_train=n_train, n_val=n_val, size=256, seed=0)
    else:
        log(f"[1/3] synthetic dataset already at {data}")
    cfg = get_config("shapes-tiny")
    if max_iter:
        cfg.solver.max_iter = max_iter
    log(f"[2/3] training {cfg.name} for {cfg.solver.max_iter} iterations -> {out / 'run'}")
    result = train(cfg, data, out / "run", log=log, progress=progress, evaluate_at_end=False)
    log(f"[3/3] COCO evaluation of {result.checkpoint}")
    metrics = evaluate_artifact(result.checkpoint, data, log=log, progress=progress)
    return {"checkpoint": str(result.checkpoint), "metrics": metrics}
