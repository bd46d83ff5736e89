// BoxNms, CPU: per image, candidates are grouped by class and ordered by (score, lower index first); greedy NMS
// runs per class on structure-of-arrays copies (vectorizable inner loop, at most max_output kept per class), and
// the per-class keeps are merged in the global order. Equal to one class-aware greedy pass: classes never
// interact, and a box's fate depends only on higher-ranked boxes of its class.
#include "cpu_common.h"
#include "mrcnn/box_nms_math.h"
#include "mrcnn/kernels.h"

#include <algorithm>
#include <vector>

namespace {

struct Cand {
  int64_t cls;
  uint64_t order;  // score_key << 32 | ~index: larger first
};

inline uint64_t order_key(float score, int64_t idx) {
  return (static_cast<uint64_t>(mrcnn::score_key(score)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(idx));
}
inline int64_t order_index(uint64_t key) { return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key)); }

}  // namespace

extern "C" int mrcnn_box_nms_cpu(const float* boxes, const float* scores, const int64_t* classes, const uint8_t* valid,
                                 int64_t batch, int64_t n, float iou_threshold, float score_threshold,
                                 int64_t max_output, float* out_boxes, float* out_scores, int64_t* out_classes,
                                 int64_t* out_indices, int64_t* out_num) {
  if (batch < 0 || n < 0 || max_output < 0 || n >= (int64_t{1} << 32)) return MRCNN_ERR_INVALID_ARGUMENT;
  if (batch == 0) return MRCNN_OK;
  if ((n > 0 && (!boxes || !scores)) || !out_num ||
      (max_output > 0 && (!out_boxes || !out_scores || !out_classes || !out_indices)))
    return MRCNN_ERR_INVALID_ARGUMENT;
  const int64_t K = max_output;
  return mrcnn::cpu::guarded([&] {
    std::vector<Cand> cands;
    std::vector<float> soa;
    std::vector<uint8_t> suppressed;
    std::vector<uint64_t> kept;
    cands.reserve(static_cast<size_t>(n));
    for (int64_t b = 0; b < batch; ++b) {
      const float* bx = boxes + b * n * 4;
      const float* sc = scores + b * n;
      // 1. candidates, grouped by class, each class in processing order
      cands.clear();
      for (int64_t j = 0; j < n; ++j)
        if (mrcnn::nms_candidate(sc[j], valid ? valid[b * n + j] : 1, score_threshold))
          cands.push_back({classes ? classes[b * n + j] : 0, order_key(sc[j], j)});
      std::sort(cands.begin(), cands.end(),
                [](const Cand& u, const Cand& v) { return u.cls != v.cls ? u.cls < v.cls : u.order > v.order; });
      // 2. greedy NMS per class
      kept.clear();
      const size_t total = cands.size();
      for (size_t begin = 0, end; begin < total && K > 0; begin = end) {
        end = begin;
        while (end < total && cands[end].cls == cands[begin].cls) ++end;
        const int64_t m = static_cast<int64_t>(end - begin);
        soa.resize(static_cast<size_t>(m) * 5);
        float* x1 = soa.data();
        float* y1 = x1 + m;
        float* x2 = y1 + m;
        float* y2 = x2 + m;
        float* area = y2 + m;
        for (int64_t t = 0; t < m; ++t) {
          const float* q = bx + order_index(cands[begin + t].order) * 4;
          x1[t] = q[0];
          y1[t] = q[1];
          x2[t] = q[2];
          y2[t] = q[3];
          area[t] = mrcnn::box_area(q[0], q[1], q[2], q[3]);
        }
        suppressed.assign(static_cast<size_t>(m), 0);
        int64_t kept_here = 0;
        for (int64_t t = 0; t < m; ++t) {
          if (suppressed[t]) continue;
          kept.push_back(cands[begin + t].order);
          if (++kept_here == K) break;
          const float ax1 = x1[t], ay1 = y1[t], ax2 = x2[t], ay2 = y2[t], aa = area[t];
          uint8_t* sup = suppressed.data();
          for (int64_t u = t + 1; u < m; ++u)
            sup[u] |= static_cast<uint8_t>(
                mrcnn::box_iou_pair(ax1, ay1, ax2, ay2, aa, x1[u], y1[u], x2[u], y2[u], area[u]) > iou_threshold);
        }
      }
      // 3. merge the classes in processing order, pack the first K
      const int64_t num = std::min<int64_t>(K, static_cast<int64_t>(kept.size()));
      std::partial_sort(kept.begin(), kept.begin() + num, kept.end(), [](uint64_t u, uint64_t v) { return u > v; });
      for (int64_t s = 0; s < K; ++s) {
        const int64_t o = b * K + s;
        if (s < num) {
          const int64_t j = order_index(kept[s]);
          for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = bx[j * 4 + c];
          out_scores[o] = sc[j];
          out_classes[o] = classes ? classes[b * n + j] : 0;
          out_indices[o] = j;
        } else {
          for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = 0.0f;
          out_scores[o] = 0.0f;
          out_classes[o] = 0;
          out_indices[o] = -1;
        }
      }
      out_num[b] = num;
    }
    return MRCNN_OK;
  });
}
