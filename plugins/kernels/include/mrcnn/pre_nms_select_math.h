// PreNmsSelect math (see mrcnn/ops/proposals.py, boxes.py decode_boxes / clip_boxes / box_sizes_at_least):
// torchvision's BoxCoder.decode_single, clip_boxes_to_image and remove_small_boxes for one selected anchor, with
// the reference's operation order. Selection order: score_key(logit) descending, anchor index ascending.
#pragma once

#include <math.h>

#include "mrcnn/host_device.h"

namespace mrcnn {

struct DecodeParams {
  float wx, wy, ww, wh;  // box coder weights
  float clip;            // upper clamp of dw / dh (log(1000/16) by default)
};

HOST_DEVICE inline void decode_box(const float anchor[4], const float delta[4], const DecodeParams& p, float out[4]) {
  const float widths = anchor[2] - anchor[0];
  const float heights = anchor[3] - anchor[1];
  const float ctr_x = anchor[0] + 0.5f * widths;
  const float ctr_y = anchor[1] + 0.5f * heights;
  const float dx = delta[0] / p.wx;
  const float dy = delta[1] / p.wy;
  const float dw = min_nan(delta[2] / p.ww, p.clip);
  const float dh = min_nan(delta[3] / p.wh, p.clip);
  const float pred_ctr_x = dx * widths + ctr_x;
  const float pred_ctr_y = dy * heights + ctr_y;
  const float pred_w = expf(dw) * widths;
  const float pred_h = expf(dh) * heights;
  const float c_to_c_w = 0.5f * pred_w;
  const float c_to_c_h = 0.5f * pred_h;
  out[0] = pred_ctr_x - c_to_c_w;
  out[1] = pred_ctr_y - c_to_c_h;
  out[2] = pred_ctr_x + c_to_c_w;
  out[3] = pred_ctr_y + c_to_c_h;
}

// Clamp into [0, w] x [0, h] (NaN propagates like torch.max / torch.min).
HOST_DEVICE inline void clip_box(float b[4], float image_h, float image_w) {
  b[0] = min_nan(max_nan(b[0], 0.0f), image_w);
  b[1] = min_nan(max_nan(b[1], 0.0f), image_h);
  b[2] = min_nan(max_nan(b[2], 0.0f), image_w);
  b[3] = min_nan(max_nan(b[3], 0.0f), image_h);
}

HOST_DEVICE inline bool box_size_at_least(const float b[4], float min_size) {
  return (b[2] - b[0]) >= min_size && (b[3] - b[1]) >= min_size;
}

HOST_DEVICE inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Steps 2-3 for one selected anchor: decode, clip to the unpadded image, min-size validity, sigmoid score.
HOST_DEVICE inline void select_one(const float anchor[4], const float delta[4], float logit, float image_h,
                                   float image_w, float min_size, const DecodeParams& p, float box[4], float* score,
                                   uint8_t* valid) {
  decode_box(anchor, delta, p, box);
  clip_box(box, image_h, image_w);
  *valid = box_size_at_least(box, min_size) ? 1 : 0;
  *score = sigmoid(logit);
}

}  // namespace mrcnn
