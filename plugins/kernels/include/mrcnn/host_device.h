// Shared helpers of the HOST_DEVICE math: one definition used by the C++ CPU loops and the CUDA kernels.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

namespace mrcnn {

// torch.max / torch.min semantics for elementwise max/min: a NaN in `a` propagates (`b` is a bound, never NaN).
HOST_DEVICE inline float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }
HOST_DEVICE inline float min_nan(float a, float b) { return (a < b || a != a) ? a : b; }

HOST_DEVICE inline uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

// -inf is the "disabled" value of score thresholds.
HOST_DEVICE inline bool is_neg_inf(float x) { return float_bits(x) == 0xFF800000u; }

// A uint32 whose unsigned order is the order of `score` as torch.topk sees it: NaN above +inf, -0 == +0.
// Selection everywhere is "key descending, then input index ascending", so ties go to the lower index and the
// CPU and CUDA kernels pick identical index sets.
// Branch-free (vectorizable).
HOST_DEVICE inline uint32_t score_key(float score) {
  const uint32_t u = float_bits(score);
  const uint32_t mag = u & 0x7FFFFFFFu;
  uint32_t key = u ^ ((0u - (u >> 31)) | 0x80000000u);  // negative: ~u, positive: u | sign bit
  key = mag == 0 ? 0x80000000u : key;                   // -0 == +0
  return mag > 0x7F800000u ? 0xFFFFFFFFu : key;         // NaN above +inf
}

// The value of the largest score_key: a NaN for 0xFFFFFFFF, +0 for either zero. (Key 0 comes from no float: the
// start of a running maximum of keys, e.g. one built with atomicMax.)
HOST_DEVICE inline float score_from_key(uint32_t key) {
  return bits_float(key == 0xFFFFFFFFu ? 0x7FC00000u : (key & 0x80000000u) ? key & 0x7FFFFFFFu : ~key);
}

}  // namespace mrcnn
