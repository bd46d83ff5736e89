// Internal helpers of the CUDA launchers (not part of the ABI).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "mrcnn/kernels.h"

namespace mrcnn {
namespace cuda {

constexpr size_t kWorkspaceAlign = 256;

inline size_t align_up(size_t bytes) { return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// Hands out aligned slices of one workspace buffer; with base == nullptr it only adds up the size.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(size_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += align_up(count * sizeof(T));
    return p;
  }
  void* take_bytes(size_t bytes) { return take<char>(bytes); }
  size_t size() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

// Blocks for a grid-stride loop over `n` items.
inline unsigned int blocks_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 64) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks < max_blocks ? blocks : max_blocks);
}

// Stable LSD radix sort of (key, value) pairs by key bits [0, end_bit), ascending, on `stream`. keys0/vals0 hold the
// input; keys1/vals1 are scratch; *selector tells which pair (0 or 1) holds the result. With temp == nullptr only
// *temp_bytes is computed. n < 2^31. Defined in sort_cuda.cu (the only cub instantiation of the library).
cudaError_t radix_sort_pairs(void* temp, size_t* temp_bytes, uint64_t* keys0, uint64_t* keys1, int32_t* vals0,
                             int32_t* vals1, int n, int end_bit, int* selector, cudaStream_t stream);

// Keys for "segment ascending, then score_key descending": bits needed above the 32 score bits.
inline int segment_bits(int64_t segments) {
  int bits = 0;
  while ((int64_t{1} << bits) < segments) ++bits;
  return bits;
}

}  // namespace cuda
}  // namespace mrcnn
