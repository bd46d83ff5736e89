"""A TensorRT or TensorRT-RTX engine (`.plan` / `.engine` from `mrcnn build`) as a predictor, with the interface of
the other runtimes' (ExportedPredictor: the preprocessing and postprocessing its metadata describes).

Before the engine is deserialized, its description (ENGINE.json beside it, written by `mrcnn build`) is checked, each
failure one MrcnnError line: the runtime is importable (which package to install), it is the version that built the
engine, a CUDA GPU is visible, its compute capability is the one the engine was built for, and the plugin library
(for an engine of the trt flavour that does not carry it) is there and registers the creators the engine needs.

A call runs on torch's current CUDA stream with torch tensors as the engine's buffers: the input shapes are set per
call within the engine's profile (a batch above its largest is split, smaller than its smallest filled; an image
size outside it is one error line naming the profile).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from mrcnn.deploy.exported import ExportedPredictor
from mrcnn.errors import MrcnnError

OUTPUTS = ("boxes", "scores", "labels", "masks", "num_detections")


def read_description(path: Path) -> dict:
    """The engine's .plan.json (what `mrcnn build` wrote beside it), or one error line."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        raise MrcnnError(
            f"{path}: no {sidecar.name} beside it (`mrcnn build` writes one: it says which runtime, GPU, "
            "plugins and profile the engine has); rebuild it with mrcnn build"
        )
    try:
        info = json.loads(sidecar.read_text())
        _ = info["runtime"], info["runtime_version"], info["profile"]["images"], info["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MrcnnError(f"{sidecar}: not an mrcnn engine description ({type(e).__name__}: {e})") from None
    return info


def check_runtime(path: Path, info: dict, plugins: str | Path | None = None):
    """The checks of the module docstring, in order; returns the runtime's module."""
    from mrcnn.deploy.build import import_runtime

    runtime = info["runtime"]
    trt = import_runtime(runtime)
    if trt.__version__ != info["runtime_version"]:
        raise MrcnnError(
            f"{path} was built with {runtime} {info['runtime_version']} and this is {trt.__version__}: "
            "engines run on the version that built them; rebuild it with mrcnn build"
        )
    if not torch.cuda.is_available():
        gpu = "an RTX-class GPU" if runtime == "tensorrt-rtx" else "a CUDA GPU"
        raise MrcnnError(f"{path}: running a {runtime} engine needs {gpu}, and torch sees none here")
    built_for = (info.get("gpu") or {}).get("compute_capability")
    here = "{}.{}".format(*torch.cuda.get_device_capability())
    if built_for and built_for != here:
        raise MrcnnError(
            f"{path} was built for compute capability {built_for} ({info['gpu'].get('name')}); this GPU "
            f"is {here} ({torch.cuda.get_device_name()}): rebuild it here with mrcnn build"
        )
    need = info.get("plugins")
    if need and not need.get("serialized"):
        from mrcnn.deploy import trt_plugins

        trt_plugins.load(trt, plugins, tuple(need.get("ops", trt_plugins.PLUGIN_OPS)))
    return trt


def check_profile(path: Path, profile: tuple, batch: int, height: int, width: int) -> None:
    """One error line naming the profile when a padded batch [batch, 3, height, width] is outside it."""
    (b0, h0, w0), (b1, h1, w1) = profile
    if not (b0 <= batch <= b1 and h0 <= height <= h1 and w0 <= width <= w1):
        raise MrcnnError(
            f"{path}: input {batch}x{height}x{width} (BxHxW) is outside the engine's profile, min "
            f"{b0}x{h0}x{w0}, max {b1}x{h1}x{w1}; rebuild with mrcnn build --min-shape / --max-shape"
        )


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
        trt.int64: torch.int64,
    }
    return table[dt]


class EnginePredictor(ExportedPredictor):
    """`EnginePredictor(path)(images)`: an engine on TensorRT / TensorRT-RTX (ExportedPredictor's interface)."""

    def __init__(
        self,
        path: str | Path,
        paste: bool = True,
        plugins: str | Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise MrcnnError(f"{path}: no such engine file")
        info = read_description(path)
        super().__init__(path, info["metadata"], paste)
        self.info = info
        trt = self.trt = check_runtime(path, info, plugins)
        lo, _, hi = (tuple(info["profile"]["images"][k]) for k in ("min", "opt", "max"))
        self.profile = (lo, hi)
        self.max_batch = hi[0]
        self.static_batch = lo[0] if lo[0] == hi[0] and lo[0] > 1 else None
        self.static_size = (hi[1], hi[2]) if lo[1:] == hi[1:] else None
        errors: list[str] = []

        class Logger(trt.ILogger):
            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    errors.append(str(msg))

        self._logger = Logger()
        trt.ILogger.__init__(self._logger)
        self.trt_runtime = trt.Runtime(self._logger)
        self.engine = self.trt_runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            reason = " ".join((errors or ["no reason given"])[-1].split())[:300]
            raise MrcnnError(f"{path}: {info['runtime']} could not deserialize it: {reason}")
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda", torch.cuda.current_device())
        log(f"{path.name}: {info['runtime']} {trt.__version__} engine, profile images min {lo} max {hi} (B, H, W)")

    def run(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """The engine on a padded batch [B,3,H,W] float 0..1 and sizes [B,2]: fixed-size outputs, on the GPU."""
        B, _, H, W = images.shape
        check_profile(self.path, self.profile, B, H, W)
        trt, ctx = self.trt, self.context
        inputs = {
            "images": images.to(self.device, torch.float32).contiguous(),
            "image_sizes": image_sizes.to(self.device, torch.int64).contiguous(),
        }
        for name, t in inputs.items():
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in OUTPUTS:
            shape = tuple(ctx.get_tensor_shape(name))
            outputs[name] = torch.empty(
                shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device=self.device
            )
            ctx.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise MrcnnError(f"{self.path}: the engine failed to run (see the {self.info['runtime']} log)")
        return outputs
