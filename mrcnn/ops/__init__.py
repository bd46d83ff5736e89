"""Custom ops as pure-torch references: the single source of truth (docs/design.md §3).

Each op is one function with plain tensor inputs, plain attributes and fixed-size outputs. Later, C++/CUDA kernels
register the same names as `torch.ops.mrcnn.<snake_name>`, and ONNX nodes / TensorRT plugins use the CamelNames:

    anchor_grid     AnchorGrid
    box_iou         BoxIou
    pre_nms_select  PreNmsSelect
    box_nms         BoxNms

The five kernel-backed names exported here dispatch at call time (`mrcnn.ops.dispatch`: `set_backend` /
`backend()` context manager / env MRCNN_OPS_BACKEND): "auto" (default) runs the native kernel where the library is
built and supports the device and dtype, else the reference; "reference" and "kernels" force one. `REFERENCE` holds
the pure-torch functions themselves.
"""
import functools

from mrcnn.ops.anchors import base_anchors
from mrcnn.ops.boxes import (
    DEFAULT_SCALE_CLAMP,
    box_area,
    box_sizes_at_least,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)
from mrcnn.ops.dispatch import REFERENCE, backend, get_backend, resolve, set_backend  # noqa: E402 - after the ops
from mrcnn.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS
from mrcnn.ops.nms import box_nms_reference


def _dispatching(name: str):
    ref = REFERENCE[name]

    @functools.wraps(ref)
    def op(*args, **kwargs):
        return resolve(name)(*args, **kwargs)

    return op


anchor_grid = _dispatching("anchor_grid")
box_iou = _dispatching("box_iou")
pre_nms_select = _dispatching("pre_nms_select")
box_nms = _dispatching("box_nms")
match_proposals = _dispatching("match_proposals")

__all__ = [
    "REFERENCE",
    "backend",
    "get_backend",
    "resolve",
    "set_backend",
    "anchor_grid",
    "base_anchors",
    "box_iou",
    "box_area",
    "box_sizes_at_least",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "DEFAULT_SCALE_CLAMP",
    "pre_nms_select",
    "box_nms",
    "box_nms_reference",
    "match_proposals",
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
]
