"""`mrcnn demo`: the whole pipeline on the embedded synthetic dataset, as one library call.

    [1] synthetic dataset   [2] training (shapes-tiny, CPU)   [3] COCO evaluation of the checkpoint
    [4] ONNX exports (DEMO_FLAVOURS; the INT8 ones quantized by ModelOpt, calibrated on training images) and OpenVINO
        IRs of the portable ones (DEMO_OPENVINO)   [5] their validation (ONNX Runtime, OpenVINO) against the checkpoint
    [6] TensorRT-RTX engines of the rtx exports   [7] `mrcnn bench` of the checkpoint and every artifact on one image
    [8] `mrcnn predict` overlays of a few val images
then `format_summary`: one row per artifact (runtime, size, AP, AP drop, p50 latency), and `written_paths`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from mrcnn.api.validate import score_predictor, validate_artifact
from mrcnn.errors import MrcnnError

# the demo's exports: file name model-NAME.onnx -> (flavour, precision); an int8 one is the float32 export of its
# flavour quantized (`mrcnn export --int8`'s second step), calibrated on DEMO_CALIB_IMAGES training images
DEMO_FLAVOURS = {
    "trt": ("trt", "fp32"),
    "portable": ("portable", "fp32"),
    "rtx": ("rtx", "fp32"),
    "rtx-fp16": ("rtx", "fp16"),
    "portable-int8": ("portable", "int8"),
    "rtx-int8": ("rtx", "int8"),
}
# the demo's OpenVINO IRs (`mrcnn build --runtime openvino`): model-NAME.xml -> (the export, --precision); bf16 only
# where the CPU has bfloat16
DEMO_OPENVINO = {
    "portable": ("portable", "f32"),
    "portable-bf16": ("portable", "bf16"),
    "portable-int8": ("portable-int8", "f32"),
}
DEMO_CALIB_IMAGES = 32
DEMO_MAX_AP_DROP = 0.005  # the demo's gate on its float models (measured drop: 0, rtx-fp16 segm 0.0013; all paired)
DEMO_MAX_INT8_AP_DROP = 0.01  # and on its INT8 ones (the goal of issue 29)
DEMO_OVERLAYS = 4  # val images drawn by `mrcnn predict` at the end
DEMO_BENCH_ITERS = 30


def demo(
    out: str | Path = "mrcnn-demo",
    *,
    max_iter: int | None = None,
    n_train: int = 200,
    n_val: int = 50,
    export: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """The steps of the module docstring (with `export=False` the first three). report["onnx"][name]["validation"]
    ["failed"] lists each export's AP drops above DEMO_MAX_AP_DROP; report["engines"] the engines built (or why
    none); report["bench"] the latency rows; report["predictions"] the overlays' folder."""
    from mrcnn.config import get_config
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.training.trainer import train

    if max_iter is not None and max_iter < 1:  # (0 once ran the whole demo)
        raise MrcnnError(f"--max-iter must be >= 1, got {max_iter}")
    out = Path(out)
    data = out / "data"
    step = _Steps(8 if export else 3, log)
    if not (data / "annotations" / "instances_val2017.json").exists():
        step(f"synthetic dataset -> {data}")
        generate_synthetic(data, n_train=n_train, n_val=n_val, size=256, seed=0)
    else:
        step(f"synthetic dataset already at {data}")
    cfg = get_config("shapes-tiny")
    if max_iter is not None:
        cfg.solver.max_iter = max_iter
    step(f"training {cfg.name} for {cfg.solver.max_iter} iterations -> {out / 'run'}")
    result = train(cfg, data, out / "run", overwrite=True, log=log, progress=progress, evaluate_at_end=False)
    step(f"COCO evaluation of {result.checkpoint} (PyTorch)")
    from mrcnn.data.layout import open_split
    from mrcnn.deploy import load_artifact

    val = open_split(data, "val2017", logger=log)
    predictor = load_artifact(result.checkpoint, log=log)
    reference = score_predictor(predictor, str(result.checkpoint), val, 2, log, progress, 0)
    report = {
        "out": str(out),
        "data": str(data),
        "run": str(out / "run"),
        "checkpoint": str(result.checkpoint),
        "runtime": predictor.runtime,
        "metrics": reference[0],
    }
    if export:
        report["onnx"], report["openvino"] = demo_exports(result.checkpoint, data, out, reference, step, log, progress)
        rtx = [Path(r["path"]) for name, r in report["onnx"].items() if DEMO_FLAVOURS[name][0] == "rtx"]
        report["engines"] = demo_engines(rtx, step, log)
        validated = [*report["onnx"].values(), *report["openvino"].values()]
        report["bench"] = demo_bench([result.checkpoint, *(Path(r["path"]) for r in validated)], data, step, log)
        report["predictions"] = demo_overlays(result.checkpoint, val, out / "predictions", step, log)
    return report


class _Steps:
    """`step(text)`: the next numbered step's line, [k/total]."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.k = total, log, 0

    def __call__(self, text: str, same: bool = False) -> None:
        self.k += 0 if same else 1
        self.log(f"[{self.k}/{self.total}] {text}")


def demo_exports(
    checkpoint: Path, data: Path, out: Path, reference: tuple, step: _Steps, log: Callable[[str], None], progress: bool
) -> tuple[dict, dict]:
    """Steps 4 and 5: every DEMO_FLAVOURS export and DEMO_OPENVINO IR (where its runtime is installed and, for bf16,
    the CPU has it), then each validated against the checkpoint's evaluation. Returns ({name: export}, {name: IR})."""
    from mrcnn.deploy.build import build_artifact
    from mrcnn.deploy.openvino_runtime import cpu_bf16, import_openvino
    from mrcnn.export import export_checkpoint
    from mrcnn.export.quantize import Int8Options, import_modelopt_quantize, quantize_export

    step("ONNX exports")
    paths = {}
    for name, (flavour, precision) in DEMO_FLAVOURS.items():
        paths[name] = out / f"model-{name}.onnx"
        if precision == "int8":
            why = _unavailable(import_modelopt_quantize)
            if why:
                step(f"INT8 export {paths[name].name} skipped: {why}", same=True)
                del paths[name]
                continue
            src = paths[name.removesuffix("-int8")]
            step(
                f"export {flavour} flavour --int8 (ModelOpt, {DEMO_CALIB_IMAGES} training images) -> {paths[name]}",
                same=True,
            )
            quantize_export(src, paths[name], Int8Options(data, images=DEMO_CALIB_IMAGES), log=log)
            continue
        fp16 = precision == "fp16"
        step(f"export {flavour} flavour{' --fp16' if fp16 else ''} -> {paths[name]}", same=True)
        export_checkpoint(checkpoint, paths[name], flavour=flavour, fp16=fp16, log=log)
    irs = {}
    why = _unavailable(import_openvino)
    for name, (export_name, precision) in DEMO_OPENVINO.items():
        if why or export_name not in paths or (precision == "bf16" and not cpu_bf16()):
            reason = why or ("the CPU has no bfloat16" if export_name in paths else f"no {export_name} export")
            step(f"OpenVINO IR model-{name}.xml skipped: {reason}", same=True)
            continue
        step(f"OpenVINO IR ({precision}) of {paths[export_name].name} -> model-{name}.xml", same=True)
        irs[name] = build_artifact(
            paths[export_name], out / f"model-{name}.xml", runtime="openvino", precision=precision, log=log
        )
    step("validation of the exports (ONNX Runtime) and IRs (OpenVINO) against the checkpoint (`mrcnn validate`)")
    validated: tuple[dict, dict] = ({}, {})
    for kind, items in ((0, paths), (1, irs)):
        for name, path in items.items():
            int8 = "int8" in name
            step(f"validation of {path}", same=True)
            v = validate_artifact(
                path,
                data,
                max_ap_drop=DEMO_MAX_INT8_AP_DROP if int8 else DEMO_MAX_AP_DROP,
                log=log,
                progress=progress,
                reference_eval=reference,
            )
            validated[kind][name] = {"path": str(path), "metrics": v["artifact"]["metrics"], "validation": v}
    return validated


def _unavailable(importer) -> str | None:
    """None where the runtime's importer succeeds, else its one line (what to install)."""
    try:
        importer()
    except MrcnnError as e:
        return str(e)
    return None


def demo_engines(onnx_paths: list[Path], step: _Steps, log: Callable[[str], None]) -> list[dict]:
    """Step 6, `mrcnn build`: the rtx models as TensorRT-RTX engines, or why not (not installed)."""
    from mrcnn.deploy.build import build_artifact, import_runtime

    try:
        import_runtime("tensorrt-rtx")
    except MrcnnError as e:  # its line names the package to install
        step(f"engine builds skipped: {e}")
        return [{"skipped": str(e)}]
    step("TensorRT-RTX engines of the rtx exports (`mrcnn build`; running them needs an RTX-class GPU)")
    engines = []
    for onnx_path in onnx_paths:
        step(f"engine from {onnx_path}", same=True)
        t0 = time.perf_counter()
        plan = build_artifact(onnx_path, runtime="tensorrt-rtx", log=log)
        engines.append(
            {
                "path": str(plan),
                "onnx": str(onnx_path),
                "mb": plan.stat().st_size / 1e6,
                "seconds": time.perf_counter() - t0,
                "precision": json.loads(plan.with_name(plan.name + ".json").read_text())["precision"],
            }
        )
    return engines


def demo_bench(artifacts: list[Path], data: Path, step: _Steps, log: Callable[[str], None]) -> dict:
    """Step 7, `mrcnn bench`: every artifact that runs here, on the first val image, taking turns."""
    from mrcnn.deploy.bench import bench_artifacts

    step(f"`mrcnn bench` of {len(artifacts)} artifacts on the first val image, {DEMO_BENCH_ITERS} calls each")
    return bench_artifacts(artifacts, data=data, batch=1, iters=DEMO_BENCH_ITERS, warmup=3, log=log)


def demo_overlays(checkpoint: Path, val, out: Path, step: _Steps, log: Callable[[str], None]) -> dict:
    """Step 8, `mrcnn predict`: overlays and predictions.json of the first DEMO_OVERLAYS val images."""
    from mrcnn.deploy.predict import predict

    files = [val.image_path(i) for i in range(min(DEMO_OVERLAYS, len(val)))]
    step(f"`mrcnn predict` overlays of {len(files)} val images -> {out}")
    return predict(checkpoint, files, out, log=log, progress=False)


def _mb(path: str | Path) -> float:
    """MB of an artifact's files (an OpenVINO IR: its .xml and .bin)."""
    path = Path(path)
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files) / 1e6


def summary_rows(report: dict) -> list[dict]:
    """One row per artifact the demo made: name, path, runtime, MB, metrics, AP drops, p50 ms (None: not run)."""
    p50 = {Path(r["artifact"]).name: r["p50_ms"] for r in report.get("bench", {}).get("rows", [])}
    ck = Path(report["checkpoint"])
    rows = [
        {
            "name": ck.name,
            "path": str(ck),
            "runtime": report["runtime"],
            "mb": _mb(ck),
            "metrics": report["metrics"],
            "drop": None,
            "p50": p50.get(ck.name),
        }
    ]
    for r in [*report.get("onnx", {}).values(), *report.get("openvino", {}).values()]:
        v = r["validation"]
        rows.append(
            {
                "name": Path(r["path"]).name,
                "path": r["path"],
                "runtime": v["artifact"]["runtime"],
                "mb": _mb(r["path"]),
                "metrics": r["metrics"],
                "drop": v.get("ap_drop"),
                "p50": p50.get(Path(r["path"]).name),
            }
        )
    for e in report.get("engines", []):
        if "path" in e:
            rows.append(
                {
                    "name": Path(e["path"]).name,
                    "path": e["path"],
                    "runtime": "TensorRT-RTX engine" + (f", {e['precision']}" if e["precision"] != "fp32" else ""),
                    "mb": e["mb"],
                    "metrics": None,
                    "drop": None,
                    "p50": None,
                }
            )
    return rows


def format_summary(report: dict) -> str:
    """The demo's closing table: each artifact's runtime, size, bbox / segm AP, AP drop against the checkpoint
    (bbox / segm) and p50 latency from `mrcnn bench` on the same image."""
    rows = summary_rows(report)
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'artifact':<{w}}  {'runtime':<34}{'MB':>7}{'bbox AP':>9}{'segm AP':>9}  {'AP drop':<19}{'p50 ms':>7}"]
    for r in rows:
        m, d = r["metrics"], r["drop"]
        ap = f"{m['bbox']['AP']:9.4f}{m['segm']['AP']:9.4f}" if m else f"{'-':>9}{'-':>9}"
        drop = f"{d['bbox']['AP']:+.4f} / {d['segm']['AP']:+.4f}" if d else "-"
        p50 = f"{r['p50']:7.1f}" if r["p50"] is not None else f"{'-':>7}"
        lines.append(f"{r['name']:<{w}}  {r['runtime'][:33]:<34}{r['mb']:7.1f}{ap}  {drop:<19}{p50}")
    if any(r["runtime"].startswith("TensorRT-RTX engine") for r in rows):
        lines.append("(engines are built here; they run where TensorRT-RTX and an RTX-class GPU are)")
    return "\n".join(lines)


def written_paths(report: dict) -> list[str]:
    """Every file and folder the demo wrote, in the order it wrote them."""
    paths = [report["data"], report["run"]]
    for r in report.get("onnx", {}).values():
        paths.append(r["path"])
    for r in report.get("openvino", {}).values():
        paths += [r["path"], str(Path(r["path"]).with_suffix(".bin"))]
    for e in report.get("engines", []):
        if "path" in e:
            paths += [e["path"], e["path"] + ".json"]
    if "predictions" in report:
        out = Path(report["predictions"]["out"])
        paths += sorted(str(p) for p in out.iterdir())
    return paths


def format_report(report: dict) -> str:
    """What `mrcnn demo` prints at its end: the checkpoint's COCO table, each export's table, AP drop and pairing,
    the engines, the bench table, the summary table and every path written."""
    from mrcnn.api.validate import format_ap_drop
    from mrcnn.deploy.bench import format_bench
    from mrcnn.evaluation.coco import format_table
    from mrcnn.evaluation.comparison import format_pairs

    lines = [f"PyTorch checkpoint {report['checkpoint']}", format_table(report["metrics"])]
    for name, r in [*report.get("onnx", {}).items(), *report.get("openvino", {}).items()]:
        v = r["validation"]
        lines += [
            f"{v['artifact']['runtime']}, {name}: {r['path']}",
            format_table(r["metrics"]),
            format_ap_drop(v),
            format_pairs(v["detections"]),
        ]
    for e in report.get("engines", []):
        if "path" in e:
            lines.append(
                f"TensorRT-RTX engine: {e['path']} ({e['mb']:.1f} MB, built in {e['seconds']:.1f} s on this "
                "machine; it runs where TensorRT-RTX and an RTX-class GPU are)"
            )
        else:
            lines.append(f"TensorRT-RTX engines: skipped, {e['skipped']}")
    if "bench" in report:
        lines.append(format_bench(report["bench"]))
    lines += ["", "summary", format_summary(report), "wrote:"] + [f"  {p}" for p in written_paths(report)]
    return "\n".join(lines)
