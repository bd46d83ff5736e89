"""`mrcnn export`: checkpoint -> self-describing ONNX (flavour `trt`, `portable` or `rtx`; float32, or with --fp16
the networks in float16), written atomically.

Path: torch.export (non-strict) of the eval forward with the model's custom ops as torch.ops.mrcnn.* nodes
(the model's Ops with backend "native"; only their fake kernels run while tracing), then torch.onnx's dynamo translation
with a custom_translation_table per flavour (export/translations.py). RoIAlign comes from torchlib's
torchvision::roi_align translation (ONNX RoiAlign-16, coordinate_transformation_mode output_half_pixel for
aligned=False, half_pixel for aligned=True).

Graph interface:
    inputs   images [B,3,H,W] float32 RGB 0..1, zero-padded (H, W multiples of size_divisible)
             image_sizes [B,2] int64 (h, w) of the unpadded (resized) images
    outputs  boxes [B,K,4] float32 (resized-image pixels), scores [B,K], labels [B,K] int64,
             masks [B,K,M,M] float32 probabilities, num_detections [B] int64; slots >= num_detections are zero
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from mrcnn.errors import MrcnnError
from mrcnn.export import quantize

FLAVOURS = ("trt", "portable", "rtx")
MIN_OPSET = 16  # RoiAlign-16: coordinate_transformation_mode (output_half_pixel == torchvision aligned=False)
DEFAULT_OPSET = 18
INPUT_NAMES = ["images", "image_sizes"]
OUTPUT_NAMES = ["boxes", "scores", "labels", "masks", "num_detections"]
MAX_SIDE = 8192  # upper bound of the dynamic image size


class ExportWrapper(torch.nn.Module):
    """The eval forward with tuple outputs in OUTPUT_NAMES order."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor):
        out = self.model(images, image_sizes)
        return tuple(out[k] for k in OUTPUT_NAMES)


@contextlib.contextmanager
def _quiet_loggers():
    """torch.onnx / onnxscript log warnings (opset conversion notes) that our own log line replaces."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


@contextlib.contextmanager
def _without_slices_split():
    """torch.onnx's optimize=True runs onnxscript's default rewrite rules. One of them, SlicesSplit (two Slices of
    one tensor's last axis in halves -> a Split), matches every pair of Slice nodes: on the rtx graph's gathers it
    took 23 of a 62 s export (shapes-tiny, 2 cores) and rewrote nothing, here or in any other flavour. The other
    rules and the constant folding run as before; an onnxscript without this rule list exports unchanged."""
    from onnxscript import rewriter

    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    try:
        from onnxscript.rewriter.rules.common import slice_split_rule
    except ImportError:
        slice_split_rule = None
    if not isinstance(rules, tuple) or slice_split_rule is None:
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in rules if r is not slice_split_rule)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def _newest_opset() -> int | None:
    try:
        import onnx
    except ImportError:  # reported where the export needs it
        return None
    return int(onnx.defs.onnx_opset_version())


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


def check_options(
    flavour: str,
    opset: int,
    output: str | Path | None,
    batch: int | None,
    dynamic_batch: bool,
    height: int | None,
    width: int | None,
    dynamic_size: bool,
) -> None:
    """Every user error that can be found before loading anything: one MrcnnError line each."""
    if flavour not in FLAVOURS:
        raise MrcnnError(f"unknown ONNX flavour {flavour!r}; choose one of: {', '.join(FLAVOURS)}")
    if opset < MIN_OPSET:
        raise MrcnnError(
            f"opset {opset} is too old: RoIAlign with torchvision's aligned={{False,True}} semantics "
            f"needs ONNX RoiAlign-16 (coordinate_transformation_mode); use --opset {MIN_OPSET} or newer"
        )
    newest = _newest_opset()
    if newest is not None and opset > newest:
        raise MrcnnError(
            f"opset {opset} is newer than the installed onnx package knows (onnx "
            f"{_onnx_version()}: up to opset {newest}); use --opset {newest} or older"
        )
    if output is not None and Path(output).is_dir():
        raise MrcnnError(f"{output}: is a directory, expected an .onnx file path")
    if batch is not None and dynamic_batch:
        raise MrcnnError("--batch and --dynamic-batch exclude each other")
    if batch is not None and batch < 1:
        raise MrcnnError(f"--batch must be >= 1, got {batch}")
    if (height is None) != (width is None):
        raise MrcnnError("--height and --width go together")
    if height is not None and dynamic_size:
        raise MrcnnError("--height/--width and --dynamic-size exclude each other")


def _example_inputs(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, height, width, generator=g)
    sizes = torch.tensor(
        [[height, width]] + [[max(1, height - 8 * i), max(1, width - 16 * i)] for i in range(1, batch)],
        dtype=torch.int64,
    )
    return images, sizes


def metadata(
    cfg, class_names: list[str], flavour: str, opset: int, dynamic: dict, precision: str = "fp32"
) -> dict[str, str]:
    import mrcnn
    from mrcnn.model.preprocess import min_batch_shape

    i, m = cfg.input, cfg.model
    preprocess = {
        "min_size": i.min_size,
        "max_size": i.max_size,
        "size_divisible": i.size_divisible,
        "pad_to": list(min_batch_shape(i) or ()),
        "image_mean": list(m.image_mean),
        "image_std": list(m.image_std),
        "resize": "bilinear, scale = min(min_size / min(h, w), max_size / max(h, w)) (torchvision)",
        "input": "images float32 [B,3,H,W] RGB 0..1 zero-padded to size_divisible (and to at least pad_to, "
        "[H, W], where given: the model was trained so); image_sizes int64 [B,2] (h, w); "
        "mean/std normalisation is inside the graph",
    }
    return {
        "mrcnn.version": mrcnn.__version__,
        "mrcnn.flavour": flavour,
        "mrcnn.opset": str(opset),
        "mrcnn.precision": precision,
        "mrcnn.config": cfg.to_json(),
        "mrcnn.class_names": json.dumps(list(class_names)),
        "mrcnn.preprocess": json.dumps(preprocess, sort_keys=True),
        "mrcnn.dynamic": json.dumps(dynamic, sort_keys=True),
        "mrcnn.outputs": json.dumps(
            {
                "boxes": "[B,K,4] float32 xyxy, resized-image pixels",
                "scores": "[B,K] float32",
                "labels": "[B,K] int64",
                "masks": f"[B,K,{m.mask_resolution},{m.mask_resolution}] float32 probabilities",
                "num_detections": "[B] int64; slots >= num_detections are zero",
            }
        ),
    }


def export_model(
    model: torch.nn.Module,
    cfg,
    class_names: list[str],
    output: str | Path,
    *,
    flavour: str = "trt",
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    fp16: bool = False,
    log: Callable[[str], None] = print,
    source: dict | None = None,
):
    """Export `model` (eval) to `output`. batch None -> dynamic batch; height/width None -> dynamic size;
    fp16: the networks in float16, the ops between them float32 (mrcnn.export.precision.half_network; `model` itself
    is not changed).
    `source`: the checkpoint it came from ({"checkpoint": path, "sha256": ...}, metadata `mrcnn.source`: the
    reference `mrcnn validate` compares the model with). Returns the onnx ModelProto that was written."""
    import onnx

    from mrcnn.export.contract import register_schemas
    from mrcnn.export.translations import translation_table
    from mrcnn.io import atomic_write

    check_options(flavour, opset, output, batch, False, height, width, height is None)
    div = cfg.input.size_divisible
    if height is not None and (height % div or width % div or height <= 0 or width <= 0):
        raise MrcnnError(f"--height/--width must be positive multiples of size_divisible={div}, got {height}x{width}")
    dyn_batch, dyn_size = batch is None, height is None
    ex_b = 2 if dyn_batch else batch
    ex_h, ex_w = (max(div * 4, 128), max(div * 5, 160)) if dyn_size else (height, width)
    images, sizes = _example_inputs(ex_b, ex_h, ex_w)
    img_dims, size_dims = {}, {}
    if dyn_batch:
        B = torch.export.Dim("batch", min=1, max=1024)
        img_dims[0] = size_dims[0] = B
    if dyn_size:
        # multiples of size_divisible: the strides divide the padded size, so feature sizes are exact expressions
        img_dims[2] = div * torch.export.Dim("height_div", min=1, max=MAX_SIDE // div)
        img_dims[3] = div * torch.export.Dim("width_div", min=1, max=MAX_SIDE // div)
    dynamic_shapes = (img_dims or None, size_dims or None)
    model = model.eval()
    if fp16:
        from mrcnn.export.precision import half_network

        model = half_network(copy.deepcopy(model))
    precision = "fp16" if fp16 else "fp32"
    log(
        f"exporting {cfg.name} ({flavour}, {precision}, opset {opset}, batch {'dynamic' if dyn_batch else batch}, "
        f"size {'dynamic' if dyn_size else f'{height}x{width}'})"
    )
    if opset < DEFAULT_OPSET:
        log(f"opset {opset}: traced at opset {DEFAULT_OPSET} and converted down by onnx's version converter")
    with (
        torch.no_grad(),
        model.using_ops(model.ops.replace(backend="native", pyramid_roi_align_export=flavour == "rtx")),
        warnings.catch_warnings(),
        _quiet_loggers(),
        _without_slices_split(),
    ):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                ExportWrapper(model),
                (images, sizes),
                dynamo=True,
                opset_version=opset,
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=translation_table(flavour),
                optimize=True,
                verbose=False,
            )
        except Exception as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise MrcnnError(f"ONNX export failed: {first[:300]}") from e
    proto = program.model_proto
    meta = metadata(cfg, class_names, flavour, opset, {"batch": dyn_batch, "size": dyn_size}, precision)
    if source:
        meta["mrcnn.source"] = json.dumps(source, sort_keys=True)
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "mrcnn"
    import mrcnn

    proto.producer_version = mrcnn.__version__
    register_schemas()
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(output, lambda tmp: onnx.save(proto, tmp))
    return proto


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    *,
    flavour: str = "trt",
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    dynamic_batch: bool = False,
    height: int | None = None,
    width: int | None = None,
    dynamic_size: bool = False,
    fp16: bool = False,
    overrides: list[str] | None = None,
    int8: quantize.Int8Options | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """`mrcnn export CKPT`: default output CKPT with suffix .onnx (next to the checkpoint).
    `overrides` (section.key=value) adjust inference settings such as model.box_score_thresh. `int8`: the float32
    export is quantized (Q/DQ, NVIDIA ModelOpt; mrcnn.export.quantize) on calibration images of `int8.data`."""
    from mrcnn.io import check_writable_file, file_sha256
    from mrcnn.model.checkpoint import load_model

    check_options(flavour, opset, output, batch, dynamic_batch, height, width, dynamic_size)
    if int8 is not None:
        quantize.check_int8(int8, flavour, fp16)
    ckpt_path = Path(checkpoint)
    if ckpt_path.suffix.lower() in (".onnx", ".plan", ".engine"):
        raise MrcnnError(
            f"{ckpt_path}: is an exported model; `mrcnn export` takes a checkpoint (.pt), e.g. a run's model_final.pt"
        )
    out = Path(output) if output is not None else ckpt_path.with_suffix(".onnx")
    model, cfg, names = load_model(ckpt_path, "cpu", overrides)
    check_writable_file(out, "-o")
    source = {"checkpoint": str(ckpt_path.resolve()), "sha256": file_sha256(ckpt_path)}
    if overrides:  # other inference settings than the checkpoint's: validate compares with the same overrides
        source["overrides"] = list(overrides)
    fp32_out = out if int8 is None else _scratch_path(out)
    try:
        export_model(
            model,
            cfg,
            names,
            fp32_out,
            flavour=flavour,
            opset=opset,
            batch=batch,
            height=height,
            width=width,
            fp16=fp16,
            log=log,
            source=source,
        )
        if int8 is not None:
            quantize.quantize_export(fp32_out, out, int8, log=log)
    finally:
        if fp32_out != out:
            fp32_out.unlink(missing_ok=True)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def _scratch_path(out: Path) -> Path:
    """A hidden file beside `out` for an intermediate ONNX (removed by the caller)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".fp32.onnx", dir=out.parent)
    except OSError as e:
        raise MrcnnError(f"{out}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    return Path(tmp)
