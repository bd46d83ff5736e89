// RoIAlign sampling math (torchvision.ops.roi_align semantics, Mask R-CNN's legacy `aligned=False` and the
// half-pixel `aligned=True`). HOST_DEVICE so that a CUDA kernel can share it with the CPU one. Float32 throughout;
// the expressions keep torchvision's operation order, so pooled values and gradients equal its CPU kernel's bit for
// bit.
#pragma once

#include <math.h>
#include <stdint.h>

#include "mrcnn/host_device.h"

namespace mrcnn {

// One RoI mapped onto a feature map: start, bin size and the sampling grid of each bin.
struct RoiGeometry {
  float start_w, start_h, bin_w, bin_h;
  int grid_h, grid_w;
};

// ceil(extent / pooled) samples per bin side; 0 (no samples: the bin pools to 0) for an empty, inverted or NaN
// extent, where torchvision's int conversion would be undefined; capped at 2^20 (int overflow).
HOST_DEVICE inline int adaptive_grid(float extent, int64_t pooled) {
  const float n = ceilf(extent / static_cast<float>(pooled));
  return n >= 1.0f ? (n < 1048576.0f ? static_cast<int>(n) : 1048576) : 0;
}

// roi = [batch_index, x1, y1, x2, y2] in image pixels; spatial_scale = feature / image.
HOST_DEVICE inline RoiGeometry roi_geometry(const float* roi, float spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                            int64_t sampling_ratio, bool aligned) {
  RoiGeometry g;
  const float offset = aligned ? 0.5f : 0.0f;
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  float roi_w = roi[3] * spatial_scale - offset - g.start_w;
  float roi_h = roi[4] * spatial_scale - offset - g.start_h;
  if (!aligned) {  // legacy: malformed RoIs become 1x1
    roi_w = roi_w > 1.0f ? roi_w : 1.0f;
    roi_h = roi_h > 1.0f ? roi_h : 1.0f;
  }
  g.bin_h = roi_h / static_cast<float>(pooled_h);
  g.bin_w = roi_w / static_cast<float>(pooled_w);
  // adaptive grid (sampling_ratio <= 0): ceil(roi / pooled) samples per bin side
  g.grid_h = sampling_ratio > 0 ? static_cast<int>(sampling_ratio) : adaptive_grid(roi_h, pooled_h);
  g.grid_w = sampling_ratio > 0 ? static_cast<int>(sampling_ratio) : adaptive_grid(roi_w, pooled_w);
  return g;
}

// The four taps of one bilinear sample: offsets into an H x W plane and their weights. `valid` is false for
// samples outside [-1, H] x [-1, W] (and NaN coordinates): they contribute nothing.
struct BilinearTaps {
  int p1, p2, p3, p4;
  float w1, w2, w3, w4;
  bool valid;
};

// Sample (iy, ix) of bin (ph, pw).
HOST_DEVICE inline BilinearTaps bilinear_taps(const RoiGeometry& g, int ph, int pw, int iy, int ix, int height,
                                              int width) {
  BilinearTaps t;
  float y = g.start_h + ph * g.bin_h + static_cast<float>(iy + .5f) * g.bin_h / static_cast<float>(g.grid_h);
  float x = g.start_w + pw * g.bin_w + static_cast<float>(ix + .5f) * g.bin_w / static_cast<float>(g.grid_w);
  if (!(y >= -1.0f && y <= static_cast<float>(height) && x >= -1.0f && x <= static_cast<float>(width))) {
    t.p1 = t.p2 = t.p3 = t.p4 = 0;
    t.w1 = t.w2 = t.w3 = t.w4 = 0.0f;
    t.valid = false;
    return t;
  }
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int y_low = static_cast<int>(y), x_low = static_cast<int>(x), y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = static_cast<float>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = static_cast<float>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const float ly = y - y_low, lx = x - x_low;
  const float hy = 1.0f - ly, hx = 1.0f - lx;
  t.w1 = hy * hx;
  t.w2 = hy * lx;
  t.w3 = ly * hx;
  t.w4 = ly * lx;
  t.p1 = y_low * width + x_low;
  t.p2 = y_low * width + x_high;
  t.p3 = y_high * width + x_low;
  t.p4 = y_high * width + x_high;
  t.valid = true;
  return t;
}

// A bin's share of its gradient for one tap in the backward pass: torchvision's (go * w) / count, count = samples
// per bin. For a power-of-two count (sampling_ratio 2: 4) the division is done as the multiplication by 1 / count,
// which is exact and rounds identically (the same result bit for bit), at a fraction of a division's cost.
struct SampleShare {
  float count, inverse;
  bool power_of_two;
};

HOST_DEVICE inline SampleShare sample_share(int samples) {
  SampleShare s;
  s.count = static_cast<float>(samples);
  s.inverse = 1.0f / s.count;
  s.power_of_two = samples > 0 && (samples & (samples - 1)) == 0;
  return s;
}

HOST_DEVICE inline float tap_share(float go, float w, const SampleShare& s) {
  return s.power_of_two ? (go * w) * s.inverse : (go * w) / s.count;
}

// Level of RoI n in a pyramid of `levels` maps (roi_levels NULL: level 0), or -1 when that level or the RoI's batch
// index (roi[0]) is out of range.
HOST_DEVICE inline int roi_level(const float* roi, const int64_t* roi_levels, int64_t n, int64_t levels,
                                 int64_t batch) {
  const int64_t l = roi_levels ? roi_levels[n] : 0;
  const float b = roi[0];
  return (l >= 0 && l < levels && b >= 0.0f && b < static_cast<float>(batch)) ? static_cast<int>(l) : -1;
}

}  // namespace mrcnn
