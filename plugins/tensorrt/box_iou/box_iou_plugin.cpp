// BoxIou (contract: plugins/README.md): iou [B,N,M] float32 of boxes a [B,N,4] and b [B,M,4], both float32 or both
// float16 (float16 math in float32).
#include "../common/creators.h"
#include "../common/plugin_common.h"
#include "mrcnn/kernels.h"

namespace mrcnn::trt {
namespace {

using namespace nvinfer1;

class BoxIouPlugin : public PluginBase<BoxIouPlugin> {
 public:
  static char const* name() { return "BoxIou"; }
  static std::vector<FieldSpec> const& specs() {
    static std::vector<FieldSpec> const s;  // no attributes
    return s;
  }
  static std::unique_ptr<BoxIouPlugin> fromFields(FieldValues const&) { return std::make_unique<BoxIouPlugin>(); }
  void serialize(SerializedFields&) const {}

  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const*, int32_t) const noexcept override {
    if (nbOutputs != 1) return -1;
    out[0] = DataType::kFLOAT;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1 || in[0].nbDims != 3 || in[1].nbDims != 3) {
      logError(name(), "takes a [B,N,4] and b [B,M,4] and gives iou [B,N,M]");
      return -1;
    }
    out[0].nbDims = 3;
    out[0].d[0] = in[0].d[0];
    out[0].d[1] = in[0].d[1];
    out[0].d[2] = in[1].d[1];
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos > 2 || !isLinear(io[pos].desc)) return false;
    DataType const t = io[pos].desc.type;
    if (pos == 0) return t == DataType::kFLOAT || t == DataType::kHALF;
    if (pos == 1) return t == io[0].desc.type;
    return t == DataType::kFLOAT;
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    int64_t const B = in[0].dims.d[0], N = in[0].dims.d[1], M = in[1].dims.d[1];
    auto* iou = static_cast<float*>(outputs[0]);
    if (in[0].type == DataType::kHALF) {
      return launched(name(), mrcnn_box_iou_f16_cuda(static_cast<uint16_t const*>(inputs[0]),
                                                     static_cast<uint16_t const*>(inputs[1]), B, N, M, iou, stream));
    }
    return launched(name(), mrcnn_box_iou_f32_cuda(static_cast<float const*>(inputs[0]),
                                                   static_cast<float const*>(inputs[1]), B, N, M, iou, stream));
  }
};

}  // namespace

IPluginCreatorInterface* boxIouCreator() {
  static Creator<BoxIouPlugin> creator;
  return &creator;
}

}  // namespace mrcnn::trt
