// The creator of each mrcnn plugin (one per contract op the trt flavour emits, and BoxIou), as getCreators()
// lists them.
#pragma once

#include <NvInferRuntime.h>

namespace mrcnn::trt {

nvinfer1::IPluginCreatorInterface* anchorGridCreator();
nvinfer1::IPluginCreatorInterface* boxIouCreator();
nvinfer1::IPluginCreatorInterface* preNmsSelectCreator();
nvinfer1::IPluginCreatorInterface* boxNmsCreator();

}  // namespace mrcnn::trt
