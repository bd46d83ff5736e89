// PreNmsSelect, CPU. Per image:
//   1. top-k by (score_key descending, index ascending): a threshold key from a strided sample of the logits, one
//      streaming pass collecting the anchors at or above it (about 1.25 k of them), nth_element + sort of those.
//      Exact whatever the sample says: when fewer than k anchors pass, every anchor is collected.
//   2. decode, clip, min-size validity and sigmoid of only the k selected anchors (shared HOST_DEVICE math).
#include "cpu_common.h"
#include "mrcnn/kernels.h"
#include "mrcnn/pre_nms_select_math.h"

#include <algorithm>
#include <functional>
#include <vector>

namespace {

// Unique selection key: larger is better (score_key descending, then index ascending).
inline uint64_t select_key(uint32_t score_key, int64_t idx) {
  return (static_cast<uint64_t>(score_key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(idx));
}
inline int64_t key_index(uint64_t key) { return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key)); }

constexpr int64_t kSampleStride = 16;

// The K best select keys of logits[0, A), best first, into `out` (resized to K). `sample` is scratch.
void select_top_k(const float* logits, int64_t A, int64_t K, std::vector<uint32_t>& sample,
                  std::vector<uint64_t>& out) {
  // 1a. threshold key: rank ~1.25 K / stride (+ margin) in a strided sample; 0 (take all) when K is large
  uint32_t threshold = 0;
  const int64_t S = A / kSampleStride;
  const int64_t rank = K / kSampleStride + K / (4 * kSampleStride) + 16;
  if (rank < S) {
    sample.resize(static_cast<size_t>(S));
    for (int64_t i = 0; i < S; ++i) sample[i] = mrcnn::score_key(logits[i * kSampleStride]);
    std::nth_element(sample.begin(), sample.begin() + rank, sample.end(), std::greater<uint32_t>());
    threshold = sample[rank];
  }
  // 1b. collect everything at or above the threshold (all anchors if that is fewer than K)
  for (int pass = 0; pass < 2; ++pass) {
    out.clear();
    for (int64_t j = 0; j < A; ++j) {
      const uint32_t key = mrcnn::score_key(logits[j]);
      if (key >= threshold) out.push_back(select_key(key, j));
    }
    if (static_cast<int64_t>(out.size()) >= K) break;
    threshold = 0;
  }
  // 1c. the K best, sorted
  if (static_cast<int64_t>(out.size()) > K) {
    std::nth_element(out.begin(), out.begin() + (K - 1), out.end(), std::greater<uint64_t>());
    out.resize(static_cast<size_t>(K));
  }
  std::sort(out.begin(), out.end(), std::greater<uint64_t>());
}

}  // namespace

extern "C" int mrcnn_pre_nms_select_cpu(const float* anchors, const float* objectness, const float* deltas,
                                        const int64_t* image_sizes, int64_t batch, int64_t num_anchors, int64_t top_k,
                                        float min_size, const float* weights, float clip, float* boxes, float* scores,
                                        uint8_t* valid) {
  if (batch < 0 || num_anchors < 0 || top_k < 0 || num_anchors >= (int64_t{1} << 32) || !weights)
    return MRCNN_ERR_INVALID_ARGUMENT;
  const int64_t K = std::min(top_k, num_anchors);
  if (batch * K == 0) return MRCNN_OK;
  if (!anchors || !objectness || !deltas || !image_sizes || !boxes || !scores || !valid)
    return MRCNN_ERR_INVALID_ARGUMENT;
  const mrcnn::DecodeParams p{weights[0], weights[1], weights[2], weights[3], clip};
  return mrcnn::cpu::guarded([&] {
    std::vector<uint32_t> sample;
    std::vector<uint64_t> selected;
    selected.reserve(static_cast<size_t>(K + K / 2 + 64));
    for (int64_t b = 0; b < batch; ++b) {
      const float* logits = objectness + b * num_anchors;
      // 1. top-k by (logit, lower index first)
      select_top_k(logits, num_anchors, K, sample, selected);
      // 2. decode the selected deltas on their anchors, clip, min-size validity, sigmoid
      const float image_h = static_cast<float>(image_sizes[b * 2 + 0]);
      const float image_w = static_cast<float>(image_sizes[b * 2 + 1]);
      for (int64_t s = 0; s < K; ++s) {
        const int64_t j = key_index(selected[s]);
        const int64_t o = b * K + s;
        mrcnn::select_one(anchors + j * 4, deltas + (b * num_anchors + j) * 4, logits[j], image_h, image_w, min_size, p,
                          boxes + o * 4, scores + o, valid + o);
      }
    }
    return MRCNN_OK;
  });
}
