// BoxNms (contract: plugins/README.md): batched, class-aware greedy NMS with fixed-size outputs and valid counts.
//   in:  boxes [B,N,4] f32, scores [B,N] f32, classes [B,N] int64, valid [B,N] bool
//   out: boxes [B,K,4] f32, scores [B,K] f32, classes [B,K] int64, indices [B,K] int64, num [B] int64 (K = max_output)
#include <limits>

#include "../common/creators.h"
#include "../common/plugin_common.h"
#include "mrcnn/kernels.h"

namespace mrcnn::trt {
namespace {

using namespace nvinfer1;
constexpr double kINF = std::numeric_limits<double>::infinity();

class BoxNmsPlugin : public PluginBase<BoxNmsPlugin> {
 public:
  static char const* name() { return "BoxNms"; }
  static std::vector<FieldSpec> const& specs() {
    static std::vector<FieldSpec> const s = {
        {"iou_threshold", FieldKind::kFLOAT, 1, 1, -kINF, kINF},
        {"score_threshold", FieldKind::kFLOAT, 1, 1, -kINF, kINF},
        {"max_output", FieldKind::kINT, 1, 1, 0.0, std::numeric_limits<int32_t>::max()},
    };
    return s;
  }
  static std::unique_ptr<BoxNmsPlugin> fromFields(FieldValues const& v) {
    return std::make_unique<BoxNmsPlugin>(v.scalar(0), v.scalar(1), v.integer(2));
  }
  BoxNmsPlugin(float iouThreshold, float scoreThreshold, int64_t maxOutput)
      : mIou(iouThreshold), mScore(scoreThreshold), mMaxOutput(maxOutput) {}

  void serialize(SerializedFields& f) const {
    f.addFloat("iou_threshold", mIou);
    f.addFloat("score_threshold", mScore);
    f.addInt("max_output", mMaxOutput);
  }

  int32_t getNbOutputs() const noexcept override { return 5; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const*, int32_t) const noexcept override {
    if (nbOutputs != 5) return -1;
    out[0] = out[1] = DataType::kFLOAT;
    out[2] = out[3] = out[4] = DataType::kINT64;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder& b) noexcept override {
    try {
      if (nbInputs != 4 || nbOutputs != 5 || in[0].nbDims != 3 || in[1].nbDims != 2 || in[2].nbDims != 2 ||
          in[3].nbDims != 2) {
        logError(name(), "takes boxes [B,N,4], scores [B,N], classes [B,N], valid [B,N]");
        return -1;
      }
      IDimensionExpr const* B = in[0].d[0];
      IDimensionExpr const* K = b.constant(mMaxOutput);
      out[0].nbDims = 3;
      out[0].d[0] = B;
      out[0].d[1] = K;
      out[0].d[2] = b.constant(4);
      for (int32_t i = 1; i < 4; ++i) {
        out[i].nbDims = 2;
        out[i].d[0] = B;
        out[i].d[1] = K;
      }
      out[4].nbDims = 1;
      out[4].d[0] = B;
      return 0;
    } catch (std::exception const& e) {
      logError(name(), e.what());
      return -1;
    }
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    static std::vector<DataType> const kTypes = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64,
                                                 DataType::kBOOL,  DataType::kFLOAT, DataType::kFLOAT,
                                                 DataType::kINT64, DataType::kINT64, DataType::kINT64};
    return fixedFormat(pos, io, nbInputs, nbOutputs, kTypes);
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    size_t bytes = 0;  // for the profile's largest batch and candidate count
    if (mrcnn_box_nms_workspace_size(in[0].max.d[0], in[0].max.d[1], mMaxOutput, &bytes) != 0) {
      logError(name(), "cannot size the workspace (no CUDA device, or more than 4.19 M candidates?)");
      return 0;
    }
    return bytes;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void* workspace, cudaStream_t stream) noexcept override {
    int64_t const B = in[0].dims.d[0], N = in[0].dims.d[1];
    size_t bytes = 0;
    if (B * N > 0 && mrcnn_box_nms_workspace_size(B, N, mMaxOutput, &bytes) != 0) return launched(name(), -1);
    return launched(
        name(),
        mrcnn_box_nms_cuda(static_cast<float const*>(inputs[0]), static_cast<float const*>(inputs[1]),
                           static_cast<int64_t const*>(inputs[2]), static_cast<uint8_t const*>(inputs[3]), B, N, mIou,
                           mScore, mMaxOutput, static_cast<float*>(outputs[0]), static_cast<float*>(outputs[1]),
                           static_cast<int64_t*>(outputs[2]), static_cast<int64_t*>(outputs[3]),
                           static_cast<int64_t*>(outputs[4]), workspace, bytes, stream));
  }

 private:
  float mIou, mScore;
  int64_t mMaxOutput;
};

}  // namespace

IPluginCreatorInterface* boxNmsCreator() {
  static Creator<BoxNmsPlugin> creator;
  return &creator;
}

}  // namespace mrcnn::trt
