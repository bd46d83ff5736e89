"""OpenVINO as a runtime (CPU): `mrcnn build M.onnx --runtime openvino` converts an mrcnn export into an OpenVINO IR
(`M.xml` + `M.bin`) that carries the export's metadata, and OpenVinoPredictor runs it with ExportedPredictor's pre-
and postprocessing, so an `.xml` goes wherever an artifact goes (eval, validate, bench, predict, serve).

    build_ir(onnx, output, precision) -> Path     `mrcnn build --runtime openvino [--precision f32|bf16]`
    OpenVinoPredictor(xml)(images)                 the IR compiled for the CPU

Precision: the IR keeps the graph's weights in float32 (a Q/DQ export from `mrcnn export --int8` becomes OpenVINO's
FakeQuantize graph, which its CPU plugin runs with INT8 kernels). `bf16` is OpenVINO's inference precision hint
(bfloat16 compute where the CPU has it: AVX512-BF16 / AMX); it is recorded in the IR and applied when it is
compiled. A CPU without bfloat16 support refuses it in one line, as does an INT8 graph (measured on a Xeon with
AMX: the INT8 graph with the bf16 hint ran 0.57x its f32-hint speed, ../shared/notes/cpu-int8-2026-12-07.md).

INT8 weights take 7 bits in the IR (the weight Q/DQ scales doubled, NNCF's "overflow fix"): on x86 CPUs without
VNNI (AVX2 only) OpenVINO's INT8 convolutions add pairs of u8 x s8 products in int16, which saturates with full
8-bit weights. Measured on the trained shapes-tiny model (12 images, AMD EPYC, AVX2): 8-bit weights paired 88.1% of
the checkpoint's detections on OpenVINO against 97.1% on ONNX Runtime from the same Q/DQ file; 7-bit weights 96.7% on
OpenVINO (96.4% on ONNX Runtime). An IR is one file for any CPU, so it always takes the 7-bit range.

The IR's rt_info section `mrcnn` holds `metadata` (the ONNX's metadata_props as JSON), `precision` (the hint),
`source` (the ONNX it was built from) and, for an INT8 graph, `int8_weight_bits`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mrcnn.deploy.exported import ExportedPredictor, onnx_interface
from mrcnn.errors import MrcnnError, message_line

PRECISIONS = ("f32", "bf16")
RT_SECTION = "mrcnn"


def import_openvino():
    """The openvino module, or one MrcnnError with the package to install."""
    try:
        import openvino
    except ImportError as e:
        raise MrcnnError(
            f"OpenVINO runtime: cannot import openvino ({message_line(e, 120)}); pip install 'mrcnn[openvino]'"
        ) from None
    return openvino


def cpu_bf16(core=None) -> bool:
    """Whether OpenVINO computes bfloat16 on this CPU (AVX512-BF16 or AMX)."""
    core = core or import_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_precision(core, precision: str, graph_precision: str, what: str) -> None:
    """`precision` (the inference hint) for a graph of `graph_precision` on this CPU, or one MrcnnError."""
    if precision not in PRECISIONS:
        raise MrcnnError(f"--precision must be one of {', '.join(PRECISIONS)} for OpenVINO, got {precision!r}")
    if precision != "bf16":
        return
    if graph_precision == "int8":
        raise MrcnnError(
            f"{what}: an INT8 (Q/DQ) graph runs its float parts in f32 (with the bf16 hint it ran 0.57x as fast); "
            "build it with --precision f32"
        )
    if not cpu_bf16(core):
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        name = core.get_property("CPU", "FULL_DEVICE_NAME")
        raise MrcnnError(
            f"{what}: --precision bf16 needs a CPU with bfloat16 support (AVX512-BF16 or AMX); this one "
            f"({name}) offers {', '.join(caps)}: use --precision f32"
        )


def _save_ir(model, out: Path, save) -> None:
    """Both files of the IR (`out` .xml and its .bin) written atomically: `save(model, xml)` into a temporary folder
    beside them, then the .bin and the .xml renamed into place; on a failure nothing is left."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise MrcnnError(f"{out}: cannot write there ({e.strerror or e})") from None
    try:
        save(model, str(tmp / "model.xml"))
        os.replace(tmp / "model.bin", out.with_suffix(".bin"))
        os.replace(tmp / "model.xml", out)
    except OSError as e:
        with contextlib.suppress(OSError):
            out.with_suffix(".bin").unlink()
        raise MrcnnError(f"{out}: could not be written ({e.strerror or e}); nothing was left there") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _seven_bit_weights(src: Path, folder: Path):
    """A temporary copy of a Q/DQ ONNX whose weight quantization scales are doubled (the module docstring: 7-bit
    weights), yielded as its path and removed after."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    init = {t.name: t for t in model.graph.initializer}
    doubled = set()
    for node in model.graph.node:
        # a weight's QuantizeLinear reads an initializer with per-channel scales (its DequantizeLinear shares them);
        # constants quantized per tensor (a scalar scale) are not weights of a convolution
        if node.op_type != "QuantizeLinear" or node.input[0] not in init or node.input[1] in doubled:
            continue
        scale = numpy_helper.to_array(init[node.input[1]])
        if scale.ndim == 1:
            init[node.input[1]].CopyFrom(numpy_helper.from_array((scale * 2).astype(scale.dtype), node.input[1]))
            doubled.add(node.input[1])
    fd, tmp = tempfile.mkstemp(prefix=f".{src.stem}.", suffix=".w7.onnx", dir=folder)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def build_ir(
    onnx_path: str | Path,
    output: str | Path | None = None,
    *,
    precision: str = "f32",
    log: Callable[[str], None] = print,
) -> Path:
    """`mrcnn build ONNX --runtime openvino`: the IR at `output` (default: the ONNX with suffix .xml, its weights in
    the .bin beside it), carrying the export's metadata and the inference precision hint."""
    from mrcnn.io import check_writable_file

    src = Path(onnx_path)
    out = Path(output) if output is not None else src.with_suffix(".xml")
    if out.suffix.lower() != ".xml":
        raise MrcnnError(f"-o {out}: an OpenVINO IR is an .xml file (its weights go to the .bin beside it)")
    check_writable_file(out, "-o")
    meta, _ = onnx_interface(src)
    if meta["mrcnn.flavour"] == "trt":
        raise MrcnnError(
            f"{src}: the trt flavour's mrcnn nodes are TensorRT plugins, which OpenVINO does not have: export the "
            "portable flavour (mrcnn export CKPT --flavour portable) for OpenVINO"
        )
    ov = import_openvino()
    core = ov.Core()
    graph_precision = meta.get("mrcnn.precision", "fp32")
    check_precision(core, precision, graph_precision, str(src))
    version = ov.__version__.split("-")[0]
    log(f"converting {src.name} ({meta['mrcnn.flavour']} flavour, {graph_precision}) to an OpenVINO {version} IR")
    try:
        if graph_precision == "int8":
            with _seven_bit_weights(src, out.parent) as onnx_file:
                model = ov.convert_model(str(onnx_file))
            model.set_rt_info("7", [RT_SECTION, "int8_weight_bits"])
        else:
            model = ov.convert_model(str(src))
    except MrcnnError:
        raise
    except Exception as e:
        raise MrcnnError(f"OpenVINO cannot convert {src.name}: {message_line(e, 300)}") from None
    model.set_rt_info(json.dumps(meta, sort_keys=True), [RT_SECTION, "metadata"])
    model.set_rt_info(precision, [RT_SECTION, "precision"])
    model.set_rt_info(str(src.resolve()), [RT_SECTION, "source"])
    _save_ir(model, out, lambda m, path: ov.save_model(m, path, compress_to_fp16=False))
    size = (out.stat().st_size + out.with_suffix(".bin").stat().st_size) / 1e6
    log(f"wrote {out} and {out.with_suffix('.bin').name} ({size:.1f} MB; inference precision {precision})")
    return out


def read_ir(core, path: Path):
    """(the IR's model, its mrcnn metadata, its precision hint), or one MrcnnError."""
    from mrcnn.errors import require_file

    require_file(path, "no such OpenVINO IR", "an OpenVINO IR (.xml)")
    if not path.with_suffix(".bin").is_file():
        raise MrcnnError(f"{path}: its weights {path.with_suffix('.bin').name} are not beside it")
    try:
        model = core.read_model(str(path))
    except Exception as e:
        raise MrcnnError(f"{path}: not a readable OpenVINO IR ({message_line(e, 160)})") from None
    if not model.has_rt_info([RT_SECTION, "metadata"]):
        raise MrcnnError(
            f"{path}: not an mrcnn model (no mrcnn metadata); build one with `mrcnn build --runtime openvino`"
        )
    meta = json.loads(model.get_rt_info([RT_SECTION, "metadata"]).astype(str))
    precision = model.get_rt_info([RT_SECTION, "precision"]).astype(str)
    return model, meta, precision


class OpenVinoPredictor(ExportedPredictor):
    """`OpenVinoPredictor(xml)(images)`: an IR compiled for the CPU (ExportedPredictor's interface). `threads`: the
    inference threads (0: OpenVINO's default, one per core)."""

    def __init__(self, path: str | Path, paste: bool = True, threads: int = 0, log: Callable[[str], None] = print):
        ov = import_openvino()
        path = Path(path)
        core = ov.Core()
        model, meta, precision = read_ir(core, path)
        super().__init__(path, meta, paste)
        self.precision = precision
        check_precision(core, precision, meta.get("mrcnn.precision", "fp32"), str(path))
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        shape = model.input("images").get_partial_shape()  # [B, 3, H, W]
        self.static_batch = shape[0].get_length() if shape[0].is_static else None
        if shape[2].is_static and shape[3].is_static:
            self.static_size = (shape[2].get_length(), shape[3].get_length())
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.version = ov.__version__.split("-")[0]

    def run(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """The graph on a padded batch [B,3,H,W] float 0..1 and sizes [B,2]: fixed-size outputs as tensors (copies:
        the request's buffers are reused)."""
        result = self.request.infer(
            {
                "images": images.detach().cpu().float().numpy(),
                "image_sizes": image_sizes.detach().cpu().to(torch.int64).numpy(),
            }
        )
        return {
            name: torch.from_numpy(np.array(result[port]))
            for name, port in zip(self.output_names, self.compiled.outputs, strict=True)
        }
