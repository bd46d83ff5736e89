// BoxNms math (see mrcnn/ops/nms.py box_nms_reference): candidates, processing order, suppression test.
// Greedy, class-aware: in order of (score_key descending, input index ascending), a candidate is kept unless a kept
// candidate of the same class has IoU > iou_threshold with it; the first max_output kept ones are the output.
#pragma once

#include "mrcnn/box_iou_math.h"
#include "mrcnn/host_device.h"

namespace mrcnn {

// valid and score > score_threshold (strict); score_threshold = -inf disables the score test.
HOST_DEVICE inline bool nms_candidate(float score, uint8_t valid, float score_threshold) {
  return valid != 0 && (is_neg_inf(score_threshold) || score > score_threshold);
}

// Does kept box a suppress box b (same class already checked)?
HOST_DEVICE inline bool nms_suppresses(const float a[4], float area_a, const float b[4], float area_b,
                                       float iou_threshold) {
  return box_iou_pair(a[0], a[1], a[2], a[3], area_a, b[0], b[1], b[2], b[3], area_b) > iou_threshold;
}

}  // namespace mrcnn
