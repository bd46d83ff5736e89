"""Artifacts and the runtimes that run them (docs/design.md: the runtime follows the artifact).

    load_artifact(path) -> predictor     .pt/.pth: PyTorch (model.Predictor);  .onnx: ONNX Runtime (OnnxPredictor);
                                         .plan/.engine: TensorRT or TensorRT-RTX (EnginePredictor);
                                         .xml: OpenVINO (OpenVinoPredictor, an IR from `mrcnn build --runtime openvino`)

A predictor maps `list[uint8 Tensor [3,H,W]]` to one torchvision-format dict per image (original pixels, pasted
masks) and has `.cfg`, `.class_names` and `.runtime` (what runs it, in words); mrcnn.evaluation.evaluate accepts
any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mrcnn.errors import MrcnnError

ARTIFACT_SUFFIXES = (".pt", ".pth", ".onnx", ".plan", ".engine", ".xml")
THREADED_SUFFIXES = (".onnx", ".xml")  # runtimes with their own thread pool: load_artifact(..., threads=N)


def check_artifact_type(path: str | Path) -> Path:
    """The artifact types a runtime exists for (.pt/.pth, .onnx, .plan/.engine, .xml), or one MrcnnError."""
    path = Path(path)
    if path.is_dir():
        best = next((path / n for n in ("model_final.pt", "model_best.pt", "last.pt") if (path / n).is_file()), None)
        if best is not None:
            raise MrcnnError(f"{path}: is a training run folder; give one of its checkpoints, e.g. {best}")
        raise MrcnnError(
            f"{path}: is a directory; expected a checkpoint (.pt), an export (.onnx), an engine (.plan) or an "
            "OpenVINO IR (.xml)"
        )
    if path.suffix.lower() not in ARTIFACT_SUFFIXES:
        raise MrcnnError(f"{path}: unsupported artifact type {path.suffix!r} (expected {', '.join(ARTIFACT_SUFFIXES)})")
    return path


def load_artifact(
    path: str | Path,
    device: str | None = None,
    log: Callable[[str], None] = print,
    overrides: list[str] | None = None,
    max_score_thresh: float | None = None,
    optimize: bool = True,
    precision: str = "fp32",
    **kwargs,
):
    """A predictor for a checkpoint (.pt/.pth), an exported model (.onnx), an engine (.plan/.engine; `plugins`: the
    plugin library an engine of the trt flavour loads, default the installed one) or an OpenVINO IR (.xml, on the
    CPU; `threads` as for .onnx). The predictor has `.cfg`, `.class_names` and `.runtime` (what runs it, in
    words). `overrides` (section.key=value inference settings, as `export --set` takes them) apply to a checkpoint;
    an exported model has its own built in. `max_score_thresh` lowers a checkpoint's box score threshold to it (an
    exported model's is fixed: `.cfg` tells it). `optimize`: a checkpoint runs with the inference levers
    (mrcnn.model.inference: same results within the design tolerances); `precision` "bf16" runs a checkpoint's
    networks in bfloat16 (an export's precision is fixed at export)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if device is not None:
        from mrcnn.device import parse_device

        parse_device(device)
    check_artifact_type(path)
    if overrides and suffix != ".pt" and suffix != ".pth":
        raise MrcnnError(f"{path}: an exported model's settings are fixed at export; --set applies to checkpoints")
    if precision != "fp32" and suffix not in (".pt", ".pth"):
        raise MrcnnError(
            f"{path}: an exported model's precision is fixed at export (`mrcnn export --fp16 / --int8`, "
            f"`mrcnn build --runtime openvino --precision`); --precision applies to checkpoints"
        )
    if suffix in (".plan", ".engine"):
        import torch

        from mrcnn.deploy.trt_predictor import EnginePredictor

        if device is not None and not str(device).startswith("cuda") and torch.cuda.is_available():
            raise MrcnnError(f"--device {device}: an engine runs on a CUDA GPU")  # (without one: the checks say so)
        pred = EnginePredictor(path, log=log, **kwargs)
        pred.runtime = f"{pred.info['runtime']} {pred.trt.__version__}"
        return pred
    if suffix == ".onnx":
        from mrcnn.deploy.ort_predictor import OnnxPredictor

        providers = ["CPUExecutionProvider"] if device == "cpu" else None  # None: CUDA where ORT and a GPU allow
        pred = OnnxPredictor(path, providers=providers, log=log, **kwargs)
        pred.runtime = f"ONNX Runtime ({', '.join(p.replace('ExecutionProvider', '') for p in pred.providers)})"
        return _with_precision(pred)
    if suffix == ".xml":
        from mrcnn.deploy.openvino_runtime import OpenVinoPredictor

        if device is not None and device != "cpu":  # (eval / validate / bench default to cuda where there is one)
            log(f"{path.name}: an OpenVINO IR runs on the CPU (not {device})")
        kwargs.pop("spin", None)  # (ONNX Runtime's thread option)
        pred = OpenVinoPredictor(path, log=log, **kwargs)
        pred.runtime = f"OpenVINO {pred.version} (CPU, {pred.precision})"
        return _with_precision(pred)
    else:  # .pt / .pth
        import torch

        from mrcnn.model.checkpoint import load_model
        from mrcnn.model.predictor import Predictor

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, cfg, names = load_model(path, dev, overrides, max_score_thresh)
        pred = Predictor(model, cfg.input, optimize=optimize, precision=precision, **kwargs)
        pred.cfg, pred.class_names = cfg, names
        pred.runtime = f"PyTorch ({dev}{', bf16' if precision == 'bf16' else ''})"
        return pred


def _with_precision(pred):
    """An export's runtime line names the graph's precision where it is not float32 (`, int8`, `, fp16`)."""
    graph = pred.metadata.get("mrcnn.precision", "fp32")
    if graph != "fp32":
        pred.runtime += f", {graph}"
    return pred
