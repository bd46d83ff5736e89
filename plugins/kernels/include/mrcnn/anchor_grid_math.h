// AnchorGrid math (see mrcnn/ops/anchors.py): torchvision's AnchorGenerator, bit-exact in float32.
//   base anchor a = r * num_sizes + s (ratio-major), output row = (y * W + x) * A + a.
#pragma once

#include <math.h>

#include "mrcnn/host_device.h"

namespace mrcnn {

// Zero-centred base anchor: round([-w, -h, w, h] / 2), h = size * sqrt(ratio), w = size / sqrt(ratio), all float32,
// rounding half to even like torch.round.
HOST_DEVICE inline void anchor_base(float size, float ratio, float out[4]) {
  const float h_ratio = sqrtf(ratio);
  const float w_ratio = 1.0f / h_ratio;
  const float ws = w_ratio * size;
  const float hs = h_ratio * size;
  out[0] = rintf(-ws / 2.0f);
  out[1] = rintf(-hs / 2.0f);
  out[2] = rintf(ws / 2.0f);
  out[3] = rintf(hs / 2.0f);
}

// torchvision's stride rule: a positive `stride` forces both, else image // feature per axis.
HOST_DEVICE inline void anchor_strides(int64_t feat_h, int64_t feat_w, int64_t image_h, int64_t image_w, int64_t stride,
                                       int64_t* stride_h, int64_t* stride_w) {
  if (stride > 0) {
    *stride_h = stride;
    *stride_w = stride;
  } else {
    *stride_h = feat_h > 0 ? image_h / feat_h : 0;
    *stride_w = feat_w > 0 ? image_w / feat_w : 0;
  }
}

// Shift of a location along one axis: the int64 product converted to float32, the way torch promotes an int64
// shift plus a float32 cell.
HOST_DEVICE inline float anchor_shift(int64_t pos, int64_t stride) { return static_cast<float>(pos * stride); }

// One coordinate c (0..3: x1 y1 x2 y2) of the anchor at feature location (y, x): shift + base.
HOST_DEVICE inline float anchor_coord(int64_t y, int64_t x, int64_t stride_h, int64_t stride_w, float base, int c) {
  return ((c & 1) ? anchor_shift(y, stride_h) : anchor_shift(x, stride_w)) + base;
}

}  // namespace mrcnn
