// Build information and error strings of the native library; lets Python check that the library it loaded is ours
// and whether the CUDA launchers are compiled in.
#include "mrcnn/kernels.h"

#ifndef MRCNN_VERSION
#define MRCNN_VERSION "0.0.0"
#endif

#if MRCNN_HAS_CUDA
#include <cuda_runtime_api.h>
#define MRCNN_BUILD_FLAVOUR "cpu+cuda; sm " MRCNN_CUDA_ARCHS "; CUDA " MRCNN_CUDA_VERSION
#else
#define MRCNN_BUILD_FLAVOUR "cpu"
#endif

extern "C" const char* mrcnn_build_info(void) { return "mrcnn-kernels " MRCNN_VERSION " (" MRCNN_BUILD_FLAVOUR ")"; }

extern "C" int mrcnn_has_cuda(void) { return MRCNN_HAS_CUDA ? 1 : 0; }

extern "C" const char* mrcnn_error_string(int code) {
  switch (code) {
    case MRCNN_OK: return "success";
    case MRCNN_ERR_INVALID_ARGUMENT:
      return "invalid argument (negative size, null pointer, size limit, or workspace too small)";
    case MRCNN_ERR_OUT_OF_MEMORY: return "out of memory";
    case MRCNN_ERR_INTERNAL: return "internal error";
    default:
#if MRCNN_HAS_CUDA
      return cudaGetErrorString(static_cast<cudaError_t>(code));
#else
      return "unknown error code";
#endif
  }
}
