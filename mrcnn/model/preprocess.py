"""Pre- and post-processing around the network, identical to torchvision's GeneralizedRCNNTransform.

The network itself (`MaskRCNN.forward`) takes a padded batch of 0..1 float images plus the unpadded sizes and
normalises inside (so that an exported graph holds the normalisation). Resize, padding, box rescaling and mask
pasting live here and are shared by the data pipeline, the PyTorch predictor and the ONNX/TensorRT runtimes.

Shapes: B images; K detection slots; M mask resolution (28); H, W image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    return min(min_size / min(h, w), max_size / max(h, w))


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """[3,H,W] float -> resized [3,h,w], exactly as torchvision (bilinear, recompute_scale_factor=True)."""
    h, w = image.shape[-2:]
    scale = resize_scale(h, w, min_size, max_size)
    return F.interpolate(
        image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )[0]


def resize_masks(masks: Tensor, min_size: int, max_size: int) -> Tensor:
    """[N,H,W] uint8 -> [N,h,w] uint8 with the same output size as `resize_image` (nearest)."""
    h, w = masks.shape[-2:]
    scale = resize_scale(h, w, min_size, max_size)
    if masks.shape[0] == 0:
        nh, nw = int(math.floor(h * scale)), int(math.floor(w * scale))
        return masks.new_zeros((0, nh, nw))
    return F.interpolate(masks[:, None].float(), scale_factor=scale, recompute_scale_factor=True)[:, 0].byte()


def resize_boxes(boxes: Tensor, original_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Scale [N,4] xyxy boxes from `original_size` (h, w) to `new_size` (h, w), as torchvision."""
    rh = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(original_size[0], dtype=torch.float32)
    rw = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(original_size[1], dtype=torch.float32)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0 * rw, y0 * rh, x1 * rw, y1 * rh), dim=-1)


def min_batch_shape(input_cfg) -> tuple[int, int] | None:
    """(max_size, max_size) where the config pads every batch to it (`pad_to_max`: training, evaluation and the
    predictors alike, so that a model sees at test time the padding it was trained with), else None."""
    return (int(input_cfg.max_size), int(input_cfg.max_size)) if getattr(input_cfg, "pad_to_max", False) else None


def padded_size(
    sizes: list[tuple[int, int]], size_divisible: int = 32, min_shape: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(H, W) of a batch of images of sizes [(h_i, w_i)]: the largest side, at least `min_shape`, rounded up to a
    multiple of `size_divisible` (batch_images' padding, without the images)."""
    hs = [h for h, _ in sizes] + ([int(min_shape[0])] if min_shape else [])
    ws = [w for _, w in sizes] + ([int(min_shape[1])] if min_shape else [])
    return (
        int(math.ceil(max(hs) / size_divisible) * size_divisible),
        int(math.ceil(max(ws) / size_divisible) * size_divisible),
    )


def batch_images(
    images: list[Tensor], size_divisible: int = 32, min_shape: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Pad [3,h_i,w_i] images into [B,3,H,W] (H, W multiples of `size_divisible`, at least `min_shape`), zero fill.

    Returns the batch and `image_sizes` [B,2] int64 (h, w) of the unpadded images.
    """
    if not images:
        raise ValueError("batch_images needs at least one image")
    H, W = padded_size([(int(i.shape[-2]), int(i.shape[-1])) for i in images], size_divisible, min_shape)
    batch = images[0].new_zeros((len(images), images[0].shape[0], H, W))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    sizes = torch.tensor([[int(i.shape[-2]), int(i.shape[-1])] for i in images], dtype=torch.int64)
    return batch, sizes


def to_float_image(image: Tensor) -> Tensor:
    """uint8 [3,H,W] 0..255 -> float32 0..1; float input is returned as float32 unchanged."""
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float()


# -- mask pasting (torchvision paste_masks_in_image, padding 1) --------------------------------------------------


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)


def _paste_crop(mask: Tensor, box: Tensor, im_h: int, im_w: int) -> tuple[int, int, int, int, Tensor]:
    """(y0, y1, x0, x1, values): the part of the image [y0:y1, x0:x1] a padded mask covers at its expanded integer
    box, and its pasted values there (everything outside is 0)."""
    x0b, y0b, x1b, y1b = (int(v) for v in box.tolist())
    w = max(x1b - x0b + 1, 1)
    h = max(y1b - y0b + 1, 1)
    m = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    x_0, x_1 = max(x0b, 0), min(x1b + 1, im_w)
    y_0, y_1 = max(y0b, 0), min(y1b + 1, im_h)
    if x_1 <= x_0 or y_1 <= y_0:
        return 0, 0, 0, 0, m[:0, :0]
    return y_0, y_1, x_0, x_1, m[(y_0 - y0b) : (y_1 - y0b), (x_0 - x0b) : (x_1 - x0b)]


def _paste_one(mask: Tensor, box: Tensor, im_h: int, im_w: int) -> Tensor:
    y_0, y_1, x_0, x_1, values = _paste_crop(mask, box, im_h, im_w)
    out = mask.new_zeros((im_h, im_w))
    out[y_0:y_1, x_0:x_1] = values
    return out


def _padded_masks(masks: Tensor, boxes: Tensor, padding: int) -> tuple[Tensor, Tensor]:
    M = masks.shape[-1]
    scale = float(M + 2 * padding) / M
    return F.pad(masks, (padding,) * 4), _expand_boxes(boxes.float(), scale).to(torch.int64)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1) -> Tensor:
    """Paste [K,M,M] mask probabilities into [K,1,H,W] at `boxes` [K,4] (image pixels), as torchvision."""
    im_h, im_w = int(image_size[0]), int(image_size[1])
    if masks.shape[0] == 0:
        return masks.new_zeros((0, 1, im_h, im_w))
    padded, eboxes = _padded_masks(masks, boxes, padding)
    res = [_paste_one(m, b, im_h, im_w) for m, b in zip(padded, eboxes, strict=True)]
    return torch.stack(res, dim=0)[:, None]


def paste_mask_crops(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1
) -> list[tuple[int, int, int, int, Tensor]]:
    """paste_masks without the [K,1,H,W] tensor: per mask (y0, y1, x0, x1, values), the region of the image it
    covers and its pasted values there (paste_masks' result is 0 elsewhere). Memory per mask: its box, not the
    image (what `mrcnn predict` writes from, for images of any size)."""
    im_h, im_w = int(image_size[0]), int(image_size[1])
    if masks.shape[0] == 0:
        return []
    padded, eboxes = _padded_masks(masks, boxes, padding)
    return [_paste_crop(m, b, im_h, im_w) for m, b in zip(padded, eboxes, strict=True)]


def postprocess_detections(
    outputs: dict[str, Tensor],
    image_sizes: Tensor | list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    paste: bool = True,
) -> list[dict[str, Tensor]]:
    """Fixed-size network outputs -> one dict per image in torchvision's format, in original image pixels.

    `outputs`: boxes [B,K,4], scores [B,K], labels [B,K], masks [B,K,M,M], num_detections [B].
    Each result: boxes [n,4], scores [n], labels [n] int64, masks [n,1,H,W] probabilities (or [n,M,M] with
    paste=False), masks28 [n,M,M].
    """
    results = []
    nums = outputs["num_detections"].tolist()
    for i, n in enumerate(nums):
        n = int(n)
        im_s = tuple(int(v) for v in (image_sizes[i].tolist() if isinstance(image_sizes, Tensor) else image_sizes[i]))
        o_s = tuple(int(v) for v in original_sizes[i])
        boxes = resize_boxes(outputs["boxes"][i, :n].float(), im_s, o_s)
        r = {
            "boxes": boxes,
            "scores": outputs["scores"][i, :n].float(),
            "labels": outputs["labels"][i, :n].to(torch.int64),
        }
        if "masks" in outputs:
            m28 = outputs["masks"][i, :n].float()
            r["masks28"] = m28
            r["masks"] = paste_masks(m28, boxes, o_s) if paste else m28
        results.append(r)
    return results
