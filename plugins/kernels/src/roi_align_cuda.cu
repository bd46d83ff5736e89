// RoIAlign, CUDA, float32, single- or multi-level (see kernels.h): one thread per pooled value (RoI, channel, bin),
// the level's map picked per RoI, so a pyramid is one launch with no host-side split of the RoIs. The samples use
// the HOST_DEVICE math of the CPU kernel in its order (no FMA contraction): forward values equal the CPU kernel's
// bit for bit. Backward scatters with atomicAdd (sums in arbitrary order: equal to the CPU kernel within rounding).
// Channels-last (NHWC) instances: one thread per (RoI, bin, channel), channel fastest, so a warp reads and scatters
// 32 consecutive channels of one tap (one 128-byte line) where the NCHW kernels' warp touches 32 bins' pixels: the
// backward's atomics coalesce per line, and training on channels-last maps skips the NCHW copies of the pyramid.
#include "cuda_common.cuh"
#include "mrcnn/roi_align_math.h"

namespace {

struct Pyramid {
  const float* inputs[MRCNN_ROI_ALIGN_MAX_LEVELS];
  float* grads[MRCNN_ROI_ALIGN_MAX_LEVELS];
  int64_t heights[MRCNN_ROI_ALIGN_MAX_LEVELS];
  int64_t widths[MRCNN_ROI_ALIGN_MAX_LEVELS];
  float scales[MRCNN_ROI_ALIGN_MAX_LEVELS];
  int64_t levels;
};

struct Pooling {
  int64_t batch, channels, num_rois, pooled_h, pooled_w, sampling_ratio;
  bool aligned;
};

// Element e of the pooled values -> its RoI's level (-1: skip), where its (image, channel) starts in the level's map,
// the step between two pixels there, the RoI's geometry and the element's index in the output [num_rois, channels,
// pooled_h, pooled_w]. Elements are ordered [num_rois, channels, pooled_h, pooled_w] for NCHW maps and
// [num_rois, pooled_h, pooled_w, channels] (channel fastest) for NHWC maps, where the backward's grad_output is read
// in that order too (the caller transposes it once).
struct Bin {
  int level;
  int ph, pw;
  int64_t offset, pixel_step, out;
  mrcnn::RoiGeometry g;
};

template <bool kNhwc>
__device__ Bin locate(const Pyramid& P, const Pooling& s, const float* rois, const int64_t* roi_levels, int64_t e) {
  Bin r;
  const int64_t C = s.channels;
  const int64_t c = kNhwc ? e % C : (e / (s.pooled_w * s.pooled_h)) % C;
  const int64_t bin = kNhwc ? e / C : e;  // ends in (ph, pw), pw fastest, either way
  r.pw = static_cast<int>(bin % s.pooled_w);
  r.ph = static_cast<int>((bin / s.pooled_w) % s.pooled_h);
  const int64_t n = e / (s.pooled_w * s.pooled_h * C);
  r.out = kNhwc ? ((n * C + c) * s.pooled_h + r.ph) * s.pooled_w + r.pw : e;
  const float* roi = rois + n * 5;
  r.level = mrcnn::roi_level(roi, roi_levels, n, P.levels, s.batch);
  if (r.level >= 0 && P.heights[r.level] * P.widths[r.level] == 0) r.level = -1;
  r.offset = 0;
  r.pixel_step = kNhwc ? C : 1;
  if (r.level < 0) return r;
  const int64_t b = static_cast<int64_t>(roi[0]), plane = P.heights[r.level] * P.widths[r.level];
  r.offset = kNhwc ? b * plane * C + c : (b * C + c) * plane;
  r.g = mrcnn::roi_geometry(roi, P.scales[r.level], s.pooled_h, s.pooled_w, s.sampling_ratio, s.aligned);
  return r;
}

template <bool kNhwc>
__global__ void roi_align_forward_kernel(Pyramid P, Pooling s, const float* rois, const int64_t* roi_levels,
                                         int64_t total, float* output) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Bin r = locate<kNhwc>(P, s, rois, roi_levels, e);
    if (r.level < 0) {
      output[r.out] = 0.0f;
      continue;
    }
    const float* in = P.inputs[r.level] + r.offset;
    const int64_t k = r.pixel_step;
    const int h = static_cast<int>(P.heights[r.level]), w = static_cast<int>(P.widths[r.level]);
    float v = 0.0f;
    for (int iy = 0; iy < r.g.grid_h; ++iy)
      for (int ix = 0; ix < r.g.grid_w; ++ix) {
        const mrcnn::BilinearTaps t = mrcnn::bilinear_taps(r.g, r.ph, r.pw, iy, ix, h, w);
        v += t.w1 * in[t.p1 * k] + t.w2 * in[t.p2 * k] + t.w3 * in[t.p3 * k] + t.w4 * in[t.p4 * k];
      }
    const int samples = r.g.grid_h * r.g.grid_w;
    output[r.out] = v / static_cast<float>(samples > 1 ? samples : 1);
  }
}

template <bool kNhwc>
__global__ void roi_align_backward_kernel(Pyramid P, Pooling s, const float* rois, const int64_t* roi_levels,
                                          int64_t total, const float* grad_output) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Bin r = locate<kNhwc>(P, s, rois, roi_levels, e);
    if (r.level < 0) continue;
    float* gin = P.grads[r.level] + r.offset;
    const int64_t k = r.pixel_step;
    const int h = static_cast<int>(P.heights[r.level]), w = static_cast<int>(P.widths[r.level]);
    const float go = grad_output[e];
    const mrcnn::SampleShare share = mrcnn::sample_share(r.g.grid_h * r.g.grid_w);
    for (int iy = 0; iy < r.g.grid_h; ++iy)
      for (int ix = 0; ix < r.g.grid_w; ++ix) {
        const mrcnn::BilinearTaps t = mrcnn::bilinear_taps(r.g, r.ph, r.pw, iy, ix, h, w);
        if (!t.valid) continue;
        atomicAdd(gin + t.p1 * k, mrcnn::tap_share(go, t.w1, share));
        atomicAdd(gin + t.p2 * k, mrcnn::tap_share(go, t.w2, share));
        atomicAdd(gin + t.p3 * k, mrcnn::tap_share(go, t.w3, share));
        atomicAdd(gin + t.p4 * k, mrcnn::tap_share(go, t.w4, share));
      }
  }
}

// Shared argument checks of both launchers; fills the pyramid's shapes and scales.
bool make_pyramid(const int64_t* heights, const int64_t* widths, const float* spatial_scales, int64_t levels,
                  const Pooling& s, Pyramid* P) {
  if (!(levels >= 1 && levels <= MRCNN_ROI_ALIGN_MAX_LEVELS && heights && widths && spatial_scales)) return false;
  if (!(s.batch >= 0 && s.channels >= 0 && s.num_rois >= 0 && s.pooled_h > 0 && s.pooled_w > 0)) return false;
  *P = Pyramid{};
  P->levels = levels;
  for (int64_t l = 0; l < levels; ++l) {
    if (!(heights[l] >= 0 && widths[l] >= 0 && heights[l] * widths[l] <= INT32_MAX)) return false;
    P->heights[l] = heights[l];
    P->widths[l] = widths[l];
    P->scales[l] = spatial_scales[l];
  }
  return true;
}

constexpr int kThreads = 256;

int roi_align_forward(bool nhwc, const float* const* inputs, const int64_t* heights, const int64_t* widths,
                      const float* spatial_scales, int64_t levels, int64_t batch, int64_t channels, const float* rois,
                      const int64_t* roi_levels, int64_t num_rois, int64_t pooled_h, int64_t pooled_w,
                      int64_t sampling_ratio, int aligned, float* output, cudaStream_t stream) {
  const Pooling s{batch, channels, num_rois, pooled_h, pooled_w, sampling_ratio, aligned != 0};
  Pyramid P;
  if (!inputs || !make_pyramid(heights, widths, spatial_scales, levels, s, &P)) return cudaErrorInvalidValue;
  const int64_t total = num_rois * channels * pooled_h * pooled_w;
  if (total == 0) return cudaSuccess;
  if (!output || !rois) return cudaErrorInvalidValue;
  for (int64_t l = 0; l < levels; ++l) {
    if (!inputs[l] && batch * channels * heights[l] * widths[l] > 0) return cudaErrorInvalidValue;
    P.inputs[l] = inputs[l];
  }
  const unsigned blocks = mrcnn::cuda::blocks_for(total, kThreads);
  if (nhwc)
    roi_align_forward_kernel<true><<<blocks, kThreads, 0, stream>>>(P, s, rois, roi_levels, total, output);
  else
    roi_align_forward_kernel<false><<<blocks, kThreads, 0, stream>>>(P, s, rois, roi_levels, total, output);
  return static_cast<int>(cudaGetLastError());
}

int roi_align_backward(bool nhwc, const float* grad_output, const float* rois, const int64_t* roi_levels,
                       int64_t num_rois, const int64_t* heights, const int64_t* widths, const float* spatial_scales,
                       int64_t levels, int64_t batch, int64_t channels, int64_t pooled_h, int64_t pooled_w,
                       int64_t sampling_ratio, int aligned, float* const* grad_inputs, cudaStream_t stream) {
  const Pooling s{batch, channels, num_rois, pooled_h, pooled_w, sampling_ratio, aligned != 0};
  Pyramid P;
  if (!grad_inputs || !make_pyramid(heights, widths, spatial_scales, levels, s, &P)) return cudaErrorInvalidValue;
  for (int64_t l = 0; l < levels; ++l) {
    const size_t count = static_cast<size_t>(batch * channels * heights[l] * widths[l]);
    if (count == 0) continue;
    if (!grad_inputs[l]) return cudaErrorInvalidValue;
    P.grads[l] = grad_inputs[l];
    const cudaError_t err = cudaMemsetAsync(grad_inputs[l], 0, count * sizeof(float), stream);
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  const int64_t total = num_rois * channels * pooled_h * pooled_w;
  if (total == 0) return cudaSuccess;
  if (!grad_output || !rois) return cudaErrorInvalidValue;
  const unsigned blocks = mrcnn::cuda::blocks_for(total, kThreads);
  if (nhwc)
    roi_align_backward_kernel<true><<<blocks, kThreads, 0, stream>>>(P, s, rois, roi_levels, total, grad_output);
  else
    roi_align_backward_kernel<false><<<blocks, kThreads, 0, stream>>>(P, s, rois, roi_levels, total, grad_output);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

#define MRCNN_ROI_FORWARD_ARGS                                                                                      \
  inputs, heights, widths, spatial_scales, levels, batch, channels, rois, roi_levels, num_rois, pooled_h, pooled_w, \
      sampling_ratio, aligned, output, stream
#define MRCNN_ROI_BACKWARD_ARGS                                                                                \
  grad_output, rois, roi_levels, num_rois, heights, widths, spatial_scales, levels, batch, channels, pooled_h, \
      pooled_w, sampling_ratio, aligned, grad_inputs, stream

extern "C" int mrcnn_roi_align_f32_cuda(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                        const float* spatial_scales, int64_t levels, int64_t batch, int64_t channels,
                                        const float* rois, const int64_t* roi_levels, int64_t num_rois,
                                        int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, int aligned,
                                        float* output, cudaStream_t stream) {
  return roi_align_forward(false, MRCNN_ROI_FORWARD_ARGS);
}

extern "C" int mrcnn_roi_align_nhwc_f32_cuda(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                             const float* spatial_scales, int64_t levels, int64_t batch,
                                             int64_t channels, const float* rois, const int64_t* roi_levels,
                                             int64_t num_rois, int64_t pooled_h, int64_t pooled_w,
                                             int64_t sampling_ratio, int aligned, float* output, cudaStream_t stream) {
  return roi_align_forward(true, MRCNN_ROI_FORWARD_ARGS);
}

extern "C" int mrcnn_roi_align_backward_f32_cuda(const float* grad_output, const float* rois, const int64_t* roi_levels,
                                                 int64_t num_rois, const int64_t* heights, const int64_t* widths,
                                                 const float* spatial_scales, int64_t levels, int64_t batch,
                                                 int64_t channels, int64_t pooled_h, int64_t pooled_w,
                                                 int64_t sampling_ratio, int aligned, float* const* grad_inputs,
                                                 cudaStream_t stream) {
  return roi_align_backward(false, MRCNN_ROI_BACKWARD_ARGS);
}

extern "C" int mrcnn_roi_align_backward_nhwc_f32_cuda(const float* grad_output, const float* rois,
                                                      const int64_t* roi_levels, int64_t num_rois,
                                                      const int64_t* heights, const int64_t* widths,
                                                      const float* spatial_scales, int64_t levels, int64_t batch,
                                                      int64_t channels, int64_t pooled_h, int64_t pooled_w,
                                                      int64_t sampling_ratio, int aligned, float* const* grad_inputs,
                                                      cudaStream_t stream) {
  return roi_align_backward(true, MRCNN_ROI_BACKWARD_ARGS);
}
