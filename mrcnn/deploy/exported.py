"""What every exported artifact's predictor shares (ONNX Runtime, TensorRT): the preprocessing and postprocessing its
metadata describes, around the runtime's `run` of the fixed-size graph.

The artifact describes itself (metadata_props written by `mrcnn export`, kept in an engine's .plan.json): config,
class names, preprocessing, flavour. Images are resized and padded exactly like the PyTorch predictor (resize_image,
batch_images), the graph runs on its runtime, and the fixed-size outputs are post-processed with
postprocess_detections (boxes to original pixels, 28x28 masks pasted).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from mrcnn.errors import MrcnnError, first_line


def load_onnx(path: str | Path, load_external_data: bool = True, what: str = "ONNX file"):
    """The ONNX model in a user's file, or one error line: no such file, a directory, empty, a file of another kind
    (named), unreadable, or no graph."""
    import onnx

    from mrcnn.errors import file_kind, require_file

    path = require_file(path, f"no such {what}", "an exported model (.onnx)")
    kind = file_kind(path)
    if kind == "empty":
        raise MrcnnError(f"{path}: not an ONNX model (the file is empty)")
    if kind and kind != "an ONNX model":
        raise MrcnnError(f"{path}: not an ONNX model: the file is {kind}")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:
        raise MrcnnError(f"{path}: not a readable ONNX model ({first_line(e, 120)})") from None
    if not model.graph.node:  # (onnx.load reads a foreign protobuf as an empty model)
        raise MrcnnError(f"{path}: not an ONNX model (no graph)")
    return model


def onnx_interface(path: Path):
    """(metadata dict, images input dims with None for dynamic ones) of an ONNX file, without its weights."""
    model = load_onnx(path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    inputs = {i.name: i for i in model.graph.input}
    if "images" not in inputs or "image_sizes" not in inputs or "mrcnn.flavour" not in meta:
        raise MrcnnError(
            f"{path}: not an mrcnn export (no images / image_sizes inputs or mrcnn metadata); "
            f"make one with `mrcnn export`"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs["images"].type.tensor_type.shape.dim]
    return meta, dims


class ExportedPredictor:
    """`predictor(images)`: images [3,H,W] uint8 (0..255) or float (0..1) -> one dict per image with boxes [n,4],
    scores [n], labels [n], masks [n,1,H,W] pasted probabilities, masks28 [n,M,M] (original pixels). Subclasses set
    the batch limits (static_batch, max_batch, static_size) and implement `run` (padded batch -> outputs)."""

    static_batch: int | None = None  # the graph takes exactly this batch (smaller ones are filled with copies)
    max_batch: int | None = None  # the graph takes at most this batch (larger ones are split)
    static_size: tuple[int, int] | None = None

    def __init__(self, path: Path, meta: dict[str, str], paste: bool) -> None:
        from mrcnn.config import Config

        if "mrcnn.config" not in meta:
            raise MrcnnError(f"{path}: not an mrcnn export (no mrcnn.config metadata)")
        self.path, self.metadata, self.paste = path, meta, paste
        self.cfg = Config.from_dict(json.loads(meta["mrcnn.config"]))
        self.class_names = json.loads(meta.get("mrcnn.class_names", "[]"))
        self.preprocess = json.loads(meta.get("mrcnn.preprocess", "{}"))
        self.flavour = meta.get("mrcnn.flavour", "portable")

    def run(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def size_divisible(self) -> int:
        return int(self.preprocess.get("size_divisible", self.cfg.input.size_divisible))

    def _batches(self, resized: list[Tensor]):
        n = len(resized)
        step = self.static_batch or min(n, self.max_batch or n)
        for start in range(0, n, step):
            chunk = resized[start : start + step]
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
                raise MrcnnError(
                    f"{self.path} was exported for {H}x{W} inputs; a resized image is "
                    f"{im.shape[-2]}x{im.shape[-1]} (export with --dynamic-size)"
                )
        return batch_images(chunk, self.size_divisible, min_shape=(H, W))

    def inputs(self, images: list[Tensor]):
        """The padded batches `run` is fed for `images`, as __call__ makes them: (images [B,3,H,W] float 0..1,
        image_sizes [B,2], how many of the B are real images)."""
        from mrcnn.model.preprocess import resize_image, to_float_image

        p = self.preprocess
        min_size = int(p.get("min_size", self.cfg.input.min_size))
        max_size = int(p.get("max_size", self.cfg.input.max_size))
        return self._batches([resize_image(to_float_image(im.cpu()), min_size, max_size) for im in images])

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        from mrcnn.model.preprocess import postprocess_detections

        if not images:
            return []
        originals = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        results: list[dict[str, Tensor]] = []
        done = 0
        for batch, sizes, real in self.inputs(images):
            outputs = self.run(batch, sizes)
            outputs = {k: v[:real] for k, v in outputs.items()}
            results += postprocess_detections(outputs, sizes[:real], originals[done : done + real], paste=self.paste)
            done += real
        return results
