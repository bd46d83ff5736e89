// BoxIou, CUDA: a block owns 256 columns (b boxes, kept in registers) and walks rows of `a` (a broadcast load per
// row); stores of a row segment are coalesced. Memory-bound on the [B,N,M] float32 output.
#include <cuda_fp16.h>

#include "cuda_common.cuh"
#include "mrcnn/box_iou_math.h"

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 16;

__device__ __forceinline__ float load_coord(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_coord(const uint16_t* p, int64_t i) {
  return __half2float(reinterpret_cast<const __half*>(p)[i]);
}

template <typename T>
__global__ void box_iou_kernel(const T* a, const T* b, int64_t batch, int64_t n, int64_t m, float* iou) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool has_col = j < m;
  for (int64_t k = blockIdx.z; k < batch; k += gridDim.z) {
    float bx1 = 0.f, by1 = 0.f, bx2 = 0.f, by2 = 0.f, barea = 0.f;
    if (has_col) {
      const int64_t o = (k * m + j) * 4;
      bx1 = load_coord(b, o);
      by1 = load_coord(b, o + 1);
      bx2 = load_coord(b, o + 2);
      by2 = load_coord(b, o + 3);
      barea = mrcnn::box_area(bx1, by1, bx2, by2);
    }
    for (int64_t i0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock; i0 < n;
         i0 += static_cast<int64_t>(gridDim.y) * kRowsPerBlock) {
      const int64_t i_end = i0 + kRowsPerBlock < n ? i0 + kRowsPerBlock : n;
      for (int64_t i = i0; i < i_end; ++i) {
        const int64_t o = (k * n + i) * 4;
        const float ax1 = load_coord(a, o), ay1 = load_coord(a, o + 1);
        const float ax2 = load_coord(a, o + 2), ay2 = load_coord(a, o + 3);
        if (has_col)
          iou[(k * n + i) * m + j] =
              mrcnn::box_iou_pair(ax1, ay1, ax2, ay2, mrcnn::box_area(ax1, ay1, ax2, ay2), bx1, by1, bx2, by2, barea);
      }
    }
  }
}

template <typename T>
int launch(const T* a, const T* b, int64_t batch, int64_t n, int64_t m, float* iou, cudaStream_t stream) {
  if (batch < 0 || n < 0 || m < 0) return cudaErrorInvalidValue;
  if (batch * n * m == 0) return cudaSuccess;
  if (!a || !b || !iou) return cudaErrorInvalidValue;
  const int64_t gx = (m + kThreads - 1) / kThreads;
  const int64_t gy = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  if (gx > 0x7FFFFFFF) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy < 65535 ? gy : 65535),
                  static_cast<unsigned int>(batch < 65535 ? batch : 65535));
  box_iou_kernel<T><<<grid, kThreads, 0, stream>>>(a, b, batch, n, m, iou);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" int mrcnn_box_iou_f32_cuda(const float* a, const float* b, int64_t batch, int64_t n, int64_t m, float* iou,
                                      cudaStream_t stream) {
  return launch(a, b, batch, n, m, iou, stream);
}

extern "C" int mrcnn_box_iou_f16_cuda(const uint16_t* a, const uint16_t* b, int64_t batch, int64_t n, int64_t m,
                                      float* iou, cudaStream_t stream) {
  return launch(a, b, batch, n, m, iou, stream);
}
