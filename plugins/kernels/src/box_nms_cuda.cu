// BoxNms, CUDA (torchvision's bitmask NMS, batched, with the greedy scan on the device):
//   1. keys: (image, candidate first, score descending); count candidates per image
//   2. one stable radix sort of all images (ties: lower input index first)
//   3. mask kernel: 64x64 tiles, bit j of row i = same class and IoU(i, j) > threshold, j after i in sorted order
//   4. one block per image: greedy scan over 64-row blocks (removed bits in the workspace), writes the packed,
//      fixed-size outputs. No host synchronization; workspace O(B * N * ceil(N / 64) * 8) bytes.
#include <limits.h>

#include "cuda_common.cuh"
#include "mrcnn/box_nms_math.h"

namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;
constexpr int kReduceThreads = 128;

__global__ void nms_keys_kernel(const float* scores, const uint8_t* valid, int64_t total, int64_t n,
                                float score_threshold, uint64_t* keys, int32_t* vals, int32_t* counts) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / n;
    const bool cand = mrcnn::nms_candidate(scores[e], valid ? valid[e] : 1, score_threshold);
    uint32_t low = 0xFFFFFFFFu;  // non-candidates sort after every candidate of the image
    if (cand) {
      const uint32_t key = mrcnn::score_key(scores[e]);
      low = ~(key > 1u ? key : 1u);
      atomicAdd(&counts[b], 1);
    }
    keys[e] = (static_cast<uint64_t>(b) << 32) | low;
    vals[e] = static_cast<int32_t>(e - b * n);
  }
}

__global__ void nms_mask_kernel(const float* boxes, const int64_t* classes, const int32_t* sorted,
                                const int32_t* counts, int64_t batch, int64_t n, int col_blocks, float iou_threshold,
                                uint64_t* mask) {
  __shared__ float sbox[kTile * 4];
  __shared__ float sarea[kTile];
  __shared__ int64_t scls[kTile];
  const int row_block = blockIdx.y;
  const int col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int tid = threadIdx.x;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const int count = counts[b];
    const int row_start = row_block * kTile;
    const int col_start = col_block * kTile;
    if (col_start >= count) continue;  // uniform over the block
    const int rows = count - row_start < kTile ? count - row_start : kTile;
    const int cols = count - col_start < kTile ? count - col_start : kTile;
    __syncthreads();  // the previous image's tile is no longer read
    if (tid < cols) {
      const int64_t j = sorted[b * n + col_start + tid];
      const float* q = boxes + (b * n + j) * 4;
      for (int c = 0; c < 4; ++c) sbox[tid * 4 + c] = q[c];
      sarea[tid] = mrcnn::box_area(q[0], q[1], q[2], q[3]);
      scls[tid] = classes ? classes[b * n + j] : 0;
    }
    __syncthreads();
    if (tid < rows) {
      const int64_t i = sorted[b * n + row_start + tid];
      const float* q = boxes + (b * n + i) * 4;
      const float box[4] = {q[0], q[1], q[2], q[3]};
      const float area = mrcnn::box_area(box[0], box[1], box[2], box[3]);
      const int64_t cls = classes ? classes[b * n + i] : 0;
      uint64_t bits = 0;
      for (int k = row_block == col_block ? tid + 1 : 0; k < cols; ++k)
        if (scls[k] == cls && mrcnn::nms_suppresses(box, area, &sbox[k * 4], sarea[k], iou_threshold))
          bits |= uint64_t{1} << k;
      mask[(b * n + row_start + tid) * col_blocks + col_block] = bits;
    }
  }
}

__global__ void nms_scan_kernel(const float* boxes, const float* scores, const int64_t* classes, const int32_t* sorted,
                                const int32_t* counts, const uint64_t* mask, uint64_t* removed_all, int64_t n,
                                int col_blocks, int64_t max_output, float* out_boxes, float* out_scores,
                                int64_t* out_classes, int64_t* out_indices, int64_t* out_num) {
  __shared__ uint64_t diag[kTile];
  __shared__ int kept_rows[kTile];
  __shared__ int s_kept_here;
  __shared__ int64_t s_total;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int count = counts[b];
  const int blocks = (count + kTile - 1) / kTile;
  const uint64_t* rows = mask + b * n * col_blocks;
  uint64_t* removed = removed_all + b * col_blocks;
  const int64_t K = max_output;
  for (int w = tid; w < blocks; w += blockDim.x) removed[w] = 0;
  if (tid == 0) s_total = 0;
  __syncthreads();
  int64_t total = 0;
  for (int blk = 0; blk < blocks && total < K; ++blk) {
    // a. this block's diagonal words
    if (tid < kTile) {
      const int i = blk * kTile + tid;
      diag[tid] = i < count ? rows[static_cast<int64_t>(i) * col_blocks + blk] : 0;
    }
    __syncthreads();
    // b. sequential greedy decisions inside the block of 64
    if (tid == 0) {
      uint64_t r = removed[blk];
      int kept_here = 0;
      int64_t t = s_total;
      for (int bit = 0; bit < kTile && t < K; ++bit) {
        const int i = blk * kTile + bit;
        if (i >= count) break;
        if (!((r >> bit) & 1)) {
          kept_rows[kept_here++] = i;
          out_indices[b * K + t] = i;  // sorted position for now; replaced by the input index in step c
          ++t;
          r |= diag[bit];
        }
      }
      s_kept_here = kept_here;
      s_total = t;
    }
    __syncthreads();
    const int kept_here = s_kept_here;
    total = s_total;
    // c. boxes kept here remove their overlaps from the later blocks
    for (int w = blk + 1 + tid; w < blocks; w += blockDim.x) {
      uint64_t acc = 0;
#pragma unroll 4
      for (int q = 0; q < kept_here; ++q) acc |= rows[static_cast<int64_t>(kept_rows[q]) * col_blocks + w];
      removed[w] |= acc;
    }
    __syncthreads();
  }
  // d. pack the fixed-size outputs
  for (int64_t s = tid; s < K; s += blockDim.x) {
    const int64_t o = b * K + s;
    if (s < total) {
      const int64_t j = sorted[b * n + out_indices[o]];
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = boxes[(b * n + j) * 4 + c];
      out_scores[o] = scores[b * n + j];
      out_classes[o] = classes ? classes[b * n + j] : 0;
      out_indices[o] = j;
    } else {
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = 0.0f;
      out_scores[o] = 0.0f;
      out_classes[o] = 0;
      out_indices[o] = -1;
    }
  }
  if (tid == 0) out_num[b] = total;
}

struct Layout {
  uint64_t *keys0, *keys1;
  int32_t *vals0, *vals1;
  int32_t* counts;
  uint64_t* mask;
  uint64_t* removed;
  void* temp;
  size_t temp_bytes;
  size_t total_bytes;
};

int col_blocks_of(int64_t n) { return static_cast<int>((n + kTile - 1) / kTile); }

cudaError_t layout(void* workspace, int64_t batch, int64_t n, Layout* l) {
  const int64_t items = batch * n;
  const int64_t cb = col_blocks_of(n);
  mrcnn::cuda::Carver c(workspace);
  l->keys0 = c.take<uint64_t>(items);
  l->keys1 = c.take<uint64_t>(items);
  l->vals0 = c.take<int32_t>(items);
  l->vals1 = c.take<int32_t>(items);
  l->counts = c.take<int32_t>(batch);
  l->mask = c.take<uint64_t>(items * cb);
  l->removed = c.take<uint64_t>(batch * cb);
  l->temp_bytes = 0;
  const cudaError_t err =
      mrcnn::cuda::radix_sort_pairs(nullptr, &l->temp_bytes, nullptr, nullptr, nullptr, nullptr,
                                    static_cast<int>(items), 32 + mrcnn::cuda::segment_bits(batch), nullptr, nullptr);
  l->temp = c.take_bytes(l->temp_bytes);
  l->total_bytes = c.size();
  return err;
}

bool sizes_ok(int64_t batch, int64_t n, int64_t max_output) {
  return batch >= 0 && n >= 0 && max_output >= 0 && batch < (int64_t{1} << 31) && (n == 0 || batch <= INT_MAX / n) &&
         col_blocks_of(n) <= 65535;
}

}  // namespace

extern "C" int mrcnn_box_nms_workspace_size(int64_t batch, int64_t n, int64_t max_output, size_t* bytes) {
  if (!bytes || !sizes_ok(batch, n, max_output)) return cudaErrorInvalidValue;
  if (batch * n == 0) {
    *bytes = 0;
    return cudaSuccess;
  }
  Layout l;
  const cudaError_t err = layout(nullptr, batch, n, &l);
  *bytes = l.total_bytes;
  return static_cast<int>(err);
}

extern "C" int mrcnn_box_nms_cuda(const float* boxes, const float* scores, const int64_t* classes, const uint8_t* valid,
                                  int64_t batch, int64_t n, float iou_threshold, float score_threshold,
                                  int64_t max_output, float* out_boxes, float* out_scores, int64_t* out_classes,
                                  int64_t* out_indices, int64_t* out_num, void* workspace, size_t workspace_bytes,
                                  cudaStream_t stream) {
  if (!sizes_ok(batch, n, max_output)) return cudaErrorInvalidValue;
  if (batch == 0) return cudaSuccess;
  if (!out_num || (n > 0 && (!boxes || !scores || !workspace)) ||
      (max_output > 0 && (!out_boxes || !out_scores || !out_classes || !out_indices)))
    return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  if (n > 0) {
    Layout l;
    if ((err = layout(workspace, batch, n, &l)) != cudaSuccess) return static_cast<int>(err);
    if (workspace_bytes < l.total_bytes) return cudaErrorInvalidValue;
    const int64_t items = batch * n;
    const int cb = col_blocks_of(n);
    // 1. keys and candidate counts
    err = cudaMemsetAsync(l.counts, 0, sizeof(int32_t) * batch, stream);
    if (err != cudaSuccess) return static_cast<int>(err);
    nms_keys_kernel<<<mrcnn::cuda::blocks_for(items, kThreads), kThreads, 0, stream>>>(
        scores, valid, items, n, score_threshold, l.keys0, l.vals0, l.counts);
    // 2. sort
    int selector = 0;
    err = mrcnn::cuda::radix_sort_pairs(l.temp, &l.temp_bytes, l.keys0, l.keys1, l.vals0, l.vals1,
                                        static_cast<int>(items), 32 + mrcnn::cuda::segment_bits(batch), &selector,
                                        stream);
    if (err != cudaSuccess) return static_cast<int>(err);
    const int32_t* sorted = selector ? l.vals1 : l.vals0;
    // 3. suppression bitmask
    const dim3 grid(cb, cb, static_cast<unsigned int>(batch < 65535 ? batch : 65535));
    nms_mask_kernel<<<grid, kTile, 0, stream>>>(boxes, classes, sorted, l.counts, batch, n, cb, iou_threshold, l.mask);
    // 4. greedy scan + packing, one block per image
    nms_scan_kernel<<<static_cast<unsigned int>(batch), kReduceThreads, 0, stream>>>(
        boxes, scores, classes, sorted, l.counts, l.mask, l.removed, n, cb, max_output, out_boxes, out_scores,
        out_classes, out_indices, out_num);
  } else {
    // no boxes at all: padding only
    err = cudaMemsetAsync(out_num, 0, sizeof(int64_t) * batch, stream);
    if (err != cudaSuccess) return static_cast<int>(err);
    if (max_output > 0) {
      const size_t slots = static_cast<size_t>(batch * max_output);
      if ((err = cudaMemsetAsync(out_boxes, 0, slots * 4 * sizeof(float), stream)) != cudaSuccess ||
          (err = cudaMemsetAsync(out_scores, 0, slots * sizeof(float), stream)) != cudaSuccess ||
          (err = cudaMemsetAsync(out_classes, 0, slots * sizeof(int64_t), stream)) != cudaSuccess ||
          (err = cudaMemsetAsync(out_indices, 0xFF, slots * sizeof(int64_t), stream)) != cudaSuccess)
        return static_cast<int>(err);
    }
  }
  return static_cast<int>(cudaGetLastError());
}
