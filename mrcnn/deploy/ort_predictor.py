"""ONNX Runtime predictor for exported artifacts (the CUDA provider when onnxruntime-gpu and a GPU are present, else
the CPU), with the interface of the PyTorch `Predictor` (ExportedPredictor: preprocessing from the metadata)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mrcnn.deploy.exported import ExportedPredictor, load_onnx
from mrcnn.errors import MrcnnError
from mrcnn.export.contract import DOMAIN


def read_metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def has_custom_ops(model) -> bool:
    """Whether the graph holds `mrcnn` domain nodes (the trt flavour)."""
    return any(n.domain == DOMAIN for n in model.graph.node)


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(
    model,
    providers: list[str] | None = None,
    threads: int = 0,
    log: Callable[[str], None] | None = None,
    spin: bool = True,
):
    """An ONNX Runtime session for an mrcnn ModelProto (either flavour). For mrcnn custom nodes the ops are
    registered (onnxruntime-extensions) and `model` gets their JSON attribute (in place; see ort_ops).
    spin=False: idle ORT threads sleep instead of spinning (when torch shares the cores, e.g. benchmarks)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if has_custom_ops(model):
        from mrcnn.deploy import ort_ops

        so.register_custom_ops_library(ort_ops.register(log))
        ort_ops.adapt_model(model)
    return ort.InferenceSession(model.SerializeToString(), so, providers=providers or default_providers())


class OnnxPredictor(ExportedPredictor):
    """`OnnxPredictor(path)(images)`: an exported model on ONNX Runtime (ExportedPredictor's interface)."""

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        paste: bool = True,
        threads: int = 0,
        log: Callable[[str], None] = print,
        spin: bool = True,
    ) -> None:
        path = Path(path)
        model = load_onnx(path)
        super().__init__(path, read_metadata(model), paste)
        self.providers = providers or default_providers()
        try:
            self.session = ort_session(model, self.providers, threads, log, spin=spin)
        except MrcnnError as e:  # a custom node's fields (ort_ops.adapt_model)
            raise MrcnnError(f"{path}: {e}") from None
        if has_custom_ops(model):
            from mrcnn.deploy import ort_ops

            self.ops_backend = ort_ops.ops_backend()  # "native" (the C++ kernels) or "reference"
        else:
            self.ops_backend = "onnx"  # standard ops only
        shape = self.session.get_inputs()[0].shape  # [B, 3, H, W]: ints where static
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self.static_size = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """The graph on a padded batch [B,3,H,W] float 0..1 and sizes [B,2]: fixed-size outputs as tensors."""
        outs = self.session.run(
            None,
            {
                "images": images.detach().cpu().float().numpy(),
                "image_sizes": image_sizes.detach().cpu().to(torch.int64).numpy(),
            },
        )
        return {k: torch.from_numpy(np.asarray(v)) for k, v in zip(self.output_names, outs, strict=True)}
