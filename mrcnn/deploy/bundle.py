"""Polygraphy bundles: a proof that an engine equals ONNX Runtime, made where the export is and finished on a GPU
machine with TensorRT (`mrcnn validate MODEL.onnx --data DATA --bundle DIR`).

    write_bundle(onnx, images, folder) -> Path   the bundle folder:
        model.onnx      the export (a hard link where the file system allows, else a copy)
        inputs.json     polygraphy input data: each image preprocessed as the export's metadata says (one feed each)
        outputs.json    ONNX Runtime's outputs on those feeds (polygraphy RunResults)
        check.sh        the `polygraphy run --trt` command that builds the engine from model.onnx (with our plugin
                        library for the trt flavour; TensorRT-RTX for the rtx flavour), feeds inputs.json and compares
                        every output with outputs.json within the tolerances of docs/design.md §6
        README.md       what the bundle is, the command, and the same check on ONNX Runtime (`--onnxrt`)

Tolerances per output (absolute; relative 0, so only the absolute one decides): float32 exports the design's
whole-pipeline tolerances (boxes 1e-2 px, scores 1e-4, masks 1e-3, labels and counts exact); `--fp16` exports those
of a float16 network (boxes 0.5 px, scores 2e-3, masks 4e-3). INT8 exports are compared by AP (`mrcnn validate`):
two runtimes round a Q/DQ graph differently, element by element. polygraphy builds with TF32 off.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from mrcnn.deploy.ort_predictor import OnnxPredictor
from mrcnn.errors import MrcnnError
from mrcnn.io import current_umask

TOLERANCES = {
    "fp32": {"boxes": 1e-2, "scores": 1e-4, "masks": 1e-3, "labels": 0, "num_detections": 0},
    "fp16": {"boxes": 0.5, "scores": 2e-3, "masks": 4e-3, "labels": 0, "num_detections": 0},
}
FILES = ("model.onnx", "inputs.json", "outputs.json", "check.sh", "README.md")
RUNNER = "onnxrt-runner-mrcnn"  # the name the reference outputs carry in outputs.json


def import_polygraphy():
    try:
        from polygraphy import json as pjson
        from polygraphy.comparator import IterationResult, RunResults
        from polygraphy.logger import G_LOGGER
    except ImportError:
        raise MrcnnError("--bundle needs polygraphy (pip install 'mrcnn[int8]' or pip install polygraphy)") from None
    return pjson, IterationResult, RunResults, G_LOGGER


def tolerances(precision: str, path: Path) -> dict[str, float]:
    if precision not in TOLERANCES:
        raise MrcnnError(
            f"{path}: an {precision} export is compared by AP (`mrcnn validate`), not element by element: "
            "two runtimes round a quantized graph differently; bundle its float32 export"
        )
    return TOLERANCES[precision]


def check_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MrcnnError(f"{folder}: exists and is not an empty folder; --bundle writes a new one")


def profile_shapes(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, tuple[list[int], list[int]]]:
    """Each input's smallest and largest shape over the feeds (the engine's profile: min, and opt = max)."""
    out = {}
    for name in feeds[0]:
        shapes = np.array([f[name].shape for f in feeds])
        out[name] = (shapes.min(axis=0).tolist(), shapes.max(axis=0).tolist())
    return out


def _shape_args(shapes: dict[str, tuple[list[int], list[int]]]) -> list[str]:
    def spec(which: int) -> list[str]:
        return [f"{name}:[{','.join(str(d) for d in s[which])}]" for name, s in shapes.items()]

    return ["--trt-min-shapes", *spec(0), "--trt-opt-shapes", *spec(1), "--trt-max-shapes", *spec(1)]


def check_command(flavour: str, precision: str, tol: dict[str, float], shapes: dict | None, runtime: str) -> str:
    """The `polygraphy run` command line (run in the bundle folder). runtime "trt": TensorRT (or TensorRT-RTX for the
    rtx flavour) on a GPU; "onnxrt": ONNX Runtime (standard ops only: not the trt flavour)."""
    cmd = ["polygraphy", "run", "model.onnx"]
    if runtime == "trt":
        cmd.append("--trt")
        if flavour == "trt":
            cmd += ["--plugins", '"$PLUGINS"']
        if precision == "fp16":
            cmd.append("--strongly-typed")
        if shapes:
            cmd += _shape_args(shapes)
    else:
        cmd.append("--onnxrt")
    cmd += ["--load-inputs", "inputs.json", "--load-outputs", "outputs.json"]
    cmd += ["--atol", *[f"{k}:{v:g}" for k, v in tol.items()], "--rtol", "0", "--check-error-stat", "elemwise"]
    return " ".join(c if c.startswith('"$') else shlex.quote(c) for c in cmd)


def _script(flavour: str, trt_cmd: str) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# An mrcnn polygraphy bundle: build a TensorRT engine from model.onnx on this GPU machine, run it on",
        "# inputs.json and compare every output with ONNX Runtime's (outputs.json). Exit 0: the engine equals it.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    if flavour == "trt":
        lines += [
            "# our TensorRT plugin library: $1, else $MRCNN_TRT_PLUGINS, else the one installed with mrcnn",
            'PLUGINS=${1:-${MRCNN_TRT_PLUGINS:-$(python3 -c "from mrcnn.deploy.trt_plugins import library_path; '
            "print(library_path() or '')\")}}",
            '[ -n "$PLUGINS" ] || { echo "error: no mrcnn TensorRT plugin library: give its path" >&2; exit 2; }',
        ]
    if flavour == "rtx":
        lines += ["# the rtx flavour: TensorRT-RTX (an RTX GPU)", "export POLYGRAPHY_USE_TENSORRT_RTX=1"]
    return "\n".join([*lines, trt_cmd, ""])


def _readme(onnx: Path, flavour: str, precision: str, n: int, tol: dict, trt_cmd: str, ort_cmd: str | None) -> str:
    parts = [
        "# mrcnn polygraphy bundle",
        "",
        f"From `{onnx.name}` ({flavour} flavour, {precision}): {n} image(s) preprocessed as its metadata says "
        "(`inputs.json`) and ONNX Runtime's outputs on them (`outputs.json`, runner `" + RUNNER + "`).",
        "",
        "On a machine with TensorRT and a GPU (polygraphy installed), `bash check.sh` builds an engine from "
        "`model.onnx` and compares each output element with ONNX Runtime's; exit 0 when all are within:",
        "",
        "| output | absolute tolerance |",
        "|---|---|",
        *[f"| {k} | {v:g} |" for k, v in tol.items()],
        "",
        "```",
        trt_cmd,
        "```",
    ]
    if flavour == "trt":
        parts += ["", "`$PLUGINS`: our plugin library (`bash check.sh /path/to/libmrcnn_trt_plugins.so`)."]
    if ort_cmd:
        parts += ["", "The same check on ONNX Runtime (any machine):", "", "```", ort_cmd, "```"]
    return "\n".join([*parts, ""])


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_bundle(
    onnx: str | Path,
    images: Sequence[Tensor],
    folder: str | Path,
    log: Callable[[str], None] = print,
    predictor: OnnxPredictor | None = None,
) -> Path:
    """The polygraphy bundle of export `onnx` on `images` ([3,H,W] uint8, one feed each), written to `folder`
    (new or empty) as a whole: the files appear together or not at all."""
    onnx, folder = Path(onnx), Path(folder)
    pjson, IterationResult, RunResults, G_LOGGER = import_polygraphy()
    check_folder(folder)
    if not images:
        raise MrcnnError("--bundle: no image to feed")
    if predictor is None:  # validate passes the session it already has
        predictor = OnnxPredictor(onnx, providers=["CPUExecutionProvider"], log=log)
    flavour = predictor.flavour
    precision = predictor.metadata.get("mrcnn.precision", "fp32")
    tol = tolerances(precision, onnx)
    feeds, results = [], []
    for image in images:
        for batch, sizes, _ in predictor.inputs([image]):
            feed = OrderedDict(images=batch.numpy(), image_sizes=sizes.numpy())
            outputs = predictor.run(batch, sizes)
            feeds.append(feed)
            results.append(
                IterationResult(outputs=OrderedDict((k, v.numpy()) for k, v in outputs.items()), runner_name=RUNNER)
            )
    static = predictor.static_batch is not None and predictor.static_size is not None
    trt_cmd = check_command(flavour, precision, tol, None if static else profile_shapes(feeds), "trt")
    ort_cmd = None if flavour == "trt" else check_command(flavour, precision, tol, None, "onnxrt")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # the mode a plain mkdir gives (mkdtemp's is 0700)
        _link_or_copy(onnx, tmp / "model.onnx")
        with G_LOGGER.verbosity(G_LOGGER.WARNING):  # not its "Saving ... to <temporary folder>" lines
            pjson.save_json(feeds, str(tmp / "inputs.json"), description="mrcnn bundle inputs")
            RunResults([(RUNNER, results)]).save(str(tmp / "outputs.json"))
        (tmp / "check.sh").write_text(_script(flavour, trt_cmd))
        (tmp / "check.sh").chmod(0o755)
        (tmp / "README.md").write_text(_readme(onnx, flavour, precision, len(feeds), tol, trt_cmd, ort_cmd))
        if folder.exists():
            folder.rmdir()  # empty (checked above)
        tmp.rename(folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MrcnnError(f"{folder}: cannot write the bundle ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {folder} ({len(feeds)} feeds; check on a GPU machine: bash {folder / 'check.sh'})")
    return folder
