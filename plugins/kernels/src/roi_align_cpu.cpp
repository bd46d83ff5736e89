// RoIAlign, CPU, float32, single- or multi-level (torchvision.ops.roi_align semantics and bit-exact results; see
// kernels.h). The bilinear taps of a RoI are computed once and shared by all channels; forward splits RoIs among
// threads, backward splits channels (each gradient plane has one writer, and its contributions arrive in
// torchvision's order: RoIs in input order, which per level is the order of a per-level call).
#include "cpu_common.h"
#include "mrcnn/kernels.h"
#include "mrcnn/roi_align_math.h"

#include <vector>

namespace {

struct Shape {
  const int64_t *heights, *widths;
  const float* scales;
  int64_t levels, batch, channels, num_rois, pooled_h, pooled_w, sampling_ratio;
  bool aligned;
};

bool valid_shape(const Shape& s) {
  if (!(s.levels >= 1 && s.levels <= MRCNN_ROI_ALIGN_MAX_LEVELS && s.heights && s.widths && s.scales)) return false;
  if (!(s.batch >= 0 && s.channels >= 0 && s.num_rois >= 0 && s.pooled_h > 0 && s.pooled_w > 0)) return false;
  for (int64_t l = 0; l < s.levels; ++l)
    if (!(s.heights[l] >= 0 && s.widths[l] >= 0 && s.heights[l] * s.widths[l] <= INT32_MAX)) return false;
  return true;
}

// Every RoI names an image of the batch and a level (torchvision does not check; a bad index reads out of bounds).
bool valid_rois(const float* rois, const int64_t* roi_levels, const Shape& s) {
  for (int64_t n = 0; n < s.num_rois; ++n)
    if (mrcnn::roi_level(rois + n * 5, roi_levels, n, s.levels, s.batch) < 0) return false;
  return true;
}

// The taps of every sample of RoI n on level l, bin-major then sample (iy, ix); returns the RoI's geometry.
mrcnn::RoiGeometry roi_taps(const float* rois, int64_t n, int l, const Shape& s,
                            std::vector<mrcnn::BilinearTaps>& taps) {
  const mrcnn::RoiGeometry g =
      mrcnn::roi_geometry(rois + n * 5, s.scales[l], s.pooled_h, s.pooled_w, s.sampling_ratio, s.aligned);
  taps.resize(static_cast<size_t>(s.pooled_h * s.pooled_w) * static_cast<size_t>(g.grid_h > 0 ? g.grid_h : 0) *
              static_cast<size_t>(g.grid_w > 0 ? g.grid_w : 0));
  size_t k = 0;
  for (int ph = 0; ph < s.pooled_h; ++ph)
    for (int pw = 0; pw < s.pooled_w; ++pw)
      for (int iy = 0; iy < g.grid_h; ++iy)
        for (int ix = 0; ix < g.grid_w; ++ix)
          taps[k++] =
              mrcnn::bilinear_taps(g, ph, pw, iy, ix, static_cast<int>(s.heights[l]), static_cast<int>(s.widths[l]));
  return g;
}

// The forward's argument checks, shared by both layouts: an error, or MRCNN_OK with `work` false when there is no
// output value to compute.
int check_forward(const float* const* inputs, const float* rois, const int64_t* roi_levels, const float* output,
                  const Shape& s, bool& work) {
  work = false;
  if (!valid_shape(s) || !inputs) return MRCNN_ERR_INVALID_ARGUMENT;
  if (s.num_rois * s.channels == 0) return MRCNN_OK;
  if (!output || !rois) return MRCNN_ERR_INVALID_ARGUMENT;
  for (int64_t l = 0; l < s.levels; ++l)
    if (!inputs[l] && s.batch * s.channels * s.heights[l] * s.widths[l] > 0) return MRCNN_ERR_INVALID_ARGUMENT;
  if (!valid_rois(rois, roi_levels, s)) return MRCNN_ERR_INVALID_ARGUMENT;
  work = true;
  return MRCNN_OK;
}

// Both forwards' walk: checks, RoIs split among threads, and per RoI its level, taps and image; an empty map pools
// to 0. `pool(image, taps, samples, count, out, scratch)` writes RoI n's [channels, bins] values to `out` from
// `image` (its image on its level, channels * plane floats in either layout); `scratch` holds `channels` floats per
// thread.
template <typename Pool>
int forward_rois(const float* const* inputs, const float* rois, const int64_t* roi_levels, float* output,
                 const Shape& s, int64_t threads, Pool pool) {
  bool work = false;
  const int status = check_forward(inputs, rois, roi_levels, output, s, work);
  if (status != MRCNN_OK || !work) return status;
  const int64_t bins = s.pooled_h * s.pooled_w, C = s.channels;
  return mrcnn::cpu::parallel_ranges(s.num_rois, threads, [&](int64_t r0, int64_t r1) {
    std::vector<mrcnn::BilinearTaps> taps;
    std::vector<float> scratch(static_cast<size_t>(C));
    for (int64_t n = r0; n < r1; ++n) {
      const int l = mrcnn::roi_level(rois + n * 5, roi_levels, n, s.levels, s.batch);
      const int64_t plane = s.heights[l] * s.widths[l];
      float* out = output + n * C * bins;
      if (plane == 0) {
        memset(out, 0, sizeof(float) * static_cast<size_t>(C * bins));
        continue;
      }
      const mrcnn::RoiGeometry g = roi_taps(rois, n, l, s, taps);
      const int samples = g.grid_h * g.grid_w;
      const float count = static_cast<float>(samples > 1 ? samples : 1);
      const int64_t b = static_cast<int64_t>(rois[n * 5]);
      pool(inputs[l] + b * C * plane, taps.data(), samples, count, out, scratch.data(), plane);
    }
    return MRCNN_OK;
  });
}

}  // namespace

extern "C" int mrcnn_roi_align_f32_cpu(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                       const float* spatial_scales, int64_t levels, int64_t batch, int64_t channels,
                                       const float* rois, const int64_t* roi_levels, int64_t num_rois, int64_t pooled_h,
                                       int64_t pooled_w, int64_t sampling_ratio, int aligned, int64_t threads,
                                       float* output) {
  const Shape s{heights,  widths,   spatial_scales, levels,         batch,       channels,
                num_rois, pooled_h, pooled_w,       sampling_ratio, aligned != 0};
  const int64_t bins = pooled_h * pooled_w;
  return forward_rois(inputs, rois, roi_levels, output, s, threads,
                      [&](const float* image, const mrcnn::BilinearTaps* taps, int samples, float count, float* out,
                          float*, int64_t plane) {
                        for (int64_t c = 0; c < channels; ++c, out += bins) {
                          const float* in = image + c * plane;
                          const mrcnn::BilinearTaps* t = taps;
                          for (int64_t bin = 0; bin < bins; ++bin) {
                            float v = 0.0f;
                            for (int k = 0; k < samples; ++k, ++t)
                              v += t->w1 * in[t->p1] + t->w2 * in[t->p2] + t->w3 * in[t->p3] + t->w4 * in[t->p4];
                            out[bin] = v / count;
                          }
                        }
                      });
}

// The same forward on channels-last (NHWC) feature maps: level l's value (b, y, x, c) at ((b * H + y) * W + x) * C + c.
// Every tap reads a contiguous run of C channels, so the channel loop vectorises and no NCHW copy of the pyramid is
// made (what eager inference on channels-last features needs); per value the sum is the NCHW kernel's, term for term,
// so the results are equal bit for bit.
extern "C" int mrcnn_roi_align_nhwc_f32_cpu(const float* const* inputs, const int64_t* heights, const int64_t* widths,
                                            const float* spatial_scales, int64_t levels, int64_t batch,
                                            int64_t channels, const float* rois, const int64_t* roi_levels,
                                            int64_t num_rois, int64_t pooled_h, int64_t pooled_w,
                                            int64_t sampling_ratio, int aligned, int64_t threads, float* output) {
  const Shape s{heights,  widths,   spatial_scales, levels,         batch,       channels,
                num_rois, pooled_h, pooled_w,       sampling_ratio, aligned != 0};
  const int64_t bins = pooled_h * pooled_w;
  return forward_rois(
      inputs, rois, roi_levels, output, s, threads,
      [&](const float* in, const mrcnn::BilinearTaps* t, int samples, float count, float* out, float* a, int64_t) {
        for (int64_t bin = 0; bin < bins; ++bin) {
          for (int64_t c = 0; c < channels; ++c) a[c] = 0.0f;
          for (int k = 0; k < samples; ++k, ++t) {
            const float *v1 = in + t->p1 * channels, *v2 = in + t->p2 * channels, *v3 = in + t->p3 * channels,
                        *v4 = in + t->p4 * channels;
            const float w1 = t->w1, w2 = t->w2, w3 = t->w3, w4 = t->w4;
            for (int64_t c = 0; c < channels; ++c) a[c] += w1 * v1[c] + w2 * v2[c] + w3 * v3[c] + w4 * v4[c];
          }
          for (int64_t c = 0; c < channels; ++c) out[c * bins + bin] = a[c] / count;
        }
      });
}

extern "C" int mrcnn_roi_align_backward_f32_cpu(const float* grad_output, const float* rois, const int64_t* roi_levels,
                                                int64_t num_rois, const int64_t* heights, const int64_t* widths,
                                                const float* spatial_scales, int64_t levels, int64_t batch,
                                                int64_t channels, int64_t pooled_h, int64_t pooled_w,
                                                int64_t sampling_ratio, int aligned, int64_t threads,
                                                float* const* grad_inputs) {
  const Shape s{heights,  widths,   spatial_scales, levels,         batch,       channels,
                num_rois, pooled_h, pooled_w,       sampling_ratio, aligned != 0};
  if (!valid_shape(s) || !grad_inputs) return MRCNN_ERR_INVALID_ARGUMENT;
  if (batch * channels == 0) return MRCNN_OK;
  for (int64_t l = 0; l < levels; ++l)
    if (!grad_inputs[l] && heights[l] * widths[l] > 0) return MRCNN_ERR_INVALID_ARGUMENT;
  if (num_rois > 0 && (!grad_output || !rois)) return MRCNN_ERR_INVALID_ARGUMENT;
  if (!valid_rois(rois, roi_levels, s)) return MRCNN_ERR_INVALID_ARGUMENT;
  const int64_t bins = pooled_h * pooled_w;
  return mrcnn::cpu::parallel_ranges(channels, threads, [&](int64_t c0, int64_t c1) {
    for (int64_t l = 0; l < levels; ++l) {
      const int64_t plane = heights[l] * widths[l];
      for (int64_t b = 0; plane > 0 && b < batch; ++b)
        memset(grad_inputs[l] + (b * channels + c0) * plane, 0, sizeof(float) * static_cast<size_t>((c1 - c0) * plane));
    }
    std::vector<mrcnn::BilinearTaps> taps;
    for (int64_t n = 0; n < num_rois; ++n) {
      const int l = mrcnn::roi_level(rois + n * 5, roi_levels, n, levels, batch);
      const int64_t plane = heights[l] * widths[l];
      if (plane == 0) continue;
      const mrcnn::RoiGeometry g = roi_taps(rois, n, l, s, taps);
      const int samples = g.grid_h * g.grid_w;
      const mrcnn::SampleShare share = mrcnn::sample_share(samples);
      const int64_t b = static_cast<int64_t>(rois[n * 5]);
      for (int64_t c = c0; c < c1; ++c) {
        float* gin = grad_inputs[l] + (b * channels + c) * plane;
        const float* gout = grad_output + (n * channels + c) * bins;
        const mrcnn::BilinearTaps* t = taps.data();
        for (int64_t bin = 0; bin < bins; ++bin) {
          const float go = gout[bin];
          for (int k = 0; k < samples; ++k, ++t) {
            if (!t->valid) continue;
            gin[t->p1] += mrcnn::tap_share(go, t->w1, share);
            gin[t->p2] += mrcnn::tap_share(go, t->w2, share);
            gin[t->p3] += mrcnn::tap_share(go, t->w3, share);
            gin[t->p4] += mrcnn::tap_share(go, t->w4, share);
          }
        }
      }
    }
    return MRCNN_OK;
  });
}
