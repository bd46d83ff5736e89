// BoxIou, CPU: rows of `a` against a structure-of-arrays copy of `b`, so the inner loop vectorizes.
#include "cpu_common.h"
#include "mrcnn/box_iou_math.h"
#include "mrcnn/kernels.h"

#include <vector>

namespace {

template <typename Load>
int box_iou_cpu(Load load, int64_t batch, int64_t n, int64_t m, float* iou) {
  if (batch < 0 || n < 0 || m < 0) return MRCNN_ERR_INVALID_ARGUMENT;
  if (batch * n * m == 0) return MRCNN_OK;
  if (!iou) return MRCNN_ERR_INVALID_ARGUMENT;
  return mrcnn::cpu::guarded([&] {
    std::vector<float> soa(static_cast<size_t>(m) * 5);
    float* bx1 = soa.data();
    float* by1 = bx1 + m;
    float* bx2 = by1 + m;
    float* by2 = bx2 + m;
    float* barea = by2 + m;
    for (int64_t k = 0; k < batch; ++k) {
      // 1. b boxes of this image as arrays, with their areas
      for (int64_t j = 0; j < m; ++j) {
        bx1[j] = load(1, (k * m + j) * 4 + 0);
        by1[j] = load(1, (k * m + j) * 4 + 1);
        bx2[j] = load(1, (k * m + j) * 4 + 2);
        by2[j] = load(1, (k * m + j) * 4 + 3);
        barea[j] = mrcnn::box_area(bx1[j], by1[j], bx2[j], by2[j]);
      }
      // 2. one output row per a box
      for (int64_t i = 0; i < n; ++i) {
        const float ax1 = load(0, (k * n + i) * 4 + 0), ay1 = load(0, (k * n + i) * 4 + 1);
        const float ax2 = load(0, (k * n + i) * 4 + 2), ay2 = load(0, (k * n + i) * 4 + 3);
        const float aarea = mrcnn::box_area(ax1, ay1, ax2, ay2);
        float* row = iou + (k * n + i) * m;
        for (int64_t j = 0; j < m; ++j)
          row[j] = mrcnn::box_iou_pair(ax1, ay1, ax2, ay2, aarea, bx1[j], by1[j], bx2[j], by2[j], barea[j]);
      }
    }
    return MRCNN_OK;
  });
}

}  // namespace

extern "C" int mrcnn_box_iou_f32_cpu(const float* a, const float* b, int64_t batch, int64_t n, int64_t m, float* iou) {
  if ((!a && batch * n > 0) || (!b && batch * m > 0)) return MRCNN_ERR_INVALID_ARGUMENT;
  return box_iou_cpu([&](int which, int64_t idx) { return which == 0 ? a[idx] : b[idx]; }, batch, n, m, iou);
}

extern "C" int mrcnn_box_iou_f16_cpu(const uint16_t* a, const uint16_t* b, int64_t batch, int64_t n, int64_t m,
                                     float* iou) {
  if ((!a && batch * n > 0) || (!b && batch * m > 0)) return MRCNN_ERR_INVALID_ARGUMENT;
  return box_iou_cpu([&](int which, int64_t idx) { return mrcnn::cpu::half_to_float(which == 0 ? a[idx] : b[idx]); },
                     batch, n, m, iou);
}
