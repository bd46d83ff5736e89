"""Library entry points behind the CLI commands (the CLI only parses and prints)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from mrcnn.errors import MrcnnError


def evaluate_artifact(artifact: str | Path, data_dir: str | Path, *, split: str = "val2017", batch_size: int = 2,
                      device: str | None = None, json_out: str | Path | None = None, strict: bool = False,
                      log: Callable[[str], None] = print, progress: bool = True, max_images: int = 0) -> dict:
    """COCO bbox + segm AP of a checkpoint (.pt) or an exported model (.onnx, on ONNX Runtime)."""
    from mrcnn.data.layout import open_split
    from mrcnn.engine.evaluation import evaluate, match_classes, write_json
    from mrcnn.runtime import ARTIFACT_SUFFIXES, load_artifact

    artifact = Path(artifact)
    if batch_size < 1:
        raise MrcnnError(f"--batch must be >= 1, got {batch_size}")
    if artifact.suffix.lower() not in ARTIFACT_SUFFIXES:
        raise MrcnnError(f"{artifact}: unsupported artifact type {artifact.suffix!r} "
                         f"(expected {', '.join(ARTIFACT_SUFFIXES)})")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = load_artifact(artifact, dev, log=log)
    names = predictor.class_names
    ds = open_split(data_dir, split, strict=strict, logger=log)
    cat_ids = match_classes(names, ds, str(artifact), log)  # other classes: one error line, before predicting
    metrics, results = evaluate(predictor, ds, batch_size=batch_size, log=log,
                                progress=progress, max_images=max_images, cat_ids=cat_ids)
    if json_out:
        write_json(json_out, {"metrics": metrics, "results": results})
    return metrics


def demo(out: str | Path = "mrcnn-demo", *, max_iter: int | None = None, n_train: int = 200, n_val: int = 50,
         export: bool = True, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """The whole pipeline on the embedded synthetic dataset: data -> train (CPU config) -> COCO evaluation ->
    ONNX export (trt and portable flavours) -> COCO evaluation of the ONNX models on ONNX Runtime."""
    from mrcnn.config import get_config
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.engine.trainer import train

    if max_iter is not None and max_iter < 1:  # (0 once ran the whole demo)
        raise MrcnnError(f"--max-iter must be >= 1, got {max_iter}")
    out = Path(out)
    data = out / "data"
    steps = 5 if export else 3
    if not (data / "annotations" / "instances_val2017.json").exists():
        log(f"[1/{steps}] synthetic dataset -> {data}")
        generate_synthetic(data, n_train=n_train, n_val=n_val, size=256, seed=0)
    else:
        log(f"[1/{steps}] synthetic dataset already at {data}")
    cfg = get_config("shapes-tiny")
    if max_iter is not None:
        cfg.solver.max_iter = max_iter
    log(f"[2/{steps}] training {cfg.name} for {cfg.solver.max_iter} iterations -> {out / 'run'}")
    result = train(cfg, data, out / "run", overwrite=True, log=log, progress=progress, evaluate_at_end=False)
    log(f"[3/{steps}] COCO evaluation of {result.checkpoint} (PyTorch)")
    report = {"checkpoint": str(result.checkpoint), "metrics": evaluate_artifact(result.checkpoint, data, log=log,
                                                                                    progress=progress)}
    if export:
        from mrcnn.export import export_checkpoint

        report["onnx"] = {}
        for target in ("trt", "portable"):
            onnx_path = out / f"model-{target}.onnx"
            log(f"[4/{steps}] export {target} flavour -> {onnx_path}")
            export_checkpoint(result.checkpoint, onnx_path, target=target, log=log)
        for target in ("trt", "portable"):
            onnx_path = out / f"model-{target}.onnx"
            log(f"[5/{steps}] COCO evaluation of {onnx_path} (ONNX Runtime)")
            report["onnx"][target] = {"path": str(onnx_path),
                                      "metrics": evaluate_artifact(onnx_path, data, log=log, progress=progress)}
    return report
