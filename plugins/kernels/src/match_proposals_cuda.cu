// MatchProposals, CUDA: 1. (low-quality rule only) every ground truth's highest IoU: blocks over row chunks x
// ground truths, each reducing its chunk to one score key (host_device.h: unsigned order = float order, NaN on top)
// and folding it in with one atomicMax; 2. one thread per prediction walks the ground truths (coalesced over
// predictions) with the shared math. One block per ground truth (the first version) left most SMs idle: 20 blocks
// for a 20 x 201,600 matrix, 0.58x torch's two-kernel amax.
#include "cuda_common.cuh"
#include "mrcnn/match_proposals_math.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;  // predictions per block of the row maximum
constexpr int64_t kMaxChunkBlocks = 4096;  // grid x (grid-stride beyond)
constexpr int64_t kMaxRowBlocks = 65535;   // grid y (grid-stride beyond)

__device__ __forceinline__ uint32_t warp_max(uint32_t k) {
  for (int o = 16; o > 0; o >>= 1) k = max(k, __shfl_down_sync(0xFFFFFFFFu, k, o));
  return k;
}

// highest_key[g] must start at 0 (below every float's key).
__global__ void row_max_kernel(const float* iou, int64_t num_gt, int64_t num_pred, uint32_t* highest_key) {
  __shared__ uint32_t part[kThreads / 32];
  // both loops depend on the block only: every thread reaches each barrier
  for (int64_t g = blockIdx.y; g < num_gt; g += gridDim.y) {
    const float* row = iou + g * num_pred;
    for (int64_t start = blockIdx.x * kChunk; start < num_pred; start += gridDim.x * kChunk) {
      const int64_t end = start + kChunk < num_pred ? start + kChunk : num_pred;
      uint32_t k = 0;
      for (int64_t p = start + threadIdx.x; p < end; p += blockDim.x) k = max(k, mrcnn::score_key(row[p]));
      k = warp_max(k);
      if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = k;
      __syncthreads();
      if (threadIdx.x < 32) {
        k = warp_max(threadIdx.x < kThreads / 32 ? part[threadIdx.x] : 0u);
        if (threadIdx.x == 0) atomicMax(highest_key + g, k);
      }
      __syncthreads();
    }
  }
}

__global__ void match_kernel(const float* iou, int64_t num_gt, int64_t num_pred, float high, float low,
                             const uint32_t* highest_key, int64_t* matches) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < num_pred;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (num_gt == 0) {
      matches[p] = mrcnn::kBelowLowThreshold;
      continue;
    }
    float best = iou[p];
    int64_t best_g = 0;
    bool is_best = highest_key && iou[p] == mrcnn::score_from_key(highest_key[0]);
    for (int64_t g = 1; g < num_gt; ++g) {
      const float v = iou[g * num_pred + p];
      mrcnn::match_update<int64_t>(v, g, &best, &best_g);
      if (highest_key && v == mrcnn::score_from_key(highest_key[g])) is_best = true;
    }
    matches[p] = is_best ? best_g : mrcnn::match_classify(best, best_g, high, low);
  }
}

}  // namespace

extern "C" int mrcnn_match_proposals_workspace_size(int64_t num_gt, int64_t num_pred, size_t* bytes) {
  if (!bytes || num_gt < 0 || num_pred < 0) return cudaErrorInvalidValue;
  *bytes = mrcnn::cuda::align_up(static_cast<size_t>(num_gt) * sizeof(uint32_t));
  return cudaSuccess;
}

extern "C" int mrcnn_match_proposals_cuda(const float* iou, int64_t num_gt, int64_t num_pred, float high, float low,
                                          int allow_low_quality, int64_t* matches, void* workspace,
                                          size_t workspace_bytes, cudaStream_t stream) {
  if (num_gt < 0 || num_pred < 0) return cudaErrorInvalidValue;
  if (num_pred == 0) return cudaSuccess;
  if (!matches || (num_gt > 0 && !iou)) return cudaErrorInvalidValue;
  uint32_t* highest_key = nullptr;
  if (allow_low_quality && num_gt > 0) {
    if (!workspace || workspace_bytes < static_cast<size_t>(num_gt) * sizeof(uint32_t)) return cudaErrorInvalidValue;
    highest_key = static_cast<uint32_t*>(workspace);
    // 1. highest IoU of every ground truth, as a score key
    const cudaError_t err = cudaMemsetAsync(highest_key, 0, static_cast<size_t>(num_gt) * sizeof(uint32_t), stream);
    if (err != cudaSuccess) return static_cast<int>(err);
    const int64_t chunks = (num_pred + kChunk - 1) / kChunk;
    const dim3 grid(static_cast<unsigned>(chunks < kMaxChunkBlocks ? chunks : kMaxChunkBlocks),
                    static_cast<unsigned>(num_gt < kMaxRowBlocks ? num_gt : kMaxRowBlocks));
    row_max_kernel<<<grid, kThreads, 0, stream>>>(iou, num_gt, num_pred, highest_key);
  }
  // 2. best ground truth, thresholds, low-quality rule
  match_kernel<<<mrcnn::cuda::blocks_for(num_pred, kThreads), kThreads, 0, stream>>>(iou, num_gt, num_pred, high, low,
                                                                                     highest_key, matches);
  return static_cast<int>(cudaGetLastError());
}
