"""What a served model does with its requests, apart from the server that carries them (mrcnn/deploy/server.py runs
Triton Inference Server; mrcnn/deploy/triton_models.py is the Python-backend model that calls this).

The schema (one image per request; Triton adds the batch dimension in front of each tensor):

    input   image            BYTES  [1]     the image file's bytes as they are (JPEG, PNG, ...): no client library of
                                            ours is needed to make a request
    input   score_threshold  FP32   [1]     optional; default the server's --score, at least the model's own
                                            threshold (`floor`)
    output  boxes            FP32   [n, 4]  xyxy in the image's pixels (its EXIF orientation applied, as predict reads
                                            it), score order
    output  scores           FP32   [n]
    output  labels           INT64  [n]     category ids 1..C (predictions.json's)
    output  classes          BYTES  [n]     the class names
    output  masks            BYTES  [n]     each mask at 0.5 as COCO RLE, JSON {"size": [h, w], "counts": "..."}
                                            (pycocotools.mask.decode reads it)
    output  image_size       INT64  [2]     h, w

A request's detections are what `mrcnn predict` writes for that image and artifact with `--score` = the threshold:
the same reader decodes it (every image mode, EXIF, the pixel limit), the same predictor runs it, and the same code
keeps the detections above the threshold, pastes their masks and encodes them (kept_with_crops, coco_annotations).
A request that cannot be decoded gets its own error; the others of its batch run as one predictor call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrcnn.data.image_io import read_rgb, set_max_pixels
from mrcnn.deploy.artifacts import THREADED_SUFFIXES, load_artifact
from mrcnn.deploy.predict import coco_annotations, kept_with_crops
from mrcnn.device import check_threads
from mrcnn.errors import MrcnnError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton's data type (config.pbtxt: TYPE_<dtype>; the protocols: BYTES, FP32, INT64)
    dims: tuple[int, ...]
    optional: bool = False


INPUTS = (TensorSpec("image", "STRING", (1,)), TensorSpec("score_threshold", "FP32", (1,), optional=True))
OUTPUTS = (
    TensorSpec("boxes", "FP32", (-1, 4)),
    TensorSpec("scores", "FP32", (-1,)),
    TensorSpec("labels", "INT64", (-1,)),
    TensorSpec("classes", "STRING", (-1,)),
    TensorSpec("masks", "STRING", (-1,)),
    TensorSpec("image_size", "INT64", (2,)),
)
NUMPY = {"STRING": np.object_, "FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8, "INT32": np.int32}


def decode_image(data: bytes | None) -> torch.Tensor:
    """[3, H, W] uint8 of an image file's bytes, read as `mrcnn predict` reads files (read_rgb), or one MrcnnError
    saying what they are instead: empty, another kind of file, truncated, above the pixel limit, a mode we refuse."""
    if not data:
        raise MrcnnError("image: empty (no image bytes in the request)")
    return torch.from_numpy(read_rgb(bytes(data), name="image")[0].copy()).permute(2, 0, 1).contiguous()


def encode_detections(result: dict, threshold: float, image_size: tuple[int, int], class_names: list[str]) -> dict:
    """One image's unpasted predictor result -> the response tensors (module docstring), with one leading batch
    dimension of 1."""
    h, w = image_size
    kept = kept_with_crops({k: v.cpu() for k, v in result.items()}, threshold, (h, w))
    annotations = coco_annotations(kept, (h, w), 1, 1, len(class_names))
    labels = kept["labels"].to(torch.int64).numpy()
    names = [class_names[int(k) - 1] if 1 <= int(k) <= len(class_names) else str(int(k)) for k in labels]
    out = {
        "boxes": kept["boxes"].float().numpy().reshape(-1, 4),
        "scores": kept["scores"].float().numpy(),
        "labels": labels,
        "classes": np.array([n.encode() for n in names], dtype=np.object_),
        "masks": np.array([json.dumps(a["segmentation"]).encode() for a in annotations], dtype=np.object_),
        "image_size": np.array([h, w], dtype=np.int64),
    }
    if len(annotations) != len(labels):  # (coco_annotations drops labels outside 1..C; a model never makes them)
        raise MrcnnError(f"{len(labels) - len(annotations)} detections have labels outside 1..{len(class_names)}")
    return {k: v[None] for k, v in out.items()}


def request_threshold(requested: float | None, default: float, floor: float, artifact: str) -> float:
    """A request's score threshold: its own, else `default`; one error when outside [floor, 1] (the artifact reports
    no detection under its own threshold `floor`)."""
    t = default if requested is None else float(requested)
    if not floor <= t <= 1.0:  # (NaN fails both)
        raise MrcnnError(
            f"score_threshold {t:g}: must be in [{floor:g}, 1] ({artifact} reports no detection scoring under "
            f"{floor:g})"
        )
    return t


@dataclass
class Request:
    image: bytes | None
    score_threshold: float | None = None


class ServedModel:
    """An artifact as the server runs it: `infer(requests)` -> one response dict or MrcnnError per request, the
    decodable ones in one predictor call. `score`: the threshold of a request that names none (predict's --score);
    the artifact is loaded as `mrcnn predict --score score` loads it, so `floor` (its own threshold) is at most
    `score` for a checkpoint."""

    def __init__(
        self,
        artifact: str | Path,
        *,
        device: str | None = None,
        score: float = 0.5,
        threads: int = 0,
        max_pixels: int | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        if not 0.0 <= score <= 1.0:
            raise MrcnnError(f"--score must be in [0, 1], got {score}")
        check_threads(threads)
        if max_pixels is not None:
            set_max_pixels(max_pixels)
        kwargs = {}
        if threads:
            torch.set_num_threads(threads)
            if Path(artifact).suffix.lower() in THREADED_SUFFIXES:
                kwargs["threads"] = threads
        self.predictor = load_artifact(
            artifact, device, log=log, paste=False, max_score_thresh=min(score, 0.999), **kwargs
        )
        self.artifact, self.score = Path(artifact), score
        self.class_names = list(self.predictor.class_names)
        self.runtime = self.predictor.runtime
        self.floor = float(self.predictor.cfg.model.box_score_thresh)

    def infer(self, requests: list[Request]) -> list[dict | MrcnnError]:
        out: list[dict | MrcnnError | None] = [None] * len(requests)
        ready: list[tuple[int, torch.Tensor, float]] = []
        for i, r in enumerate(requests):
            try:
                t = request_threshold(r.score_threshold, self.score, self.floor, self.artifact.name)
                ready.append((i, decode_image(r.image), t))
            except MrcnnError as e:
                out[i] = e
        if ready:
            with torch.inference_mode():
                results = self.predictor([image for _, image, _ in ready])  # the batch: one call
            for (i, image, t), result in zip(ready, results, strict=True):
                out[i] = encode_detections(result, t, tuple(image.shape[1:]), self.class_names)
        return out
