// Internal helpers of the CPU kernels (not part of the ABI).
#pragma once

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <new>
#include <thread>
#include <vector>

#include "mrcnn/kernels.h"

namespace mrcnn {
namespace cpu {

// Run `body` (returning an MRCNN_* code), turning C++ exceptions into codes: nothing escapes the C ABI.
template <typename F>
int guarded(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return MRCNN_ERR_OUT_OF_MEMORY;
  } catch (...) {
    return MRCNN_ERR_INTERNAL;
  }
}

// IEEE binary16 bits -> float32 (exact).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: mant * 2^-24, exact in float32
      float f = static_cast<float>(mant) * (1.0f / 16777216.0f);
      memcpy(&bits, &f, sizeof(bits));
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float out;
  memcpy(&out, &bits, sizeof(out));
  return out;
}

// Split [0, n) into `threads` contiguous ranges and run body(begin, end) -> MRCNN_* code on each, the first range on
// the calling thread. Returns the first non-zero code; exceptions become codes (guarded). threads <= 1 runs inline.
template <typename F>
int parallel_ranges(int64_t n, int64_t threads, F&& body) noexcept {
  threads = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  if (threads == 1) return guarded([&] { return body(int64_t{0}, n); });
  std::atomic<int> status{MRCNN_OK};
  auto run = [&](int64_t t) {
    const int code = guarded([&] { return body(n * t / threads, n * (t + 1) / threads); });
    int ok = MRCNN_OK;
    if (code != MRCNN_OK) status.compare_exchange_strong(ok, code);
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(static_cast<size_t>(threads - 1));
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(run, t);
  } catch (...) {  // no more threads: the calling thread does the remaining ranges
    for (int64_t t = static_cast<int64_t>(pool.size()) + 1; t < threads; ++t) run(t);
  }
  run(0);
  for (auto& th : pool) th.join();
  return status.load();
}

}  // namespace cpu
}  // namespace mrcnn
