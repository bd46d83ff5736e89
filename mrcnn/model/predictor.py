"""PyTorch predictor: list of images -> torchvision-format results (original pixels, pasted masks)."""

from __future__ import annotations

import torch
from torch import Tensor

from mrcnn.config import InputConfig
from mrcnn.model.mask_rcnn import MaskRCNN
from mrcnn.model.preprocess import batch_images, min_batch_shape, postprocess_detections, resize_image, to_float_image


class Predictor:
    """`Predictor(model, input_cfg)(images)`: resize -> batch -> model (eval, no grad) -> postprocess.

    images: [3,H,W] uint8 (0..255) or float (0..1). Returns one dict per image: boxes [n,4], scores [n], labels [n],
    masks [n,1,H,W] pasted probabilities, masks28 [n,M,M].
    """

    def __init__(
        self,
        model: MaskRCNN,
        input_cfg: InputConfig,
        paste: bool = True,
        optimize: bool = False,
        precision: str = "fp32",
    ) -> None:
        """`optimize`: the inference levers of mrcnn.model.inference, applied to `model` in place (BatchNorms folded,
        channels-last, masks of the detections only, the native RoIAlign); results equal the plain model's within
        the design tolerances. `precision` "bf16" (with `optimize`): the networks in bfloat16, where the device
        runs it natively (check_precision)."""
        self.model = model.eval()
        self.input_cfg = input_cfg
        self.paste = paste
        self.channels_last = False
        self.precision = precision
        if optimize or precision != "fp32":
            from mrcnn.model.inference import check_precision, optimize_for_inference

            check_precision(precision, self.device)
            optimize_for_inference(self.model, precision=precision)
            self.channels_last = True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, images: list[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """(padded batch on the device, resized sizes [B,2], original sizes): what the model takes, resized as
        training resizes and padded to the size divisor."""
        cfg = self.input_cfg
        originals = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        resized = [resize_image(to_float_image(im.to(self.device)), cfg.min_size, cfg.max_size) for im in images]
        batch, sizes = batch_images(resized, cfg.size_divisible, min_batch_shape(cfg))
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, sizes, originals

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        if not images:
            return []
        batch, sizes, originals = self.prepare(images)
        self.model.eval()
        outputs = self.model(batch, sizes.to(self.device))
        return postprocess_detections(outputs, sizes, originals, paste=self.paste)
