"""ONNX Runtime predictor for exported artifacts: the same interface as the PyTorch `Predictor`.

The artifact describes itself (metadata_props written by `mrcnn export`): config, class names, preprocessing,
flavour. Images are resized and padded exactly like the PyTorch predictor (resize_image, batch_images), the graph
runs on ONNX Runtime (CUDA provider when onnxruntime-gpu and a GPU are present, else CPU), and the fixed-size
outputs are post-processed with postprocess_detections (boxes to original pixels, 28x28 masks pasted).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

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


def ort_session(model, providers: Optional[list[str]] = None, threads: int = 0,
                log: Optional[Callable[[str], None]] = None, spin: bool = True):
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


class OnnxPredictor:
    """`OnnxPredictor(path)(images)`: images [3,H,W] uint8 (0..255) or float (0..1) -> one dict per image with boxes
    [n,4], scores [n], labels [n], masks [n,1,H,W] pasted probabilities, masks28 [n,M,M] (original pixels)."""

    def __init__(self, path: str | Path, providers: Optional[list[str]] = None, paste: bool = True,
                 threads: int = 0, log: Callable[[str], None] = print, spin: bool = True) -> None:
        import onnx

        from mrcnn.config import Config

        self.path = Path(path)
        if not self.path.exists():
            raise MrcnnError(f"{self.path}: no such file")
        try:
            model = onnx.load(str(self.path))
        except Exception as e:  # noqa: BLE001 - a broken file is a user error
            raise MrcnnError(f"{self.path}: not a readable ONNX model ({str(e).splitlines()[0][:120]})") from None
        meta = read_metadata(model)
        if "mrcnn.config" not in meta:
            raise MrcnnError(f"{self.path}: not an mrcnn export (no mrcnn.config metadata)")
        self.metadata = meta
        self.cfg = Config.from_dict(json.loads(meta["mrcnn.config"]))
        self.class_names = json.loads(meta.get("mrcnn.class_names", "[]"))
        self.preprocess = json.loads(meta.get("mrcnn.preprocess", "{}"))
        self.flavour = meta.get("mrcnn.flavour", "portable")
        self.paste = paste
        self.providers = providers or default_providers()
        self.session = ort_session(model, self.providers, threads, log, spin=spin)
        if has_custom_ops(model):
            from mrcnn.deploy import ort_ops

            self.ops_backend = ort_ops.backend()  # "kernels" (C++) or "reference"
        else:
            self.ops_backend = "onnx"  # standard ops only
        shape = self.session.get_inputs()[0].shape  # [B, 3, H, W]: ints where static
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self.static_size = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def size_divisible(self) -> int:
        return int(self.preprocess.get("size_divisible", self.cfg.input.size_divisible))

    def run(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """The graph on a padded batch [B,3,H,W] float 0..1 and sizes [B,2]: fixed-size outputs as tensors."""
        outs = self.session.run(None, {"images": images.detach().cpu().float().numpy(),
                                       "image_sizes": image_sizes.detach().cpu().to(torch.int64).numpy()})
        return {k: torch.from_numpy(np.asarray(v)) for k, v in zip(self.output_names, outs)}

    def _batches(self, resized: list[Tensor]):
        n = len(resized)
        step = self.static_batch or n
        for start in range(0, n, step):
            chunk = resized[start:start + step]
            real = len(chunk)
            if self.static_batch and real < self.static_batch:  # fill a static batch with copies of the last image
                chunk = chunk + [chunk[-1]] * (self.static_batch - real)
            batch, sizes = self._pad(chunk)
            yield batch, sizes, real

    def _pad(self, chunk: list[Tensor]) -> tuple[Tensor, Tensor]:
        from mrcnn.model.preprocess import batch_images, min_batch_shape

        if self.static_size is None:
            return batch_images(chunk, self.size_divisible, min_batch_shape(self.cfg.input))
        H, W = self.static_size
        for im in chunk:
            if im.shape[-2] > H or im.shape[-1] > W:
                raise MrcnnError(f"{self.path} was exported for {H}x{W} inputs; a resized image is "
                                 f"{im.shape[-2]}x{im.shape[-1]} (export with --dynamic-size)")
        return batch_images(chunk, self.size_divisible, min_shape=(H, W))

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        from mrcnn.model.preprocess import postprocess_detections, resize_image, to_float_image

        if not images:
            return []
        p = self.preprocess
        min_size = int(p.get("min_size", self.cfg.input.min_size))
        max_size = int(p.get("max_size", self.cfg.input.max_size))
        originals = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        resized = [resize_image(to_float_image(im.cpu()), min_size, max_size) for im in images]
        results: list[dict[str, Tensor]] = []
        done = 0
        for batch, sizes, real in self._batches(resized):
            outputs = self.run(batch, sizes)
            outputs = {k: v[:real] for k, v in outputs.items()}
            results += postprocess_detections(outputs, sizes[:real], originals[done:done + real], paste=self.paste)
            done += real
        return results
