"""Custom ops as pure-torch references: the single source of truth (design.md §3).

Each op is one function with plain tensor inputs, plain attributes and fixed-size outputs. Later, C++/CUDA kernels
register the same names as `torch.ops.mrcnn.<snake_name>`, and ONNX nodes / TensorRT plugins use the CamelNames:

    anchor_grid     AnchorGrid
    box_iou         BoxIou
    pre_nms_select  PreNmsSelect
    box_nms         BoxNms

TODO(kernels): a module-level backend switch (reference | torch.ops.mrcnn) once plugins/ provides the kernels.
"""
from mrcnn.ops.anchors import anchor_grid, base_anchors
from mrcnn.ops.boxes import (
    DEFAULT_SCALE_CLAMP,
    box_area,
    box_iou,
    box_sizes_at_least,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)
from mrcnn.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_proposals
from mrcnn.ops.nms import box_nms, box_nms_reference
from mrcnn.ops.proposals import pre_nms_select

__all__ = [
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
