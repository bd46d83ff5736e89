// The C ABI of libmrcnn_kernels: CPU kernels and CUDA launchers with no framework types (no torch, no TensorRT).
// Used by the torch ops (ctypes, mrcnn/native/), ONNX Runtime custom ops and the TensorRT plugins.
//
// Conventions
//   * Every function returns an int: 0 on success. CPU functions return MRCNN_ERR_* codes; CUDA launchers return
//     a cudaError_t (MRCNN_ERR_INVALID_ARGUMENT == cudaErrorInvalidValue for bad arguments). mrcnn_error_string()
//     describes any of them.
//   * Tensors are dense, row-major (C-contiguous). Boxes are xyxy float32 [.., 4]; bool tensors are uint8 (0/1);
//     fp16 tensors are passed as uint16_t bit patterns (IEEE binary16).
//   * CPU functions take host pointers. CUDA launchers take device pointers for tensors and host values/arrays for
//     attributes, run asynchronously on `stream`, and never synchronize or allocate: launchers that need scratch
//     memory take `workspace` (device, 256-byte aligned) of at least mrcnn_<op>_workspace_size(...) bytes.
//   * Selection order everywhere (top-k, NMS): score descending, ties to the lower input index; NaN scores rank
//     above +inf (torch.topk), -0 == +0.
// The op contract (names, shapes, fills) is the table in plugins/README.md.
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define MRCNN_API __declspec(dllexport)
#else
#define MRCNN_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Same declaration as CUDA's driver_types.h, so this header needs no CUDA include.
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

#define MRCNN_OK 0
#define MRCNN_ERR_INVALID_ARGUMENT 1
#define MRCNN_ERR_OUT_OF_MEMORY 2
#define MRCNN_ERR_INTERNAL 999

// Build configuration, e.g. "mrcnn-kernels 0.1.0 (cpu+cuda; sm 80;86;89;90; CUDA 13.0)".
MRCNN_API const char* mrcnn_build_info(void);
// 1 when the CUDA launchers below are compiled in (the symbols then exist), else 0.
MRCNN_API int mrcnn_has_cuda(void);
MRCNN_API const char* mrcnn_error_string(int code);

// ---- AnchorGrid --------------------------------------------------------------------------------------------------
// anchors [feat_h * feat_w * A, 4] float32, A = num_sizes * num_ratios (ratio-major), for a feature map
// [.., feat_h, feat_w] of a padded image [.., image_h, image_w]. stride > 0 forces both strides, stride == 0 uses
// image // feature per axis. num_sizes, num_ratios in [1, MRCNN_ANCHOR_MAX_PARAMS].
#define MRCNN_ANCHOR_MAX_PARAMS 32
MRCNN_API int mrcnn_anchor_grid_cpu(int64_t feat_h, int64_t feat_w, int64_t image_h, int64_t image_w,
                                    const float* sizes, int64_t num_sizes, const float* aspect_ratios,
                                    int64_t num_ratios, int64_t stride, float* anchors);
MRCNN_API int mrcnn_anchor_grid_cuda(int64_t feat_h, int64_t feat_w, int64_t image_h, int64_t image_w,
                                     const float* sizes, int64_t num_sizes, const float* aspect_ratios,
                                     int64_t num_ratios, int64_t stride, float* anchors, cudaStream_t stream);

// ---- BoxIou ------------------------------------------------------------------------------------------------------
// iou [batch, n, m] float32 of a [batch, n, 4] and b [batch, m, 4] (float32 or fp16; math in float32).
MRCNN_API int mrcnn_box_iou_f32_cpu(const float* a, const float* b, int64_t batch, int64_t n, int64_t m, float* iou);
MRCNN_API int mrcnn_box_iou_f16_cpu(const uint16_t* a, const uint16_t* b, int64_t batch, int64_t n, int64_t m,
                                    float* iou);
MRCNN_API int mrcnn_box_iou_f32_cuda(const float* a, const float* b, int64_t batch, int64_t n, int64_t m, float* iou,
                                     cudaStream_t stream);
MRCNN_API int mrcnn_box_iou_f16_cuda(const uint16_t* a, const uint16_t* b, int64_t batch, int64_t n, int64_t m,
                                     float* iou, cudaStream_t stream);

// ---- PreNmsSelect ------------------------------------------------------------------------------------------------
// anchors [A,4], objectness [B,A] logits, deltas [B,A,4] float32, image_sizes [B,2] int64 (h, w).
// Outputs with K = min(top_k, A): boxes [B,K,4], scores [B,K] (sigmoid, descending), valid [B,K] uint8.
// weights: 4 floats (wx, wy, ww, wh); clip: upper clamp of dw, dh.
MRCNN_API int mrcnn_pre_nms_select_cpu(const float* anchors, const float* objectness, const float* deltas,
                                       const int64_t* image_sizes, int64_t batch, int64_t num_anchors, int64_t top_k,
                                       float min_size, const float* weights, float clip, float* boxes, float* scores,
                                       uint8_t* valid);
MRCNN_API int mrcnn_pre_nms_select_workspace_size(int64_t batch, int64_t num_anchors, int64_t top_k, size_t* bytes);
MRCNN_API int mrcnn_pre_nms_select_cuda(const float* anchors, const float* objectness, const float* deltas,
                                        const int64_t* image_sizes, int64_t batch, int64_t num_anchors, int64_t top_k,
                                        float min_size, const float* weights, float clip, float* boxes, float* scores,
                                        uint8_t* valid, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// ---- BoxNms ------------------------------------------------------------------------------------------------------
// boxes [B,N,4] float32, scores [B,N] float32, classes [B,N] int64 (NULL: one class), valid [B,N] uint8 (NULL: all).
// Outputs with K = max_output: out_boxes [B,K,4], out_scores [B,K], out_classes [B,K] int64, out_indices [B,K]
// int64 (into N), out_num [B] int64. Padding slots: boxes 0, scores 0, classes 0, indices -1.
// score_threshold = -INFINITY disables the score test (candidates: valid && score > score_threshold).
MRCNN_API int mrcnn_box_nms_cpu(const float* boxes, const float* scores, const int64_t* classes, const uint8_t* valid,
                                int64_t batch, int64_t n, float iou_threshold, float score_threshold,
                                int64_t max_output, float* out_boxes, float* out_scores, int64_t* out_classes,
                                int64_t* out_indices, int64_t* out_num);
MRCNN_API int mrcnn_box_nms_workspace_size(int64_t batch, int64_t n, int64_t max_output, size_t* bytes);
MRCNN_API int mrcnn_box_nms_cuda(const float* boxes, const float* scores, const int64_t* classes, const uint8_t* valid,
                                 int64_t batch, int64_t n, float iou_threshold, float score_threshold,
                                 int64_t max_output, float* out_boxes, float* out_scores, int64_t* out_classes,
                                 int64_t* out_indices, int64_t* out_num, void* workspace, size_t workspace_bytes,
                                 cudaStream_t stream);

// ---- MatchProposals ----------------------------------------------------------------------------------------------
// iou [G,P] float32 -> matches [P] int64: best ground truth if its IoU >= high, -1 below low, -2 in between;
// allow_low_quality != 0 keeps the best ground truth of every prediction that is some ground truth's best (ties
// included). G == 0 gives all -1.
MRCNN_API int mrcnn_match_proposals_cpu(const float* iou, int64_t num_gt, int64_t num_pred, float high, float low,
                                        int allow_low_quality, int64_t* matches);
MRCNN_API int mrcnn_match_proposals_workspace_size(int64_t num_gt, int64_t num_pred, size_t* bytes);
MRCNN_API int mrcnn_match_proposals_cuda(const float* iou, int64_t num_gt, int64_t num_pred, float high, float low,
                                         int allow_low_quality, int64_t* matches, void* workspace,
                                         size_t workspace_bytes, cudaStream_t stream);

// ---- RoIAlign (training) -----------------------------------------------------------------------------------------
// torchvision.ops.roi_align semantics, float32; the CPU kernel equals torchvision's CPU kernel bit for bit. Not a
// plugin op: exported graphs use ONNX RoiAlign and TensorRT its own layer; these serve training. Multi-level (FPN)
// form: `levels` feature maps of one batch, level l = inputs[l] [batch, channels, heights[l], widths[l]] at
// spatial_scales[l] (feature / image); RoI n pools from level roi_levels[n] (roi_levels NULL: level 0), so one
// call serves a whole pyramid without splitting the RoIs by level on the host.
//   forward:  rois [num_rois, 5] (batch index, x1, y1, x2, y2) -> output [num_rois, channels, pooled_h, pooled_w]
//   backward: grad_output [num_rois, channels, pooled_h, pooled_w] -> grad_inputs[l] [batch, channels, heights[l],
//             widths[l]] (overwritten). sampling_ratio <= 0: adaptive; aligned != 0: half-pixel offset.
// 1 <= levels <= MRCNN_ROI_ALIGN_MAX_LEVELS. CPU: `threads` threads (RoIs split among them forward, channels
// backward); a batch index or level out of range is an invalid argument. CUDA (device pointers in host arrays): one
// thread per pooled value, gradients by atomicAdd (not bit-reproducible); a RoI whose batch index or level is out of
// range pools to 0 and gets no gradient (a launcher cannot inspect device data).
#define MRCNN_ROI_ALIGN_MAX_LEVELS 8
MRCNN_API int mrcnn_roi_align_f32_cpu(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                      const float* spatial_scales, int64_t levels, int64_t batch, int64_t channels,
                                      const float* rois, const int64_t* roi_levels, int64_t num_rois, int64_t pooled_h,
                                      int64_t pooled_w, int64_t sampling_ratio, int aligned, int64_t threads,
                                      float* output);
// The forward on channels-last maps: inputs[l] [batch, heights[l], widths[l], channels] in memory (torch's
// channels_last), output as above; results equal mrcnn_roi_align_f32_cpu's on the same values bit for bit.
MRCNN_API int mrcnn_roi_align_nhwc_f32_cpu(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                           const float* spatial_scales, int64_t levels, int64_t batch, int64_t channels,
                                           const float* rois, const int64_t* roi_levels, int64_t num_rois,
                                           int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, int aligned,
                                           int64_t threads, float* output);
MRCNN_API int mrcnn_roi_align_backward_f32_cpu(const float* grad_output, const float* rois, const int64_t* roi_levels,
                                               int64_t num_rois, const int64_t* heights, const int64_t* widths,
                                               const float* spatial_scales, int64_t levels, int64_t batch,
                                               int64_t channels, int64_t pooled_h, int64_t pooled_w,
                                               int64_t sampling_ratio, int aligned, int64_t threads,
                                               float* const* grad_inputs);
MRCNN_API int mrcnn_roi_align_f32_cuda(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                       const float* spatial_scales, int64_t levels, int64_t batch, int64_t channels,
                                       const float* rois, const int64_t* roi_levels, int64_t num_rois, int64_t pooled_h,
                                       int64_t pooled_w, int64_t sampling_ratio, int aligned, float* output,
                                       cudaStream_t stream);
MRCNN_API int mrcnn_roi_align_backward_f32_cuda(const float* grad_output, const float* rois, const int64_t* roi_levels,
                                                int64_t num_rois, const int64_t* heights, const int64_t* widths,
                                                const float* spatial_scales, int64_t levels, int64_t batch,
                                                int64_t channels, int64_t pooled_h, int64_t pooled_w,
                                                int64_t sampling_ratio, int aligned, float* const* grad_inputs,
                                                cudaStream_t stream);
// The CUDA kernels on channels-last maps (inputs[l] / grad_inputs[l] [batch, heights[l], widths[l], channels] in
// memory): one thread per (RoI, bin, channel), channel fastest, so a warp's reads and gradient atomics fall on one
// line. Forward output as above, equal to mrcnn_roi_align_f32_cuda's bit for bit; the backward's grad_output is
// [num_rois, pooled_h, pooled_w, channels].
MRCNN_API int mrcnn_roi_align_nhwc_f32_cuda(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                            const float* spatial_scales, int64_t levels, int64_t batch,
                                            int64_t channels, const float* rois, const int64_t* roi_levels,
                                            int64_t num_rois, int64_t pooled_h, int64_t pooled_w,
                                            int64_t sampling_ratio, int aligned, float* output, cudaStream_t stream);
MRCNN_API int mrcnn_roi_align_backward_nhwc_f32_cuda(const float* grad_output, const float* rois,
                                                     const int64_t* roi_levels, int64_t num_rois,
                                                     const int64_t* heights, const int64_t* widths,
                                                     const float* spatial_scales, int64_t levels, int64_t batch,
                                                     int64_t channels, int64_t pooled_h, int64_t pooled_w,
                                                     int64_t sampling_ratio, int aligned, float* const* grad_inputs,
                                                     cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
