"""`mrcnn export --int8`: an explicitly quantized (Q/DQ) ONNX made by NVIDIA Model Optimizer (ModelOpt) from the
float32 export, calibrated on a dataset's images with the export's own preprocessing.

    Int8Options(data, images, method, seed, split) `mrcnn export --int8 --calib ...`; check_int8() its errors
    quantize_export(fp32_onnx, output, opts)      -> calibration images drawn, then quantize_onnx
    calibration_images(data, count, seed, split)   -> images drawn from a dataset split
    calibration_feeds(preprocess, images)          -> one {"images", "image_sizes"} feed per image
    quantize_onnx(fp32_onnx, output, images, ...)  -> the Q/DQ ModelProto written to `output` (atomically)

ModelOpt (`modelopt.onnx.quantization.quantize`, int8 mode) places the Q/DQ pairs by TensorRT's explicit-quantization
rules (symmetric INT8, per-channel weights, biases in float, Q/DQ grouped across concats) and calibrates the
activation ranges on ONNX Runtime's CPU provider; the rest of the graph stays float32. TensorRT (strongly typed) and
TensorRT-RTX build INT8 engines from it, OpenVINO turns it into an INT8 IR, and ONNX Runtime runs it as it is.
Flavours: portable and rtx (the trt flavour's plugin nodes would need TensorRT itself to calibrate). ModelOpt's
output has no metadata_props: ours are copied back, with `mrcnn.precision` int8 and `mrcnn.calibration` (method,
images, seed, dataset).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrcnn.data.layout import draw_images
from mrcnn.errors import MrcnnError, message_line
from mrcnn.model.preprocess import batch_images, resize_image, to_float_image

CALIBRATION_METHODS = ("entropy", "max")  # ModelOpt's int8 calibrators (max: the absolute maximum per tensor)
INT8_FLAVOURS = ("portable", "rtx")


@dataclass(frozen=True)
class Int8Options:
    """`mrcnn export --int8`: the calibration dataset (`--calib`, a COCO dataset folder as `train` takes), how many of
    its images (`--calib-images`, drawn with `seed` from `split`), and ModelOpt's calibration method."""

    data: str | Path
    images: int = 32
    method: str = "entropy"
    seed: int = 0
    split: str = "train2017"


def check_int8(opts: Int8Options, flavour: str, fp16: bool) -> None:
    """The --int8 errors that need nothing loaded: one MrcnnError line each."""
    if fp16:
        raise MrcnnError("--int8 and --fp16 exclude each other (the INT8 export's float parts are float32)")
    if flavour not in INT8_FLAVOURS:
        raise MrcnnError(
            f"--int8 takes --flavour {' or '.join(INT8_FLAVOURS)} (the trt flavour's plugin nodes would "
            "need TensorRT itself to calibrate)"
        )
    if opts.method not in CALIBRATION_METHODS:
        raise MrcnnError(f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, got {opts.method!r}")
    if opts.images < 1:
        raise MrcnnError(f"--calib-images must be >= 1, got {opts.images}")
    if not Path(opts.data).exists():
        raise MrcnnError(f"--calib {opts.data}: no such dataset")
    import_modelopt_quantize()  # before the export: a missing ModelOpt is one line, not a float32 file


def import_modelopt_quantize():
    """ModelOpt's ONNX quantize(), or one MrcnnError with what to install."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise MrcnnError(
            f"--int8 needs NVIDIA Model Optimizer ({message_line(e, 120)}); pip install 'mrcnn[int8]'"
        ) from None
    return quantize


def calibration_feeds(preprocess: dict, images: Sequence[torch.Tensor]) -> list[dict[str, np.ndarray]]:
    """One graph input per image ([3,H,W] uint8), preprocessed as the export's predictors do (resize to min / max
    size, pad to size_divisible and to at least pad_to)."""
    feeds = []
    pad_to = tuple(preprocess.get("pad_to") or ()) or None
    for im in images:
        resized = resize_image(to_float_image(im), int(preprocess["min_size"]), int(preprocess["max_size"]))
        batch, sizes = batch_images([resized], int(preprocess["size_divisible"]), pad_to)
        feeds.append({"images": batch.numpy(), "image_sizes": sizes.numpy()})
    return feeds


# what is quantized: the networks (backbone, FPN, RPN, box and mask heads): their convolutions, fully connected layers,
# pooling and upsampling, and the adds of feature maps (residual, FPN top-down) that keep a chain in INT8. Not the
# box arithmetic around them (decoding, clipping: adds, subs and muls of [N,4] tensors), the TopK / NMS inputs or
# RoIAlign's, which ModelOpt's defaults quantize too (on the demo model those cost ~10% of the detections' pairing).
NETWORK_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "Resize")


def network_nodes(model) -> list[str]:
    """The names of the nodes of NETWORK_OPS, and of the Adds whose output is a 4-D feature map (shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*inferred.graph.value_info, *inferred.graph.output]
        if v.type.tensor_type.HasField("shape")
    }
    return [
        n.name
        for n in model.graph.node
        if n.op_type in NETWORK_OPS or (n.op_type == "Add" and rank.get(n.output[0]) == 4)
    ]


def calibration_images(data: str | Path, count: int, seed: int = 0, split: str = "train2017", log=print):
    """`count` images ([3,H,W] uint8) drawn at random (`seed`) from a dataset split, unreadable ones skipped."""
    if count < 1:
        raise MrcnnError(f"--calib-images must be >= 1, got {count}")
    images = draw_images(data, split, count, seed, logger=log)
    if not images:
        raise MrcnnError(f"{data}: no readable image in the {split} split to calibrate with")
    return images


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol (get_next, and ModelOpt's get_first / rewind) over a list of
    feeds; it starts over after the last one (ModelOpt reads the data more than once)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            self.i = 0
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def get_first(self):
        return self.feeds[0]

    def rewind(self) -> None:
        self.i = 0


@contextlib.contextmanager
def _quiet_modelopt():
    """ModelOpt logs its steps (and, on a machine without NVML, that it cannot count GPUs) on its logger and stdout,
    ONNX Runtime's calibrators draw progress bars on stderr; our own lines say what happened (an error still
    raises)."""
    logger = logging.getLogger("modelopt")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def quantize_onnx(
    fp32_onnx: str | Path,
    output: str | Path,
    images: Sequence[torch.Tensor],
    *,
    method: str = "entropy",
    calibration: dict | None = None,
    log: Callable[[str], None] = print,
):
    """The Q/DQ version of an mrcnn float32 export (portable or rtx flavour), calibrated on `images` ([3,H,W] uint8,
    preprocessed as its metadata says), written to `output` with the export's metadata (precision int8,
    `calibration` as mrcnn.calibration). Returns the ModelProto."""
    import onnx

    from mrcnn.io import atomic_write

    quantize = import_modelopt_quantize()
    if method not in CALIBRATION_METHODS:
        raise MrcnnError(f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if not images:
        raise MrcnnError("--int8: no calibration images")
    src = onnx.load(str(fp32_onnx), load_external_data=False)
    meta = {p.key: p.value for p in src.metadata_props}
    flavour = meta.get("mrcnn.flavour")
    if flavour not in INT8_FLAVOURS:
        raise MrcnnError(
            f"--int8 takes the {' or '.join(INT8_FLAVOURS)} flavour (the trt flavour's plugin nodes need TensorRT "
            f"itself to calibrate), got {flavour}"
        )
    if meta.get("mrcnn.precision", "fp32") != "fp32":
        raise MrcnnError(f"--int8 quantizes a float32 export, this one is {meta['mrcnn.precision']} (drop --fp16)")
    feeds = calibration_feeds(json.loads(meta["mrcnn.preprocess"]), images)
    out = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".modelopt.onnx", dir=out.parent)
    os.close(fd)
    try:
        with _quiet_modelopt():
            quantize(
                str(fp32_onnx),
                quantize_mode="int8",
                calibration_data_reader=_Feeds(feeds),
                calibration_method=method,
                calibration_eps=["cpu"],
                high_precision_dtype="fp32",  # the float parts stay float32 (CPU runtimes; fp16 is `export --fp16`)
                output_path=tmp,
                log_level="ERROR",
                nodes_to_quantize=network_nodes(src),
            )
        model = onnx.load(tmp)
    except MrcnnError:
        raise
    except Exception as e:
        raise MrcnnError(f"ModelOpt could not quantize {Path(fp32_onnx).name}: {message_line(e, 300)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    n_q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    if n_q == 0:
        raise MrcnnError(f"ModelOpt quantized nothing in {Path(fp32_onnx).name} (no QuantizeLinear in its output)")
    meta["mrcnn.precision"] = "int8"
    meta["mrcnn.calibration"] = json.dumps({**(calibration or {}), "method": method, "quantizer": _quantizer()})
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name, model.producer_version = src.producer_name, src.producer_version
    onnx.checker.check_model(model)
    atomic_write(out, lambda t: onnx.save(model, t))
    log(f"quantized {n_q} tensors to INT8 (ModelOpt, {method} calibration on {len(feeds)} images)")
    return model


def quantize_export(fp32_onnx: str | Path, output: str | Path, opts: Int8Options, log: Callable[[str], None] = print):
    """`mrcnn export --int8`'s second step: `opts.images` calibration images drawn from `opts.data`, then
    quantize_onnx with the calibration recorded (dataset, split, images, seed, method)."""
    images = calibration_images(opts.data, opts.images, opts.seed, opts.split, log=log)
    log(f"calibrating INT8 ranges on {len(images)} images of {opts.data} ({opts.split}, seed {opts.seed})")
    calibration = {
        "data": str(Path(opts.data).resolve()),
        "split": opts.split,
        "images": len(images),
        "seed": opts.seed,
    }
    return quantize_onnx(fp32_onnx, output, images, method=opts.method, calibration=calibration, log=log)


def _quantizer() -> str:
    from importlib.metadata import version

    return f"nvidia-modelopt {version('nvidia-modelopt')}"
