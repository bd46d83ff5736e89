// MatchProposals, CUDA: 1. (low-quality rule only) one block per ground truth computes its highest IoU;
// 2. one thread per prediction walks the ground truths (coalesced over predictions) with the shared math.
#include "cuda_common.cuh"
#include "mrcnn/match_proposals_math.h"

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float max_propagate_nan(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

__global__ void row_max_kernel(const float* iou, int64_t num_gt, int64_t num_pred, float* highest) {
  __shared__ float part[kThreads];
  for (int64_t g = blockIdx.x; g < num_gt; g += gridDim.x) {
    const float* row = iou + g * num_pred;
    float m = row[0];
    for (int64_t p = threadIdx.x; p < num_pred; p += blockDim.x) m = max_propagate_nan(m, row[p]);
    __syncthreads();
    part[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (static_cast<int>(threadIdx.x) < s) part[threadIdx.x] = max_propagate_nan(part[threadIdx.x], part[threadIdx.x + s]);
      __syncthreads();
    }
    if (threadIdx.x == 0) highest[g] = part[0];
  }
}

__global__ void match_kernel(const float* iou, int64_t num_gt, int64_t num_pred, float high, float low,
                             const float* highest, int64_t* matches) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < num_pred;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (num_gt == 0) {
      matches[p] = mrcnn::kBelowLowThreshold;
      continue;
    }
    float best = iou[p];
    int64_t best_g = 0;
    bool is_best = highest && iou[p] == highest[0];
    for (int64_t g = 1; g < num_gt; ++g) {
      const float v = iou[g * num_pred + p];
      mrcnn::match_update<int64_t>(v, g, &best, &best_g);
      if (highest && v == highest[g]) is_best = true;
    }
    matches[p] = is_best ? best_g : mrcnn::match_classify(best, best_g, high, low);
  }
}

}  // namespace

extern "C" int mrcnn_match_proposals_workspace_size(int64_t num_gt, int64_t num_pred, size_t* bytes) {
  if (!bytes || num_gt < 0 || num_pred < 0) return cudaErrorInvalidValue;
  *bytes = mrcnn::cuda::align_up(static_cast<size_t>(num_gt) * sizeof(float));
  return cudaSuccess;
}

extern "C" int mrcnn_match_proposals_cuda(const float* iou, int64_t num_gt, int64_t num_pred, float high, float low,
                                          int allow_low_quality, int64_t* matches, void* workspace,
                                          size_t workspace_bytes, cudaStream_t stream) {
  if (num_gt < 0 || num_pred < 0) return cudaErrorInvalidValue;
  if (num_pred == 0) return cudaSuccess;
  if (!matches || (num_gt > 0 && !iou)) return cudaErrorInvalidValue;
  float* highest = nullptr;
  if (allow_low_quality && num_gt > 0) {
    if (!workspace || workspace_bytes < static_cast<size_t>(num_gt) * sizeof(float)) return cudaErrorInvalidValue;
    highest = static_cast<float*>(workspace);
    // 1. highest IoU of every ground truth
    row_max_kernel<<<mrcnn::cuda::blocks_for(num_gt, 1, 65535), kThreads, 0, stream>>>(iou, num_gt, num_pred,
                                                                                        highest);
  }
  // 2. best ground truth, thresholds, low-quality rule
  match_kernel<<<mrcnn::cuda::blocks_for(num_pred, kThreads), kThreads, 0, stream>>>(iou, num_gt, num_pred, high,
                                                                                      low, highest, matches);
  return static_cast<int>(cudaGetLastError());
}
