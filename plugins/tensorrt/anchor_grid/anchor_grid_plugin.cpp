// AnchorGrid (contract: plugins/README.md): anchors [H*W*A, 4] float32 of one FPN level from the runtime shapes of
// the feature map [.., H, W] and the padded image [.., Hi, Wi]; neither input's data is read.
#include <limits>

#include "../common/creators.h"
#include "../common/plugin_common.h"
#include "mrcnn/kernels.h"

namespace mrcnn::trt {
namespace {

using namespace nvinfer1;

class AnchorGridPlugin : public PluginBase<AnchorGridPlugin> {
 public:
  static char const* name() { return "AnchorGrid"; }
  static std::vector<FieldSpec> const& specs() {
    static std::vector<FieldSpec> const s = {
        {"sizes", FieldKind::kFLOATS, 1, MRCNN_ANCHOR_MAX_PARAMS, 0.0, 1e9},
        {"aspect_ratios", FieldKind::kFLOATS, 1, MRCNN_ANCHOR_MAX_PARAMS, 1e-9, 1e9},
        {"stride", FieldKind::kINT, 1, 1, 0.0, 1 << 30},
    };
    return s;
  }
  static std::unique_ptr<AnchorGridPlugin> fromFields(FieldValues const& v) {
    return std::make_unique<AnchorGridPlugin>(v.floats(0), v.floats(1), v.integer(2));
  }
  AnchorGridPlugin(std::vector<float> sizes, std::vector<float> ratios, int64_t stride)
      : mSizes(std::move(sizes)), mRatios(std::move(ratios)), mStride(stride) {}

  void serialize(SerializedFields& f) const {
    f.addFloats("sizes", mSizes);
    f.addFloats("aspect_ratios", mRatios);
    f.addInt("stride", mStride);
  }

  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const*, int32_t) const noexcept override {
    if (nbOutputs != 1) return -1;
    out[0] = DataType::kFLOAT;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder& b) noexcept override {
    try {
      if (nbInputs != 2 || nbOutputs != 1 || in[0].nbDims < 2 || in[1].nbDims < 2) {
        logError(name(), "takes feature [.., H, W] and image [.., Hi, Wi] and gives one output");
        return -1;
      }
      auto const anchors = static_cast<int64_t>(mSizes.size() * mRatios.size());
      IDimensionExpr const* hw =
          b.operation(DimensionOperation::kPROD, *in[0].d[in[0].nbDims - 2], *in[0].d[in[0].nbDims - 1]);
      out[0].nbDims = 2;
      out[0].d[0] = b.operation(DimensionOperation::kPROD, *hw, *b.constant(anchors));
      out[0].d[1] = b.constant(4);
      return 0;
    } catch (std::exception const& e) {
      logError(name(), e.what());
      return -1;
    }
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos > 2 || !isLinear(io[pos].desc)) return false;
    DataType const t = io[pos].desc.type;
    if (pos == 2) return t == DataType::kFLOAT;
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;  // only the shape is read
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const*, void* const* outputs, void*,
                  cudaStream_t stream) noexcept override {
    Dims const& f = in[0].dims;
    Dims const& im = in[1].dims;
    return launched(
        name(),
        mrcnn_anchor_grid_cuda(f.d[f.nbDims - 2], f.d[f.nbDims - 1], im.d[im.nbDims - 2], im.d[im.nbDims - 1],
                               mSizes.data(), static_cast<int64_t>(mSizes.size()), mRatios.data(),
                               static_cast<int64_t>(mRatios.size()), mStride, static_cast<float*>(outputs[0]), stream));
  }

 private:
  std::vector<float> mSizes, mRatios;
  int64_t mStride;
};

}  // namespace

IPluginCreatorInterface* anchorGridCreator() {
  static Creator<AnchorGridPlugin> creator;
  return &creator;
}

}  // namespace mrcnn::trt
