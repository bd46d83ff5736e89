"""The native kernels (plugins/kernels, libmrcnn_kernels) as torch ops, and Python functions with the references'
signatures.

    torch.ops.mrcnn.anchor_grid      AnchorGrid      mrcnn.ops.anchor_grid
    torch.ops.mrcnn.box_iou          BoxIou          mrcnn.ops.box_iou
    torch.ops.mrcnn.pre_nms_select   PreNmsSelect    mrcnn.ops.pre_nms_select
    torch.ops.mrcnn.box_nms          BoxNms          mrcnn.ops.box_nms
    torch.ops.mrcnn.match_proposals  MatchProposals  mrcnn.ops.match_proposals

Shapes (the contract is the table in plugins/README.md):
    anchor_grid(feature [B,C,H,W], image [B,3,Hi,Wi], sizes, aspect_ratios, stride) -> [H*W*A,4] float32
    box_iou(a [B,N,4], b [B,M,4]) -> [B,N,M] float32                   (float32 or float16 boxes)
    pre_nms_select(anchors [A,4], objectness [B,A], deltas [B,A,4], image_sizes [B,2] int64, top_k, min_size,
                   weights, clip) -> boxes [B,K,4], scores [B,K], valid [B,K] bool        K = min(top_k, A)
    box_nms(boxes [B,N,4], scores [B,N], classes [B,N] int64, valid [B,N] bool, iou_threshold, score_threshold,
            max_output) -> boxes [B,K,4], scores [B,K], classes [B,K], indices [B,K], num [B]   K = max_output
    match_proposals(iou [G,P], high, low, allow_low_quality) -> matches [P] int64
    roi_align([inputs [B,C,H_l,W_l]], rois [R,5], levels [R] int64 | None, spatial_scales, pooled_h, pooled_w,
              sampling_ratio, aligned) -> [R,C,pooled_h,pooled_w]
        (float32, with autograd, training only, not a plugin op: torchvision.ops.roi_align semantics, RoI n on
        level levels[n]; CPU on all threads, CUDA one launch for the whole pyramid; channels-last maps are read as
        they are on CPU, and on CUDA with cuda_nhwc=True, which also makes their gradients NHWC)

Split by job: `library` loads the library and calls its C ABI, `checks` validates inputs (one KernelInputError, a
MrcnnError and a ValueError), `torch_ops` registers the torch ops (CPU through ctypes, CUDA launchers on the current
stream with a torch-allocated workspace, fake kernels for torch.export / torch.compile, RoIAlign's autograd), and
`functions` has the functions with exactly the signatures and return structure of the references in mrcnn.ops.
Which of the two model code runs is the model's `Ops` (mrcnn.ops.dispatch).
"""

from mrcnn.native.checks import KernelInputError
from mrcnn.native.functions import (
    anchor_grid,
    box_iou,
    box_nms,
    match_proposals,
    multilevel_roi_align,
    pre_nms_select,
    roi_align,
)
from mrcnn.native.library import (
    available,
    build_info,
    cuda_available,
    cuda_built,
    library_path,
    load_error,
    native_status,
)

__all__ = [
    "KernelInputError",
    "available",
    "build_info",
    "cuda_available",
    "cuda_built",
    "library_path",
    "load_error",
    "native_status",
    "anchor_grid",
    "box_iou",
    "box_nms",
    "match_proposals",
    "multilevel_roi_align",
    "pre_nms_select",
    "roi_align",
]
