// The library's entry points, as TensorRT's plugin registry (load_library / trtexec --dynamicPlugins /
// plugins_to_serialize) calls them, and its build description.
#include <NvInferVersion.h>

#include "common/creators.h"
#include "common/plugin_common.h"

#define MRCNN_TRT_API extern "C" __attribute__((visibility("default")))
#define MRCNN_STR2(x) #x
#define MRCNN_STR(x) MRCNN_STR2(x)

MRCNN_TRT_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {
      mrcnn::trt::anchorGridCreator(), mrcnn::trt::boxIouCreator(), mrcnn::trt::preNmsSelectCreator(),
      mrcnn::trt::boxNmsCreator()};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

MRCNN_TRT_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { mrcnn::trt::setLoggerFinder(finder); }

// "mrcnn-trt-plugins 0.1.0 (TensorRT headers 11.1.0)": which TensorRT API the library was compiled against.
MRCNN_TRT_API char const* mrcnn_trt_plugins_build_info() {
  return "mrcnn-trt-plugins " MRCNN_VERSION " (TensorRT headers " MRCNN_STR(NV_TENSORRT_MAJOR) "." MRCNN_STR(
      NV_TENSORRT_MINOR) "." MRCNN_STR(NV_TENSORRT_PATCH) ")";
}
