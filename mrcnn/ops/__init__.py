"""Custom ops as pure-torch references: the single source of truth (docs/design.md §3).

Each op is one function with plain tensor inputs, plain attributes and fixed-size outputs. The kernels (plugins/
kernels, through mrcnn.native) register the same names as `torch.ops.mrcnn.<snake_name>`, and ONNX nodes / TensorRT
plugins use the CamelNames:

    anchor_grid      AnchorGrid
    box_iou          BoxIou
    pre_nms_select   PreNmsSelect
    box_nms          BoxNms
    match_proposals  MatchProposals

The five names exported here run under `Ops()` (mrcnn.ops.dispatch: the native kernel where the library is built
and supports the device and dtype, else the reference). A model holds its own `Ops` (MaskRCNN.ops), which chooses
for it alone; `REFERENCE` holds the pure-torch functions themselves.
"""

from mrcnn.ops.anchors import base_anchors
from mrcnn.ops.boxes import (
    DEFAULT_SCALE_CLAMP,
    box_area,
    box_sizes_at_least,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)
from mrcnn.ops.dispatch import BACKENDS, OPS, REFERENCE, Ops
from mrcnn.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS

AUTO = Ops()
anchor_grid = AUTO.anchor_grid
box_iou = AUTO.box_iou
pre_nms_select = AUTO.pre_nms_select
box_nms = AUTO.box_nms
match_proposals = AUTO.match_proposals

__all__ = [
    "AUTO",
    "BACKENDS",
    "OPS",
    "REFERENCE",
    "Ops",
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
    "match_proposals",
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
]
