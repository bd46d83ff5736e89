"""The Triton Python-backend models of mrcnn: what runs inside Triton's stub process. A model repository's
`model.py` is one line that imports one of these classes as `TritonPythonModel` (mrcnn/deploy/triton_repo.py writes
them); the work is the library's (mrcnn/deploy/serving.py), so a served model and a GPU repository's pre- and
post-processing run the same code as `mrcnn predict`.

    ServeModel        `mrcnn serve`: the whole artifact per batch of requests (decode, one predictor call, encode)
    PreprocessModel   GPU repository: image bytes -> the engine's input (resized, normalised in the graph, padded to
                      the repository's canvas so that the engine's dynamic batcher can batch requests)
    PostprocessModel  GPU repository: the engine's fixed-size outputs -> the response of `mrcnn serve`

Parameters come from the model's config.pbtxt (`parameters`); `triton_python_backend_utils` exists only inside the
stub, so it is imported when Triton initializes a model.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import torch

from mrcnn.config import Config
from mrcnn.data.image_io import set_max_pixels
from mrcnn.deploy.serving import Request, ServedModel, decode_image, encode_detections, request_threshold
from mrcnn.errors import MrcnnError, message_line
from mrcnn.model.preprocess import postprocess_detections, resize_image, to_float_image


def parameters(args: dict) -> dict[str, str]:
    """The string parameters of the model config Triton passes to `initialize`."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def first(pb, request, name: str):
    """The one element of a request's input `name` (batch 1, shape [1, 1]), or None when the request has none."""
    tensor = pb.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


class BaseModel:
    def initialize(self, args: dict) -> None:
        self.pb = importlib.import_module("triton_python_backend_utils")
        self.params = parameters(args)
        self.device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            self.device = f"cuda:{args['model_instance_device_id']}"
        elif self.params.get("device"):
            self.device = self.params["device"]
        self.setup()

    def setup(self) -> None:
        raise NotImplementedError

    def respond(self, requests: list) -> list:
        raise NotImplementedError

    def execute(self, requests: list) -> list:
        """One response per request; an error of one request is its own response, and nothing a batch raises ends
        the stub (every request of it gets the error)."""
        try:
            return self.respond(requests)
        except Exception as e:
            error = self.pb.TritonError(f"internal error: {message_line(e, 300)}", self.pb.TritonError.INTERNAL)
            return [self.pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]

    def response(self, result: dict | MrcnnError):
        """The response tensors, or a bad request's error (HTTP 400, gRPC INVALID_ARGUMENT) naming what is wrong."""
        pb = self.pb
        if isinstance(result, MrcnnError):
            error = pb.TritonError(message_line(result, 500), pb.TritonError.INVALID_ARG)
            return pb.InferenceResponse(output_tensors=[], error=error)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(k, np.ascontiguousarray(v)) for k, v in result.items()])


class ServeModel(BaseModel):
    def setup(self) -> None:
        p = self.params
        threads = int(p.get("threads") or 0)
        self.model = ServedModel(
            p["artifact"],
            device=self.device,
            score=float(p.get("score", "0.5")),
            threads=threads,
            max_pixels=int(p["max_pixels"]) if p.get("max_pixels") else None,
            log=lambda m: print(m, flush=True),
        )

    def respond(self, requests: list) -> list:
        pb = self.pb
        batch = []
        for r in requests:
            threshold = first(pb, r, "score_threshold")
            batch.append(Request(first(pb, r, "image"), None if threshold is None else float(threshold)))
        return [self.response(result) for result in self.model.infer(batch)]


class PreprocessModel(BaseModel):
    """image (BYTES) -> images [3, H, W] float32 0..1 padded to the canvas, image_sizes [2] (the resized size the
    graph sees), original_size [2], or an error naming what the bytes are."""

    def setup(self) -> None:
        p = self.params
        self.min_size, self.max_size = int(p["min_size"]), int(p["max_size"])
        self.canvas = tuple(int(v) for v in p["canvas"].split("x"))
        if p.get("max_pixels"):
            set_max_pixels(int(p["max_pixels"]))

    def prepare(self, data) -> dict:
        image = decode_image(data)
        resized = resize_image(to_float_image(image), self.min_size, self.max_size)
        h, w = resized.shape[-2:]
        H, W = self.canvas
        if h > H or w > W:
            raise MrcnnError(f"image: resized to {h}x{w}, larger than the engine's {H}x{W} canvas")
        padded = torch.zeros(3, H, W, dtype=torch.float32)
        padded[:, :h, :w] = resized
        return {
            "images": padded.numpy()[None],
            "image_sizes": np.array([[h, w]], dtype=np.int64),
            "original_size": np.array([list(image.shape[1:])], dtype=np.int64),
        }

    def respond(self, requests: list) -> list:
        out = []
        for r in requests:
            try:
                out.append(self.response(self.prepare(first(self.pb, r, "image"))))
            except MrcnnError as e:
                out.append(self.response(e))
        return out


class PostprocessModel(BaseModel):
    """The engine's outputs (boxes [K,4], scores [K], labels [K], masks [K,M,M], num_detections [1]) with
    image_sizes, original_size and the optional score_threshold -> the response of `mrcnn serve`."""

    def setup(self) -> None:
        p = self.params
        self.class_names = json.loads(p["class_names"])
        self.score = float(p.get("score", "0.5"))
        self.floor = float(Config.from_dict(json.loads(p["config"])).model.box_score_thresh)

    def respond(self, requests: list) -> list:
        pb = self.pb
        out = []
        for r in requests:
            try:
                t = request_threshold(first(pb, r, "score_threshold"), self.score, self.floor, "the engine")
                outputs = {
                    k: torch.from_numpy(pb.get_input_tensor_by_name(r, k).as_numpy())
                    for k in ("boxes", "scores", "labels", "masks", "num_detections")
                }
                outputs["num_detections"] = outputs["num_detections"].reshape(-1)  # ([1, 1]: batch 1 of [1])
                sizes = torch.from_numpy(pb.get_input_tensor_by_name(r, "image_sizes").as_numpy())
                h, w = (int(v) for v in pb.get_input_tensor_by_name(r, "original_size").as_numpy().reshape(-1))
                result = postprocess_detections(outputs, sizes, [(h, w)], paste=False)[0]
                out.append(self.response(encode_detections(result, t, (h, w), self.class_names)))
            except MrcnnError as e:
                out.append(self.response(e))
        return out
