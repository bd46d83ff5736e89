"""Library entry points behind the CLI commands (the CLI only parses and prints)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from mrcnn.errors import MrcnnError


def _check_artifact(artifact: Path, batch_size: int, max_images: int = 0) -> None:
    """Before anything is loaded (load_artifact checks --device first)."""
    from mrcnn.runtime import check_artifact_type

    if batch_size < 1:
        raise MrcnnError(f"--batch must be >= 1, got {batch_size}")
    if max_images < 0:
        raise MrcnnError(f"--max-images must be >= 0 (0: all), got {max_images}")
    check_artifact_type(artifact)


def _score(predictor, name: str, ds, batch_size: int, log, progress: bool, max_images: int) -> tuple[dict, list]:
    """(COCO metrics, COCO results) of a predictor on a dataset split, its classes matched by name."""
    from mrcnn.engine.evaluation import evaluate, match_classes

    cat_ids = match_classes(predictor.class_names, ds, name, log)  # other classes: one error line, before predicting
    return evaluate(predictor, ds, batch_size=batch_size, log=log, progress=progress, max_images=max_images,
                    cat_ids=cat_ids)


def evaluate_artifact(artifact: str | Path, data_dir: str | Path, *, split: str = "val2017", batch_size: int = 2,
                      device: str | None = None, json_out: str | Path | None = None, strict: bool = False,
                      log: Callable[[str], None] = print, progress: bool = True, max_images: int = 0) -> dict:
    """COCO bbox + segm AP of a checkpoint (.pt) or an exported model (.onnx, on ONNX Runtime)."""
    from mrcnn.data.layout import open_split
    from mrcnn.engine.evaluation import write_json
    from mrcnn.runtime import load_artifact

    artifact = Path(artifact)
    _check_artifact(artifact, batch_size, max_images)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = load_artifact(artifact, dev, log=log)
    ds = open_split(data_dir, split, strict=strict, logger=log)
    metrics, results = _score(predictor, str(artifact), ds, batch_size, log, progress, max_images)
    if json_out:
        write_json(json_out, {"metrics": metrics, "results": results})
    return metrics


def reference_of(predictor, artifact: Path) -> tuple[Path | None, list[str] | None]:
    """The checkpoint an exported model names as its source (metadata `mrcnn.source`) and the inference overrides
    it was exported with; (None, None) for a model that names none. A source that is gone or has changed since the
    export is one error line: comparing with another model would prove nothing."""
    import json

    from mrcnn.engine.checkpoint import file_sha256

    text = (getattr(predictor, "metadata", None) or {}).get("mrcnn.source")
    if not text:
        return None, None
    src = json.loads(text)
    path = Path(src["checkpoint"])
    if not path.exists():
        raise MrcnnError(f"{artifact} was exported from {path}, which is not there: give --reference CHECKPOINT")
    if src.get("sha256") and file_sha256(path) != src["sha256"]:
        raise MrcnnError(f"{artifact} was exported from {path}, which has changed since (its sha256 differs): "
                         "give --reference CHECKPOINT")
    return path, src.get("overrides")


def validate_artifact(artifact: str | Path, data_dir: str | Path, *, reference: str | Path | None = None,
                      max_ap_drop: float | None = None, split: str = "val2017", batch_size: int = 2,
                      device: str | None = None, json_out: str | Path | None = None, strict: bool = False,
                      log: Callable[[str], None] = print, progress: bool = True, max_images: int = 0,
                      reference_eval: tuple[dict, list] | None = None) -> dict:
    """`mrcnn validate`: COCO AP of `artifact` and of its reference (`reference`, or the checkpoint an exported model
    names) on the same images, their AP drops, the detections paired up (mrcnn.engine.validation), and the gate:
    report["failed"] lists the AP drops above `max_ap_drop` (the CLI exits 1 when it is not empty).
    `reference_eval`: the reference's (metrics, results) on the same images when already computed (the demo)."""
    from mrcnn.data.layout import open_split
    from mrcnn.engine.evaluation import write_json
    from mrcnn.engine.validation import ap_drops, gate, pair_detections
    from mrcnn.runtime import load_artifact

    artifact = Path(artifact)
    _check_artifact(artifact, batch_size, max_images)
    if max_ap_drop is not None and not max_ap_drop >= 0:
        raise MrcnnError(f"--max-ap-drop must be >= 0 (AP points as fractions: 0.01 = 1 point), got {max_ap_drop}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = load_artifact(artifact, dev, log=log)
    overrides = None
    if reference is None:
        reference, overrides = reference_of(predictor, artifact)
    if reference is None and max_ap_drop is not None:
        raise MrcnnError(f"--max-ap-drop needs a reference model: {artifact} names none; give --reference CHECKPOINT")
    ref_pred = None
    if reference is not None:
        reference = Path(reference)
        _check_artifact(reference, batch_size)
        ref_pred = load_artifact(reference, dev, log=log, overrides=overrides)
        if list(ref_pred.class_names) != list(predictor.class_names):
            raise MrcnnError(f"{artifact} and its reference {reference} have different classes "
                             f"({', '.join(predictor.class_names[:6])} vs {', '.join(ref_pred.class_names[:6])})")
    ds = open_split(data_dir, split, strict=strict, logger=log)
    metrics, results = _score(predictor, str(artifact), ds, batch_size, log, progress, max_images)
    report: dict = {"artifact": {"path": str(artifact), "backend": predictor.backend, "metrics": metrics},
                    "reference": None, "images": metrics["images"], "max_ap_drop": max_ap_drop, "failed": []}
    if ref_pred is not None:
        ref_metrics, ref_results = reference_eval or _score(ref_pred, str(reference), ds, batch_size, log, progress,
                                                            max_images)
        drops = ap_drops(metrics, ref_metrics)
        report["reference"] = {"path": str(reference), "backend": ref_pred.backend, "metrics": ref_metrics}
        report["ap_drop"] = drops
        report["detections"] = pair_detections(results, ref_results)
        if max_ap_drop is not None:
            report["failed"] = gate(drops, max_ap_drop)
    if json_out:
        write_json(json_out, report)
    return report


def format_validation(report: dict) -> str:
    """The report as `mrcnn validate` prints it."""
    from mrcnn.engine.evaluation import format_table
    from mrcnn.engine.validation import format_pairs

    a, r = report["artifact"], report["reference"]
    lines = [f"{a['path']} on {a['backend']}, {report['images']} images", format_table(a["metrics"])]
    if r is None:
        lines.append("no reference model (give --reference CHECKPOINT): AP only")
        return "\n".join(lines)
    lines += [f"reference {r['path']} on {r['backend']}", format_table(r["metrics"])]
    lines += [format_ap_drop(report), format_pairs(report["detections"])]
    return "\n".join(lines)


def format_ap_drop(report: dict) -> str:
    """One line: each AP drop (reference -> this) and, where there is one, the gate's verdict."""
    a, r = report["artifact"], report["reference"]
    line = "AP drop (reference - this): " + ", ".join(
        f"{t} {d['AP']:+.4f} ({r['metrics'][t]['AP']:.4f} -> {a['metrics'][t]['AP']:.4f})"
        for t, d in report["ap_drop"].items())
    if report["max_ap_drop"] is not None:
        line += (f"; gate --max-ap-drop {report['max_ap_drop']:g}: "
                 + ("; ".join(report["failed"]) + ": FAILED" if report["failed"] else "passed"))
    return line


def demo(out: str | Path = "mrcnn-demo", *, max_iter: int | None = None, n_train: int = 200, n_val: int = 50,
         export: bool = True, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """The whole pipeline on the embedded synthetic dataset: data -> train (CPU config) -> COCO evaluation ->
    ONNX export (DEMO_FLAVOURS: trt, portable, rtx, and rtx with --fp16) -> validation of the ONNX models on ONNX
    Runtime against the checkpoint (COCO AP, drop, detections paired; report["failed"] of each lists AP drops above
    DEMO_MAX_AP_DROP) -> the two rtx models built into TensorRT-RTX engines where tensorrt_rtx imports
    (report["engines"])."""
    from mrcnn.config import get_config
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.engine.trainer import train

    if max_iter is not None and max_iter < 1:  # (0 once ran the whole demo)
        raise MrcnnError(f"--max-iter must be >= 1, got {max_iter}")
    out = Path(out)
    data = out / "data"
    steps = 6 if export else 3
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
    from mrcnn.data.layout import open_split
    from mrcnn.runtime import load_artifact

    val = open_split(data, "val2017", logger=log)
    reference = _score(load_artifact(result.checkpoint, log=log), str(result.checkpoint), val, 2, log, progress, 0)
    report = {"checkpoint": str(result.checkpoint), "metrics": reference[0]}
    if export:
        from mrcnn.export import export_checkpoint

        report["onnx"] = {}
        for name, (target, fp16) in DEMO_FLAVOURS.items():
            onnx_path = out / f"model-{name}.onnx"
            log(f"[4/{steps}] export {target} flavour{' --fp16' if fp16 else ''} -> {onnx_path}")
            export_checkpoint(result.checkpoint, onnx_path, target=target, fp16=fp16, log=log)
        for name in DEMO_FLAVOURS:
            onnx_path = out / f"model-{name}.onnx"
            log(f"[5/{steps}] validation of {onnx_path} (ONNX Runtime) against the checkpoint (`mrcnn validate`)")
            v = validate_artifact(onnx_path, data, max_ap_drop=DEMO_MAX_AP_DROP, log=log, progress=progress,
                                  reference_eval=reference)
            report["onnx"][name] = {"path": str(onnx_path), "metrics": v["artifact"]["metrics"], "validation": v}
        rtx = [out / f"model-{name}.onnx" for name, (target, _) in DEMO_FLAVOURS.items() if target == "rtx"]
        report["engines"] = _demo_engines(rtx, f"[6/{steps}]", log)
    return report


def _demo_engines(onnx_paths: list[Path], step: str, log: Callable[[str], None]) -> list[dict]:
    """The demo's `mrcnn build`: the rtx models as TensorRT-RTX engines, or why not (not installed)."""
    from mrcnn.engine.build import build_artifact, import_runtime

    try:
        import_runtime("tensorrt-rtx")
    except MrcnnError as e:  # its line names the package to install
        log(f"{step} engine builds skipped: {e}")
        return [{"skipped": str(e)}]
    engines = []
    for onnx_path in onnx_paths:
        log(f"{step} TensorRT-RTX engine from {onnx_path} (`mrcnn build`; running it needs an RTX-class GPU)")
        t0 = time.perf_counter()
        plan = build_artifact(onnx_path, runtime="tensorrt-rtx", log=log)
        engines.append({"path": str(plan), "mb": plan.stat().st_size / 1e6, "seconds": time.perf_counter() - t0})
    return engines


# the demo's exports: file name model-NAME.onnx -> (flavour, --fp16)
DEMO_FLAVOURS = {"trt": ("trt", False), "portable": ("portable", False), "rtx": ("rtx", False),
                 "rtx-fp16": ("rtx", True)}
DEMO_MAX_AP_DROP = 0.005  # the demo's gate on its ONNX models (measured drop: 0, rtx-fp16 segm 0.0013; all paired)
