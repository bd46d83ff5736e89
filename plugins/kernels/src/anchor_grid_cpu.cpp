// AnchorGrid, CPU.
#include "cpu_common.h"
#include "mrcnn/anchor_grid_math.h"
#include "mrcnn/kernels.h"

#include <vector>

extern "C" int mrcnn_anchor_grid_cpu(int64_t feat_h, int64_t feat_w, int64_t image_h, int64_t image_w,
                                     const float* sizes, int64_t num_sizes, const float* aspect_ratios,
                                     int64_t num_ratios, int64_t stride, float* anchors) {
  if (feat_h < 0 || feat_w < 0 || image_h < 0 || image_w < 0 || stride < 0 || num_sizes < 1 || num_ratios < 1 ||
      num_sizes > MRCNN_ANCHOR_MAX_PARAMS || num_ratios > MRCNN_ANCHOR_MAX_PARAMS || !sizes || !aspect_ratios)
    return MRCNN_ERR_INVALID_ARGUMENT;
  const int64_t A = num_sizes * num_ratios;
  if (feat_h * feat_w == 0) return MRCNN_OK;
  if (!anchors) return MRCNN_ERR_INVALID_ARGUMENT;
  return mrcnn::cpu::guarded([&] {
    // 1. base anchors, ratio-major
    std::vector<float> base(static_cast<size_t>(A) * 4);
    for (int64_t r = 0; r < num_ratios; ++r)
      for (int64_t s = 0; s < num_sizes; ++s)
        mrcnn::anchor_base(sizes[s], aspect_ratios[r], &base[(r * num_sizes + s) * 4]);
    // 2. every (location, base anchor) pair
    int64_t stride_h, stride_w;
    mrcnn::anchor_strides(feat_h, feat_w, image_h, image_w, stride, &stride_h, &stride_w);
    float* out = anchors;
    const float* cell = base.data();
    for (int64_t y = 0; y < feat_h; ++y) {
      const float sy = mrcnn::anchor_shift(y, stride_h);
      for (int64_t x = 0; x < feat_w; ++x, out += A * 4) {
        const float sx = mrcnn::anchor_shift(x, stride_w);
        for (int64_t a = 0; a < A; ++a) {  // = anchor_coord(y, x, ..., cell[a * 4 + c], c)
          out[a * 4 + 0] = sx + cell[a * 4 + 0];
          out[a * 4 + 1] = sy + cell[a * 4 + 1];
          out[a * 4 + 2] = sx + cell[a * 4 + 2];
          out[a * 4 + 3] = sy + cell[a * 4 + 3];
        }
      }
    }
    return MRCNN_OK;
  });
}
