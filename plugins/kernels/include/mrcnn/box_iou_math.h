// BoxIou math (see mrcnn/ops/boxes.py box_iou): xyxy boxes, no +1, IoU 0 where the union is not positive.
// The operation order is the reference's, so float32 results match torch's float32 box_iou bit for bit.
#pragma once

#include "mrcnn/host_device.h"

namespace mrcnn {

HOST_DEVICE inline float box_area(float x1, float y1, float x2, float y2) { return (x2 - x1) * (y2 - y1); }

// IoU of box a (area_a) and box b (area_b); symmetric in (a, b) bit for bit.
HOST_DEVICE inline float box_iou_pair(float ax1, float ay1, float ax2, float ay2, float area_a, float bx1, float by1,
                                      float bx2, float by2, float area_b) {
  const float ltx = ax1 > bx1 ? ax1 : bx1;
  const float lty = ay1 > by1 ? ay1 : by1;
  const float rbx = ax2 < bx2 ? ax2 : bx2;
  const float rby = ay2 < by2 ? ay2 : by2;
  float w = rbx - ltx;
  float h = rby - lty;
  w = w < 0.0f ? 0.0f : w;
  h = h < 0.0f ? 0.0f : h;
  const float inter = w * h;
  const float uni = area_a + area_b - inter;
  const float iou = inter / uni;  // unconditional: lets compilers vectorize the select below
  return uni > 0.0f ? iou : 0.0f;
}

}  // namespace mrcnn
