// PreNmsSelect, CUDA: 1. keys (image, score_key descending) for every anchor, 2. one stable radix sort of all
// images (ties keep the lower anchor index first, like the CPU kernel), 3. decode / clip / validity of the first K
// anchors of every image with the shared HOST_DEVICE math. No host synchronization.
#include <limits.h>

#include "cuda_common.cuh"
#include "mrcnn/pre_nms_select_math.h"

namespace {

constexpr int kThreads = 256;

__global__ void pre_nms_keys_kernel(const float* objectness, int64_t total, int64_t num_anchors, uint64_t* keys,
                                    int32_t* vals) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / num_anchors;
    keys[e] = (static_cast<uint64_t>(b) << 32) | static_cast<uint32_t>(~mrcnn::score_key(objectness[e]));
    vals[e] = static_cast<int32_t>(e - b * num_anchors);
  }
}

__global__ void pre_nms_decode_kernel(const float* anchors, const float* objectness, const float* deltas,
                                      const int64_t* image_sizes, int64_t total, int64_t num_anchors, int64_t K,
                                      float min_size, mrcnn::DecodeParams p, const int32_t* sorted, float* boxes,
                                      float* scores, uint8_t* valid) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / K;
    const int64_t s = e - b * K;
    const int64_t j = sorted[b * num_anchors + s];
    float anchor[4], delta[4], box[4];
    for (int c = 0; c < 4; ++c) {
      anchor[c] = anchors[j * 4 + c];
      delta[c] = deltas[(b * num_anchors + j) * 4 + c];
    }
    float score;
    uint8_t ok;
    mrcnn::select_one(anchor, delta, objectness[b * num_anchors + j], static_cast<float>(image_sizes[b * 2]),
                      static_cast<float>(image_sizes[b * 2 + 1]), min_size, p, box, &score, &ok);
    for (int c = 0; c < 4; ++c) boxes[e * 4 + c] = box[c];
    scores[e] = score;
    valid[e] = ok;
  }
}

struct Layout {
  uint64_t *keys0, *keys1;
  int32_t *vals0, *vals1;
  void* temp;
  size_t temp_bytes;
  size_t total_bytes;
};

// Workspace layout; with workspace == nullptr only sizes are computed.
cudaError_t layout(void* workspace, int64_t batch, int64_t num_anchors, Layout* l) {
  const int64_t n = batch * num_anchors;
  mrcnn::cuda::Carver c(workspace);
  l->keys0 = c.take<uint64_t>(n);
  l->keys1 = c.take<uint64_t>(n);
  l->vals0 = c.take<int32_t>(n);
  l->vals1 = c.take<int32_t>(n);
  l->temp_bytes = 0;
  const cudaError_t err =
      mrcnn::cuda::radix_sort_pairs(nullptr, &l->temp_bytes, nullptr, nullptr, nullptr, nullptr, static_cast<int>(n),
                                    32 + mrcnn::cuda::segment_bits(batch), nullptr, nullptr);
  l->temp = c.take_bytes(l->temp_bytes);
  l->total_bytes = c.size();
  return err;
}

bool sizes_ok(int64_t batch, int64_t num_anchors, int64_t top_k) {
  return batch >= 0 && num_anchors >= 0 && top_k >= 0 && batch < (int64_t{1} << 31) &&
         (num_anchors == 0 || batch <= INT_MAX / num_anchors);
}

}  // namespace

extern "C" int mrcnn_pre_nms_select_workspace_size(int64_t batch, int64_t num_anchors, int64_t top_k, size_t* bytes) {
  if (!bytes || !sizes_ok(batch, num_anchors, top_k)) return cudaErrorInvalidValue;
  if (batch * num_anchors == 0) {
    *bytes = 0;
    return cudaSuccess;
  }
  Layout l;
  const cudaError_t err = layout(nullptr, batch, num_anchors, &l);
  *bytes = l.total_bytes;
  return static_cast<int>(err);
}

extern "C" int mrcnn_pre_nms_select_cuda(const float* anchors, const float* objectness, const float* deltas,
                                         const int64_t* image_sizes, int64_t batch, int64_t num_anchors, int64_t top_k,
                                         float min_size, const float* weights, float clip, float* boxes, float* scores,
                                         uint8_t* valid, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (!weights || !sizes_ok(batch, num_anchors, top_k)) return cudaErrorInvalidValue;
  const int64_t K = top_k < num_anchors ? top_k : num_anchors;
  if (batch * K == 0) return cudaSuccess;
  if (!anchors || !objectness || !deltas || !image_sizes || !boxes || !scores || !valid || !workspace)
    return cudaErrorInvalidValue;
  Layout l;
  cudaError_t err = layout(workspace, batch, num_anchors, &l);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (workspace_bytes < l.total_bytes) return cudaErrorInvalidValue;
  const int64_t n = batch * num_anchors;
  // 1. keys: (image, score descending), values: anchor index
  pre_nms_keys_kernel<<<mrcnn::cuda::blocks_for(n, kThreads), kThreads, 0, stream>>>(objectness, n, num_anchors,
                                                                                     l.keys0, l.vals0);
  // 2. stable sort of all images at once
  int selector = 0;
  err = mrcnn::cuda::radix_sort_pairs(l.temp, &l.temp_bytes, l.keys0, l.keys1, l.vals0, l.vals1, static_cast<int>(n),
                                      32 + mrcnn::cuda::segment_bits(batch), &selector, stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int32_t* sorted = selector ? l.vals1 : l.vals0;
  // 3. decode, clip, validity, sigmoid of the top K of every image
  const mrcnn::DecodeParams p{weights[0], weights[1], weights[2], weights[3], clip};
  const int64_t out = batch * K;
  pre_nms_decode_kernel<<<mrcnn::cuda::blocks_for(out, kThreads), kThreads, 0, stream>>>(
      anchors, objectness, deltas, image_sizes, out, num_anchors, K, min_size, p, sorted, boxes, scores, valid);
  return static_cast<int>(cudaGetLastError());
}
