// PreNmsSelect (contract: plugins/README.md): per image, decode the RPN deltas on one level's anchors, clip to the
// image, mark boxes below min_size invalid and keep the top K = min(top_k, A) by objectness.
//   in:  anchors [A,4] f32, objectness [B,A] f32, deltas [B,A,4] f32, image_sizes [B,2] int64
//   out: boxes [B,K,4] f32, scores [B,K] f32, valid [B,K] bool
#include <limits>

#include "../common/creators.h"
#include "../common/plugin_common.h"
#include "mrcnn/kernels.h"

namespace mrcnn::trt {
namespace {

using namespace nvinfer1;
constexpr double kINF = std::numeric_limits<double>::infinity();

class PreNmsSelectPlugin : public PluginBase<PreNmsSelectPlugin> {
 public:
  static char const* name() { return "PreNmsSelect"; }
  static std::vector<FieldSpec> const& specs() {
    static std::vector<FieldSpec> const s = {
        {"top_k", FieldKind::kINT, 1, 1, 0.0, std::numeric_limits<int32_t>::max()},
        {"min_size", FieldKind::kFLOAT, 1, 1, 0.0, kINF},
        {"weights", FieldKind::kFLOATS, 4, 4, 1e-12, kINF},
        {"clip", FieldKind::kFLOAT, 1, 1, -kINF, kINF},
    };
    return s;
  }
  static std::unique_ptr<PreNmsSelectPlugin> fromFields(FieldValues const& v) {
    return std::make_unique<PreNmsSelectPlugin>(v.integer(0), v.scalar(1), v.floats(2), v.scalar(3));
  }
  PreNmsSelectPlugin(int64_t topK, float minSize, std::vector<float> weights, float clip)
      : mTopK(topK), mMinSize(minSize), mWeights(std::move(weights)), mClip(clip) {}

  void serialize(SerializedFields& f) const {
    f.addInt("top_k", mTopK);
    f.addFloat("min_size", mMinSize);
    f.addFloats("weights", mWeights);
    f.addFloat("clip", mClip);
  }

  int32_t getNbOutputs() const noexcept override { return 3; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const*, int32_t) const noexcept override {
    if (nbOutputs != 3) return -1;
    out[0] = out[1] = DataType::kFLOAT;
    out[2] = DataType::kBOOL;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder& b) noexcept override {
    try {
      if (nbInputs != 4 || nbOutputs != 3 || in[0].nbDims != 2 || in[1].nbDims != 2 || in[2].nbDims != 3 ||
          in[3].nbDims != 2) {
        logError(name(), "takes anchors [A,4], objectness [B,A], deltas [B,A,4], image_sizes [B,2]");
        return -1;
      }
      IDimensionExpr const* B = in[1].d[0];
      IDimensionExpr const* K = b.operation(DimensionOperation::kMIN, *b.constant(mTopK), *in[1].d[1]);
      out[0].nbDims = 3;
      out[0].d[0] = B;
      out[0].d[1] = K;
      out[0].d[2] = b.constant(4);
      out[1].nbDims = out[2].nbDims = 2;
      out[1].d[0] = out[2].d[0] = B;
      out[1].d[1] = out[2].d[1] = K;
      return 0;
    } catch (std::exception const& e) {
      logError(name(), e.what());
      return -1;
    }
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    static std::vector<DataType> const kTypes = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64,
                                                 DataType::kFLOAT, DataType::kFLOAT, DataType::kBOOL};
    return fixedFormat(pos, io, nbInputs, nbOutputs, kTypes);
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    size_t bytes = 0;  // for the profile's largest batch and anchor count
    if (mrcnn_pre_nms_select_workspace_size(in[1].max.d[0], in[1].max.d[1], mTopK, &bytes) != 0) {
      logError(name(), "cannot size the workspace (no CUDA device?)");
      return 0;
    }
    return bytes;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void* workspace, cudaStream_t stream) noexcept override {
    int64_t const B = in[1].dims.d[0], A = in[1].dims.d[1];
    size_t bytes = 0;
    if (B * A > 0 && mrcnn_pre_nms_select_workspace_size(B, A, mTopK, &bytes) != 0) return launched(name(), -1);
    return launched(
        name(), mrcnn_pre_nms_select_cuda(static_cast<float const*>(inputs[0]), static_cast<float const*>(inputs[1]),
                                          static_cast<float const*>(inputs[2]), static_cast<int64_t const*>(inputs[3]),
                                          B, A, mTopK, mMinSize, mWeights.data(), mClip,
                                          static_cast<float*>(outputs[0]), static_cast<float*>(outputs[1]),
                                          static_cast<uint8_t*>(outputs[2]), workspace, bytes, stream));
  }

 private:
  int64_t mTopK;
  float mMinSize;
  std::vector<float> mWeights;
  float mClip;
};

}  // namespace

IPluginCreatorInterface* preNmsSelectCreator() {
  static Creator<PreNmsSelectPlugin> creator;
  return &creator;
}

}  // namespace mrcnn::trt
