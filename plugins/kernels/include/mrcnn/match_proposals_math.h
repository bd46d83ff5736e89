// Matcher math (see mrcnn/ops/matcher.py, torchvision Matcher): best ground truth per prediction and the
// low-quality rule. Maxima propagate NaN like torch.max; ties give the lowest ground-truth index.
#pragma once

#include "mrcnn/host_device.h"

namespace mrcnn {

constexpr int64_t kBelowLowThreshold = -1;
constexpr int64_t kBetweenThresholds = -2;

// Running (value, index) maximum over ground truths g = 0, 1, ...; call with g ascending. Branch-free.
template <typename Index>
HOST_DEVICE inline void match_update(float v, Index g, float* best, Index* best_g) {
  const bool take = (*best == *best) & ((v > *best) | (v != v));
  *best = take ? v : *best;
  *best_g = take ? g : *best_g;
}

// Step 1 for one prediction: threshold its best IoU.
HOST_DEVICE inline int64_t match_classify(float best, int64_t best_g, float high, float low) {
  if (best < low) return kBelowLowThreshold;
  if (best < high) return kBetweenThresholds;
  return best_g;
}

}  // namespace mrcnn
