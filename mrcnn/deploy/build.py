"""`mrcnn build`: an exported ONNX -> a serialized TensorRT / TensorRT-RTX engine (`.plan`), written atomically, with a
`.plan.json` beside it that keeps the ONNX's description (config, classes, preprocessing) and the shape profile.

    build_engine(onnx, runtime, min_shape, opt_shape, max_shape) -> memoryview  the engine's bytes
    default_profile(onnx metadata, graph input dims, batch)     -> (min, opt, max), each (B, H, W) of `images`
    build_artifact(onnx, output, ...)                            -> Path      `mrcnn build`

Runtimes: `tensorrt-rtx` (`import tensorrt_rtx`; its builder runs on a machine without a GPU, CPU-only AOT, and has
no plugin layers: it takes the `rtx` flavour) and `tensorrt` (`import tensorrt`, on a GPU; the `portable` flavour
uses its RoiAlign and NMS layers, the `trt` flavour's mrcnn nodes become our IPluginV3 plugins: the plugin library
is loaded into its registry, `BuildOptions.plugins` or the installed one, and `serialize_plugins` puts it inside the
engine). Running an engine needs a GPU with that runtime. The `.plan.json` sidecar keeps the ONNX's description,
the profile, the runtime and its version, the GPU the engine was built for and the plugin library (name, SHA-256).

`--runtime openvino` writes an OpenVINO IR (.xml + .bin) instead of an engine: mrcnn.deploy.openvino_runtime.

Precision: an engine computes in the types of its graph. An `export --fp16` graph (metadata mrcnn.precision fp16)
builds strongly typed: float16 networks, float32 ops between them, on both runtimes; so does an `export --int8`
graph (int8: its Q/DQ nodes, explicit quantization, with the float parts in float32). `--fp16` on a float32 graph
is full TensorRT's weakly typed FP16 flag (the builder may pick float16 per layer); TensorRT-RTX is strongly typed
only, so there it is one error line that says to export with --fp16.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mrcnn.deploy.exported import onnx_interface
from mrcnn.errors import MrcnnError, message_line

RUNTIMES = {"tensorrt-rtx": ("tensorrt_rtx", "tensorrt-rtx-cu13"), "tensorrt": ("tensorrt", "tensorrt")}
BUILD_RUNTIMES = (*RUNTIMES, "openvino")  # `mrcnn build --runtime`: the engines' runtimes, and OpenVINO's IR
Shape = tuple[int, int, int]  # (batch, height, width) of the `images` input


@dataclass
class BuildOptions:
    """What `mrcnn build` takes beyond the profile: --fp16, --plugins LIB, --serialize-plugins, --timing-cache
    FILE (read when it exists, written after the build), --workspace MiB (the builder's workspace pool)."""

    fp16: bool = False
    plugins: Path | None = None
    serialize_plugins: bool = False
    timing_cache: Path | None = None
    workspace_mib: int | None = None


def import_runtime(runtime: str):
    """The runtime's Python module, or one MrcnnError with the package to install."""
    if runtime not in RUNTIMES:
        raise MrcnnError(f"unknown runtime {runtime!r}; choose one of: {', '.join(BUILD_RUNTIMES)}")
    module, package = RUNTIMES[runtime]
    try:
        import importlib

        return importlib.import_module(module)
    except ImportError as e:
        raise MrcnnError(
            f"--runtime {runtime}: cannot import {module} ({message_line(e, 120)}); pip install {package}"
        ) from None


def engine_runtime(flavour: str) -> str:
    """The runtime an export flavour's engine is built with: rtx -> tensorrt-rtx, trt / portable -> tensorrt."""
    return "tensorrt-rtx" if flavour == "rtx" else "tensorrt"


def parse_shape(text: str, what: str) -> Shape:
    """'BxHxW' (e.g. 1x800x1344) -> (B, H, W), or one MrcnnError."""
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise MrcnnError(f"{what} {text!r}: expected BxHxW with positive integers, e.g. 1x800x1344")
    return dims  # type: ignore[return-value]


def default_profile(meta: dict, dims: Sequence[int | None], batch: int = 1) -> tuple[Shape, Shape, Shape]:
    """The shape profile of `images` when none is given: static dims as they are; a dynamic batch 1..`batch`
    (optimised for `batch`); a dynamic size from the preprocessing: the padded size where the model pads every batch
    to one (`pad_to`), else min (size_divisible)², opt (min_size, max_size) and max max_size², rounded up to
    size_divisible (R-50: 800x1344 and 1344x1344)."""
    pre = json.loads(meta.get("mrcnn.preprocess", "{}"))
    b, _, h, w = (list(dims) + [None] * 4)[:4]
    bmin, bopt, bmax = (b, b, b) if b else (1, batch, batch)
    if h and w:
        sizes = [(h, w)] * 3
    elif pre.get("pad_to"):
        sizes = [tuple(pre["pad_to"])] * 3
    else:
        div = int(pre.get("size_divisible", 32))
        up = lambda v: int(math.ceil(v / div) * div)  # noqa: E731
        lo, hi = up(pre.get("min_size", 800)), up(pre.get("max_size", 1333))
        sizes = [(div, div), (lo, hi), (hi, hi)]
    return tuple((bb, *s) for bb, s in zip((bmin, bopt, bmax), sizes, strict=True))  # type: ignore[return-value]


class _Errors:
    """A TensorRT logger that keeps the error messages (the builder reports its reasons only through it)."""

    def __init__(self, trt) -> None:
        errors = self.errors = []

        class Logger(trt.ILogger):
            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    errors.append(str(msg))

        self.logger = Logger()
        trt.ILogger.__init__(self.logger)


def _hint(flavour: str, runtime: str) -> str:
    if runtime == "tensorrt-rtx" and flavour != "rtx":
        return (
            "; TensorRT-RTX has no plugin layers, RoiAlign or NMS kernel, so it takes the rtx flavour: "
            "mrcnn export CKPT --flavour rtx"
        )
    return ""


def _check_flavour(path: Path, flavour: str, runtime: str) -> None:
    """Before parsing: TensorRT-RTX's parser would find our creators and then abort the process when it adds a
    plugin layer (it has none), so a trt-flavour graph never reaches it."""
    if runtime == "tensorrt-rtx" and flavour == "trt":
        raise MrcnnError(
            f"{path}: the trt flavour's mrcnn nodes are TensorRT plugins and TensorRT-RTX has no plugin "
            "layers: export the rtx flavour (mrcnn export CKPT --flavour rtx) for TensorRT-RTX, or build "
            "this one with --runtime tensorrt"
        )


def _gpu(runtime: str) -> dict:
    """The GPU an engine is built for: name and compute capability; full TensorRT builds on one (one error line where
    none is visible). TensorRT-RTX builds for RTX-class GPUs without one (the sidecar says so)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    if runtime == "tensorrt":
        raise MrcnnError(
            "--runtime tensorrt builds on the GPU the engine will run on, and torch sees no CUDA GPU "
            "here (TensorRT-RTX builds without one: export --flavour rtx, build --runtime tensorrt-rtx)"
        )
    return {"name": None, "compute_capability": None, "note": "built without a GPU, for RTX-class GPUs"}


def _precision(meta: dict, runtime: str, fp16: bool) -> str:
    """The engine's precision: the graph's (`fp32` / `fp16`), or `fp16-weak` for --fp16 on a float32 graph
    (tensorrt only)."""
    graph = meta.get("mrcnn.precision", "fp32")
    if fp16 and graph == "int8":
        raise MrcnnError(
            "--fp16: an INT8 (Q/DQ) graph builds strongly typed, in the types its Q/DQ nodes and float parts have; "
            "drop --fp16"
        )
    if not fp16 or graph != "fp32":
        return graph
    if runtime == "tensorrt-rtx":
        raise MrcnnError(
            "--fp16: TensorRT-RTX builds the types the graph has (strongly typed) and this graph is "
            "float32; export it with `mrcnn export CKPT --flavour rtx --fp16` and build that"
        )
    return "fp16-weak"


def _configure(trt, config, runtime: str, precision: str, opts: BuildOptions, plugin_lib: Path | None):
    """The builder config's options: weak FP16, workspace, timing cache (returned, to save after the build), the
    plugin library serialized into the engine."""
    if precision == "fp16-weak":
        if not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11: strongly typed only
            raise MrcnnError(
                f"--fp16: {runtime} {trt.__version__} builds the types the graph has (strongly typed); "
                "export with `mrcnn export CKPT --fp16` and build that"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mib) << 20)
    cache = None
    if opts.timing_cache is not None:
        blob = opts.timing_cache.read_bytes() if opts.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    if opts.serialize_plugins and plugin_lib is not None:
        config.plugins_to_serialize = [str(plugin_lib)]
    return cache


def _profile(path: Path, meta: dict, dims: list, given: Sequence[Shape | None], batch: int) -> list[Shape]:
    """The profile's (min, opt, max) shapes of `images`: given ones, the rest from default_profile; checked."""
    shapes = [tuple(g) if g is not None else d for g, d in zip(given, default_profile(meta, dims, batch), strict=True)]
    lo, mid, hi = shapes
    if not all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
        raise MrcnnError(f"shape profile must have min <= opt <= max in every dim, got {lo}, {mid}, {hi}")
    for name, d in zip(("batch", "height", "width"), range(3), strict=True):
        fixed = dims[0 if d == 0 else d + 1]
        if fixed and not lo[d] == mid[d] == hi[d] == fixed:
            raise MrcnnError(f"{path}: the model's {name} is fixed at {fixed}; the profile asks for {lo[d]}..{hi[d]}")
    div = int(json.loads(meta.get("mrcnn.preprocess", "{}")).get("size_divisible", 32))
    bad = [s for s in shapes if s[1] % div or s[2] % div]
    if bad:
        raise MrcnnError(f"image sizes of the profile must be multiples of size_divisible={div}, got {bad[0][1:]}")
    return shapes


def _build(
    path: Path, runtime: str, given: Sequence[Shape | None], batch: int, log: Callable[[str], None], opts: BuildOptions
):
    """(engine bytes, ONNX metadata, profile (min, opt, max), the sidecar's runtime fields, precision)."""
    if path.is_dir():
        raise MrcnnError(f"{path}: is a directory; `mrcnn build` takes an exported model (.onnx)")
    if not path.is_file():
        raise MrcnnError(f"{path}: no such ONNX file")
    if batch < 1:
        raise MrcnnError(f"--batch must be >= 1, got {batch}")
    if opts.workspace_mib is not None and opts.workspace_mib < 1:
        raise MrcnnError(f"--workspace must be >= 1 (MiB), got {opts.workspace_mib}")
    if opts.timing_cache is not None and opts.timing_cache.is_dir():
        raise MrcnnError(f"--timing-cache {opts.timing_cache}: is a directory, expected a file")
    meta, dims = onnx_interface(path)
    flavour = meta["mrcnn.flavour"]
    _check_flavour(path, flavour, runtime)
    precision = _precision(meta, runtime, opts.fp16)
    shapes = _profile(path, meta, dims, given, batch)
    lo, mid, hi = shapes
    plugin_lib = None
    if runtime == "tensorrt" and (flavour == "trt" or opts.plugins is not None):
        from mrcnn.deploy import trt_plugins

        plugin_lib = trt_plugins.require_library(opts.plugins)
    trt = import_runtime(runtime)
    gpu = _gpu(runtime)
    if plugin_lib is not None:
        from mrcnn.deploy import trt_plugins

        trt_plugins.load(trt, plugin_lib, trt_plugins.graph_ops(path))
    errors = _Errors(trt)
    builder = trt.Builder(errors.logger)
    flags = 0  # TensorRT-RTX: strongly typed always
    if runtime == "tensorrt" and precision in ("fp16", "int8"):  # int8: explicit quantization (Q/DQ)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, errors.logger)
    if not parser.parse_from_file(str(path)):
        first = str(parser.get_error(0)) if parser.num_errors else (errors.errors or ["unknown error"])[0]
        raise MrcnnError(
            f"{runtime} cannot parse {path.name} ({flavour} flavour): "
            f"{' '.join(first.split())[:300]}{_hint(flavour, runtime)}"
        )
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", *[(b, 3, h, w) for b, h, w in shapes])
    profile.set_shape("image_sizes", *[(b, 2) for b, _, _ in shapes])
    config.add_optimization_profile(profile)
    cache = _configure(trt, config, runtime, precision, opts, plugin_lib)
    log(
        f"building a {runtime} {trt.__version__} {precision} engine from {path.name} ({flavour} flavour), images "
        f"min {lo} opt {mid} max {hi} (B, H, W)"
    )
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        reason = " ".join((errors.errors or ["no reason given"])[-1].split())[:300]
        raise MrcnnError(f"{runtime} could not build an engine from {path.name}: {reason}{_hint(flavour, runtime)}")
    log(f"built in {time.perf_counter() - t0:.1f} s")
    if cache is not None:
        from mrcnn.io import atomic_write

        blob = cache.serialize()
        atomic_write(opts.timing_cache, lambda tmp: Path(tmp).write_bytes(blob))
    info = {"runtime": runtime, "runtime_version": trt.__version__, "gpu": gpu}
    if plugin_lib is not None:
        from mrcnn.deploy import trt_plugins

        info["plugins"] = {
            **trt_plugins.file_summary(plugin_lib),
            "serialized": bool(opts.serialize_plugins),
            "ops": sorted(trt_plugins.graph_ops(path)),
        }
    return memoryview(plan), meta, shapes, info, precision  # the engine's buffer, not a copy of it


def build_engine(
    onnx_path: str | Path,
    runtime: str = "tensorrt-rtx",
    min_shape: Shape | None = None,
    opt_shape: Shape | None = None,
    max_shape: Shape | None = None,
    batch: int = 1,
    options: BuildOptions | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> memoryview:
    """The serialized engine of an mrcnn ONNX for `runtime`, with one optimisation profile (shapes of `images`;
    those not given come from default_profile). One MrcnnError line for every failure, with the builder's reason."""
    return _build(Path(onnx_path), runtime, (min_shape, opt_shape, max_shape), batch, log, options or BuildOptions())[0]


def build_artifact(
    onnx_path: str | Path,
    output: str | Path | None = None,
    *,
    runtime: str = "tensorrt-rtx",
    min_shape: Shape | None = None,
    opt_shape: Shape | None = None,
    max_shape: Shape | None = None,
    batch: int = 1,
    options: BuildOptions | None = None,
    precision: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """`mrcnn build ONNX`: the engine at `output` (default: the ONNX with suffix .plan) and its description at
    `output`.json, both written atomically; nothing is written when the build fails. `runtime="openvino"`: an
    OpenVINO IR instead (mrcnn.deploy.openvino_runtime.build_ir; `precision` f32 or bf16, its inference hint)."""
    from mrcnn.io import atomic_write

    if runtime == "openvino":
        opts = options or BuildOptions()
        engine_only = {
            "--min-shape": min_shape,
            "--opt-shape": opt_shape,
            "--max-shape": max_shape,
            "--batch": batch if batch != 1 else None,
            "--fp16": opts.fp16 or None,
            "--plugins": opts.plugins,
            "--serialize-plugins": opts.serialize_plugins or None,
            "--timing-cache": opts.timing_cache,
            "--workspace": opts.workspace_mib,
        }
        given = [flag for flag, v in engine_only.items() if v is not None]
        if given:
            raise MrcnnError(
                f"{', '.join(given)}: TensorRT build options; an OpenVINO IR takes any batch and image size "
                "(its precision: --precision f32|bf16)"
            )
        from mrcnn.deploy.openvino_runtime import build_ir

        return build_ir(onnx_path, output, precision=precision or "f32", log=log)
    if precision is not None:
        raise MrcnnError(
            f"--precision applies to --runtime openvino; a {runtime} engine computes in its graph's types "
            "(mrcnn export --fp16 / --int8)"
        )
    src = Path(onnx_path)
    out = Path(output) if output is not None else src.with_suffix(".plan")
    from mrcnn.io import check_writable_file

    check_writable_file(out, "-o")
    plan, meta, shapes, runtime_info, precision = _build(
        src, runtime, (min_shape, opt_shape, max_shape), batch, log, options or BuildOptions()
    )
    info = {
        **runtime_info,
        "precision": precision,
        "onnx": str(src.resolve()),
        "profile": {"images": {k: list(s) for k, s in zip(("min", "opt", "max"), shapes, strict=True)}},
        "metadata": meta,
    }
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(plan))
    sidecar = out.with_name(out.name + ".json")
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1, sort_keys=True)))
    log(f"wrote {out} ({plan.nbytes / 1e6:.1f} MB) and {sidecar.name}")
    return out


__all__ = [
    "BUILD_RUNTIMES",
    "RUNTIMES",
    "BuildOptions",
    "build_artifact",
    "build_engine",
    "default_profile",
    "engine_runtime",
    "import_runtime",
    "parse_shape",
]
