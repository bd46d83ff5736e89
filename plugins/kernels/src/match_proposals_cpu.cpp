// MatchProposals, CPU.
#include "cpu_common.h"
#include "mrcnn/kernels.h"
#include "mrcnn/match_proposals_math.h"

#include <limits.h>

#include <algorithm>
#include <vector>

extern "C" int mrcnn_match_proposals_cpu(const float* iou, int64_t num_gt, int64_t num_pred, float high, float low,
                                         int allow_low_quality, int64_t* matches) {
  if (num_gt < 0 || num_pred < 0 || num_gt > INT32_MAX) return MRCNN_ERR_INVALID_ARGUMENT;
  if (num_pred == 0) return MRCNN_OK;
  if (!matches || (num_gt > 0 && !iou)) return MRCNN_ERR_INVALID_ARGUMENT;
  return mrcnn::cpu::guarded([&] {
    const int64_t G = num_gt, P = num_pred;
    if (G == 0) {
      for (int64_t p = 0; p < P; ++p) matches[p] = mrcnn::kBelowLowThreshold;
      return MRCNN_OK;
    }
    // 1. best ground truth per prediction (row by row, so the loop over predictions is contiguous)
    std::vector<float> best(iou, iou + P);
    std::vector<int32_t> best_g(static_cast<size_t>(P), 0);  // int32 lanes: the loop vectorizes
    for (int32_t g = 1; g < static_cast<int32_t>(G); ++g) {
      const float* row = iou + g * P;
      float* bv = best.data();
      int32_t* bg = best_g.data();
      for (int64_t p = 0; p < P; ++p) mrcnn::match_update(row[p], g, &bv[p], &bg[p]);
    }
    for (int64_t p = 0; p < P; ++p) matches[p] = mrcnn::match_classify(best[p], best_g[p], high, low);
    // 2. low-quality matches: predictions that are some ground truth's best
    if (allow_low_quality) {
      std::vector<uint8_t> is_best(static_cast<size_t>(P), 0);
      for (int64_t g = 0; g < G; ++g) {
        const float* row = iou + g * P;
        uint32_t key = 0;  // the maximum as the CUDA kernel takes it (atomicMax over score keys): NaN propagates
        for (int64_t p = 0; p < P; ++p) key = std::max(key, mrcnn::score_key(row[p]));
        const float highest = mrcnn::score_from_key(key);
        for (int64_t p = 0; p < P; ++p) is_best[p] |= static_cast<uint8_t>(row[p] == highest);
      }
      for (int64_t p = 0; p < P; ++p)
        if (is_best[p]) matches[p] = best_g[p];
    }
    return MRCNN_OK;
  });
}
