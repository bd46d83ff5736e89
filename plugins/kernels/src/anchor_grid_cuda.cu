// AnchorGrid, CUDA: one thread per output coordinate (coalesced stores); base anchors recomputed per thread with
// the same HOST_DEVICE math as the CPU kernel (IEEE sqrt / division, no FMA contraction: bit-identical).
#include "cuda_common.cuh"
#include "mrcnn/anchor_grid_math.h"

namespace {

struct AnchorParams {
  int num_sizes;
  int num_ratios;
  float sizes[MRCNN_ANCHOR_MAX_PARAMS];
  float ratios[MRCNN_ANCHOR_MAX_PARAMS];
};

__global__ void anchor_grid_kernel(AnchorParams p, int64_t feat_w, int64_t stride_h, int64_t stride_w, int64_t total,
                                   float* out) {
  const int64_t A = static_cast<int64_t>(p.num_sizes) * p.num_ratios;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(e & 3);
    const int64_t row = e >> 2;
    const int64_t a = row % A;
    const int64_t loc = row / A;
    float base[4];
    mrcnn::anchor_base(p.sizes[a % p.num_sizes], p.ratios[a / p.num_sizes], base);
    out[e] = mrcnn::anchor_coord(loc / feat_w, loc % feat_w, stride_h, stride_w, base[c], c);
  }
}

}  // namespace

extern "C" int mrcnn_anchor_grid_cuda(int64_t feat_h, int64_t feat_w, int64_t image_h, int64_t image_w,
                                      const float* sizes, int64_t num_sizes, const float* aspect_ratios,
                                      int64_t num_ratios, int64_t stride, float* anchors, cudaStream_t stream) {
  if (feat_h < 0 || feat_w < 0 || image_h < 0 || image_w < 0 || stride < 0 || num_sizes < 1 || num_ratios < 1 ||
      num_sizes > MRCNN_ANCHOR_MAX_PARAMS || num_ratios > MRCNN_ANCHOR_MAX_PARAMS || !sizes || !aspect_ratios)
    return cudaErrorInvalidValue;
  const int64_t total = feat_h * feat_w * num_sizes * num_ratios * 4;
  if (total == 0) return cudaSuccess;
  if (!anchors) return cudaErrorInvalidValue;
  AnchorParams p{};
  p.num_sizes = static_cast<int>(num_sizes);
  p.num_ratios = static_cast<int>(num_ratios);
  for (int64_t i = 0; i < num_sizes; ++i) p.sizes[i] = sizes[i];
  for (int64_t i = 0; i < num_ratios; ++i) p.ratios[i] = aspect_ratios[i];
  int64_t stride_h, stride_w;
  mrcnn::anchor_strides(feat_h, feat_w, image_h, image_w, stride, &stride_h, &stride_w);
  constexpr int kThreads = 256;
  anchor_grid_kernel<<<mrcnn::cuda::blocks_for(total, kThreads), kThreads, 0, stream>>>(p, feat_w, stride_h, stride_w,
                                                                                        total, anchors);
  return static_cast<int>(cudaGetLastError());
}
