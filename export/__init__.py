"""ONNX export (installed as `mrcnn.export`): the `trt` flavour with mrcnn custom ops and the `portable` flavour.

export_checkpoint(ckpt, out, flavour="trt" | "portable" | "rtx", ...)   `mrcnn export`
export_model(model, cfg, class_names, out, ...)                  an in-memory model
export_checkpoint(..., int8=Int8Options(data, ...))              INT8 Q/DQ (ModelOpt; quantize.py)
contract.OPS / contract.register_schemas()                       the `mrcnn` ONNX domain
"""

from mrcnn.export.exporter import DEFAULT_OPSET, FLAVOURS, MIN_OPSET, export_checkpoint, export_model
from mrcnn.export.quantize import Int8Options

__all__ = ["export_checkpoint", "export_model", "Int8Options", "FLAVOURS", "DEFAULT_OPSET", "MIN_OPSET"]
