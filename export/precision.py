"""The network in float16 for `mrcnn export --fp16`, with everything around it in float32.

    half_network(model)   -> model   in place: backbone + FPN, RPN head, box head / predictor, mask head / predictor
                                     hold float16 weights and compute in float16
    fold_batch_norms(m)   -> m       (mrcnn.model.inference) each conv absorbs the BatchNorm after it

What stays float32, and why (torchvision / TensorRT practice for fp16 detection models):
- the ops between the networks (anchors, box decoding, pre-NMS selection, NMS, RoIAlign, mask paste): box
  coordinates in float16 have ~0.25 px steps at 1000 px, and TensorRT-RTX and our plugins take what the graph says;
- normalisation statistics (GroupNorm, BatchNorm that no conv absorbs): a float16 mean / variance over a whole
  feature map loses digits; the layer is computed in float32 between casts;
- BatchNorm folding runs in float64 before the weights are rounded once to float16 (folding after rounding rounds
  twice).
The graph's inputs and outputs are unchanged (images float32, boxes / scores / masks float32): every runtime and
`mrcnn validate` take an fp16 export as they take an fp32 one. The module boundaries become Cast nodes.
"""

from __future__ import annotations

import torch
from torch import nn

from mrcnn.model.inference import Cast, fold_batch_norms, low_precision_network


def half_network(model: nn.Module) -> nn.Module:
    """In place, for inference / export: BatchNorms folded, then the networks of `model` (a MaskRCNN) in float16
    (module docstring). Its state-dict keys change (wrapped modules): export the result, do not save it."""
    return low_precision_network(model, torch.float16)


__all__ = ["Cast", "fold_batch_norms", "half_network"]
