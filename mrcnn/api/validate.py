"""`mrcnn eval` and `mrcnn validate`: an artifact's COCO AP, and its AP against a reference model's with the detections
paired up (the CLI only parses and prints)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch

from mrcnn.errors import MrcnnError
from mrcnn.io import file_sha256


def check_inputs(artifact: Path, batch_size: int, max_images: int = 0, json_out: str | Path | None = None) -> None:
    """Before anything is loaded (load_artifact checks --device first)."""
    from mrcnn.deploy import check_artifact_type
    from mrcnn.io import check_writable_file

    if json_out:
        check_writable_file(json_out, "--json")
    if batch_size < 1:
        raise MrcnnError(f"--batch must be >= 1, got {batch_size}")
    if max_images < 0:
        raise MrcnnError(f"--max-images must be >= 0 (0: all), got {max_images}")
    check_artifact_type(artifact)


def check_bundle(artifact: Path, bundle: str | Path, images: int) -> None:
    """`--bundle` before anything is loaded: an exported model, a new (or empty) folder, polygraphy installed."""
    from mrcnn.deploy.bundle import check_folder, import_polygraphy

    if artifact.suffix.lower() != ".onnx":
        raise MrcnnError(f"--bundle: {artifact} is not an exported model (.onnx); a bundle compares an engine with it")
    if images < 1:
        raise MrcnnError(f"--bundle-images must be >= 1, got {images}")
    check_folder(Path(bundle))
    import_polygraphy()


def score_predictor(
    predictor, name: str, ds, batch_size: int, log, progress: bool, max_images: int
) -> tuple[dict, list]:
    """(COCO metrics, COCO results) of a predictor on a dataset split, its classes matched by name."""
    from mrcnn.evaluation.coco import evaluate, match_classes

    cat_ids = match_classes(predictor.class_names, ds, name, log)  # other classes: one error line, before predicting
    return evaluate(
        predictor, ds, batch_size=batch_size, log=log, progress=progress, max_images=max_images, cat_ids=cat_ids
    )


def evaluate_artifact(
    artifact: str | Path,
    data_dir: str | Path,
    *,
    split: str = "val2017",
    batch_size: int = 2,
    device: str | None = None,
    json_out: str | Path | None = None,
    strict: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    max_images: int = 0,
    precision: str = "fp32",
) -> dict:
    """COCO bbox + segm AP of a checkpoint (.pt) or an exported model (.onnx, on ONNX Runtime)."""
    from mrcnn.data.layout import open_split
    from mrcnn.deploy import load_artifact
    from mrcnn.io import write_json

    artifact = Path(artifact)
    check_inputs(artifact, batch_size, max_images, json_out)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = load_artifact(artifact, dev, log=log, precision=precision)
    ds = open_split(data_dir, split, strict=strict, logger=log)
    metrics, results = score_predictor(predictor, str(artifact), ds, batch_size, log, progress, max_images)
    if json_out:
        write_json(json_out, {"metrics": metrics, "results": results})
    return metrics


MAX_REFERENCE_BYTES = 4 << 30  # a source checkpoint larger than this is not one (R-50: 170 MB)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def reference_of(predictor, artifact: Path) -> tuple[Path | None, list[str] | None]:
    """The checkpoint an exported model names as its source (metadata `mrcnn.source`) and the inference overrides
    it was exported with; (None, None) for a model that names none. An artifact does not vouch for itself: the
    source must be a regular checkpoint file (.pt / .pth, at most MAX_REFERENCE_BYTES) whose SHA-256 the metadata
    records and that still matches; anything else (gone, changed, no or a malformed record, the artifact itself, a
    device or FIFO) is one error line asking for --reference: comparing with another model would prove nothing."""
    text = (getattr(predictor, "metadata", None) or {}).get("mrcnn.source")
    if not text:
        return None, None
    ask = "give --reference CHECKPOINT"
    try:
        src = json.loads(text)
    except ValueError:
        src = None
    if not isinstance(src, dict) or not isinstance(src.get("checkpoint"), str) or not src["checkpoint"]:
        raise MrcnnError(f"{artifact}: its mrcnn.source metadata names no checkpoint file: {ask}")
    path = Path(src["checkpoint"])
    sha = src.get("sha256")
    overrides = src.get("overrides")
    if not path.exists():
        raise MrcnnError(f"{artifact} was exported from {path}, which is not there: {ask}")
    if not path.is_file() or path.suffix.lower() not in (".pt", ".pth"):
        raise MrcnnError(f"{artifact} names {path} as its source, which is not a checkpoint file (.pt): {ask}")
    if path.resolve() == artifact.resolve():
        raise MrcnnError(f"{artifact} names itself as its source: {ask}")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise MrcnnError(f"{artifact}: its mrcnn.source records no SHA-256 of {path}, so it cannot be checked: {ask}")
    if path.stat().st_size > MAX_REFERENCE_BYTES:
        raise MrcnnError(
            f"{artifact} names {path} as its source, {path.stat().st_size / 2**30:.1f} GiB: larger than a checkpoint "
            f"({MAX_REFERENCE_BYTES >> 30} GiB): {ask}"
        )
    if file_sha256(path) != sha:
        raise MrcnnError(f"{artifact} was exported from {path}, which has changed since (its sha256 differs): {ask}")
    if overrides is not None and not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise MrcnnError(f"{artifact}: its mrcnn.source overrides are not a list of section.key=value strings: {ask}")
    return path, overrides


def validate_artifact(
    artifact: str | Path,
    data_dir: str | Path,
    *,
    reference: str | Path | None = None,
    max_ap_drop: float | None = None,
    split: str = "val2017",
    batch_size: int = 2,
    device: str | None = None,
    json_out: str | Path | None = None,
    strict: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    max_images: int = 0,
    reference_eval: tuple[dict, list] | None = None,
    precision: str = "fp32",
    bundle: str | Path | None = None,
    bundle_images: int = 4,
) -> dict:
    """`mrcnn validate`: COCO AP of `artifact` and of its reference (`reference`, or the checkpoint an exported model
    names) on the same images, their AP drops, the detections paired up (mrcnn.evaluation.comparison), and the gate:
    report["failed"] lists the AP drops above `max_ap_drop` (the CLI exits 1 when it is not empty).
    `reference_eval`: the reference's (metrics, results) on the same images when already computed (the demo).
    `bundle`: also write a polygraphy bundle there (mrcnn.deploy.bundle) of an exported model on `bundle_images`
    images of the split: the proof that a TensorRT engine built from it equals ONNX Runtime, run on a GPU machine."""
    from mrcnn.data.layout import open_split
    from mrcnn.deploy import load_artifact
    from mrcnn.evaluation.comparison import ap_drops, gate, pair_detections
    from mrcnn.io import write_json

    artifact = Path(artifact)
    check_inputs(artifact, batch_size, max_images, json_out)
    if max_ap_drop is not None and not max_ap_drop >= 0:
        raise MrcnnError(f"--max-ap-drop must be >= 0 (AP points as fractions: 0.01 = 1 point), got {max_ap_drop}")
    if bundle is not None:
        check_bundle(artifact, bundle, bundle_images)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = load_artifact(artifact, dev, log=log, precision=precision)
    overrides = None
    if reference is None:
        reference, overrides = reference_of(predictor, artifact)
    if reference is None and max_ap_drop is not None:
        raise MrcnnError(f"--max-ap-drop needs a reference model: {artifact} names none; give --reference CHECKPOINT")
    ref_pred = None
    if reference is not None:
        reference = Path(reference)
        check_inputs(reference, batch_size)
        # the reference as trained (no inference levers): `validate X.pt --reference X.pt` measures what the levers
        # and --precision change
        ref_pred = load_artifact(reference, dev, log=log, overrides=overrides, optimize=False)
        if list(ref_pred.class_names) != list(predictor.class_names):
            raise MrcnnError(
                f"{artifact} and its reference {reference} have different classes "
                f"({', '.join(predictor.class_names[:6])} vs {', '.join(ref_pred.class_names[:6])})"
            )
    if bundle is not None:
        from mrcnn.data.layout import draw_images
        from mrcnn.deploy.bundle import write_bundle
        from mrcnn.deploy.ort_predictor import OnnxPredictor

        images = draw_images(data_dir, split, bundle_images, logger=log)
        session = predictor if isinstance(predictor, OnnxPredictor) else None  # not a second session of the file
        write_bundle(artifact, images, bundle, log=log, predictor=session)
    ds = open_split(data_dir, split, strict=strict, logger=log)
    metrics, results = score_predictor(predictor, str(artifact), ds, batch_size, log, progress, max_images)
    report: dict = {
        "artifact": {"path": str(artifact), "runtime": predictor.runtime, "metrics": metrics},
        "reference": None,
        "images": metrics["images"],
        "max_ap_drop": max_ap_drop,
        "failed": [],
        "bundle": None if bundle is None else str(bundle),
    }
    if ref_pred is not None:
        ref_metrics, ref_results = reference_eval or score_predictor(
            ref_pred, str(reference), ds, batch_size, log, progress, max_images
        )
        drops = ap_drops(metrics, ref_metrics)
        report["reference"] = {"path": str(reference), "runtime": ref_pred.runtime, "metrics": ref_metrics}
        report["ap_drop"] = drops
        report["detections"] = pair_detections(results, ref_results)
        if max_ap_drop is not None:
            report["failed"] = gate(drops, max_ap_drop)
    if json_out:
        write_json(json_out, report)
    return report


def format_validation(report: dict) -> str:
    """The report as `mrcnn validate` prints it."""
    from mrcnn.evaluation.coco import format_table
    from mrcnn.evaluation.comparison import format_pairs

    a, r = report["artifact"], report["reference"]
    lines = [f"{a['path']} on {a['runtime']}, {report['images']} images", format_table(a["metrics"])]
    if r is None:
        lines.append("no reference model (give --reference CHECKPOINT): AP only")
        return "\n".join(lines)
    lines += [f"reference {r['path']} on {r['runtime']}", format_table(r["metrics"])]
    lines += [format_ap_drop(report), format_pairs(report["detections"])]
    return "\n".join(lines)


def format_ap_drop(report: dict) -> str:
    """One line: each AP drop (reference -> this) and, where there is one, the gate's verdict."""
    a, r = report["artifact"], report["reference"]
    line = "AP drop (reference - this): " + ", ".join(
        f"{t} {d['AP']:+.4f} ({r['metrics'][t]['AP']:.4f} -> {a['metrics'][t]['AP']:.4f})"
        for t, d in report["ap_drop"].items()
    )
    if report["max_ap_drop"] is not None:
        line += f"; gate --max-ap-drop {report['max_ap_drop']:g}: " + (
            "; ".join(report["failed"]) + ": FAILED" if report["failed"] else "passed"
        )
    return line
