"""ONNX export (installed as `mrcnn.export`): the `trt` flavour with mrcnn custom ops and the `portable` flavour.

export_checkpoint(ckpt, out, flavour="trt" | "portable" | "rtx", ...)   `mrcnn export`
export_model(model, cfg, class_names, out, ...)                  an in-memory model
contract.OPS / contract.register_schemas()                       the `mrcnn` ONNX domain
"""

from mrcnn.export.exporter import DEFAULT_OPSET, FLAVOURS, MIN_OPSET, export_checkpoint, export_model

__all__ = ["export_checkpoint", "export_model", "FLAVOURS", "DEFAULT_OPSET", "MIN_OPSET"]
