// Internal helpers of the CPU kernels (not part of the ABI).
#pragma once

#include <stdint.h>
#include <string.h>

#include <new>

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

}  // namespace cpu
}  // namespace mrcnn
