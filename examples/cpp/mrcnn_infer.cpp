// Embedding an mrcnn engine in C++: load the plugin library and a plan built by `mrcnn build`, run one preprocessed
// image, print the detections.
//
//   mrcnn_infer PLUGIN_LIBRARY ENGINE.plan IMAGE.f32 H W IMAGE_H IMAGE_W
//
// IMAGE.f32: the image as the engine takes it, float32 [3, H, W] (RGB, 0..1, resized so that its shorter side is the
// model's min_size and its longer at most max_size, zero-padded to H x W, multiples of 32; the engine normalizes);
// IMAGE_H x IMAGE_W: its size before padding (the `image_sizes` input). Outputs (docs/deployment.md): boxes [1,K,4]
// in the resized image's pixels, scores [1,K], labels [1,K] (1..C), masks [1,K,28,28], num_detections [1]; the first
// num_detections slots are valid. An engine built with --serialize-plugins carries the plugin library; then pass
// "-" as PLUGIN_LIBRARY.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, char const* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[TensorRT] %s\n", msg);
  }
};

bool ok(cudaError_t e, char const* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

std::vector<char> readFile(char const* path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

size_t elementSize(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kHALF: return 2;
    case nvinfer1::DataType::kBOOL: return 1;
    default: return 4;
  }
}

int64_t volume(nvinfer1::Dims const& d) {
  int64_t v = 1;
  for (int32_t i = 0; i < d.nbDims; ++i) v *= d.d[i];
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s PLUGIN_LIBRARY|- ENGINE.plan IMAGE.f32 H W IMAGE_H IMAGE_W\n", argv[0]);
    return 2;
  }
  int64_t const H = std::stoll(argv[4]), W = std::stoll(argv[5]);
  int64_t const sizes[2] = {std::stoll(argv[6]), std::stoll(argv[7])};
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
  if (!runtime) return 1;
  // 1. the plugin library: its creators (AnchorGrid, PreNmsSelect, BoxNms, BoxIou) into the runtime's registry
  if (std::strcmp(argv[1], "-") != 0 && runtime->getPluginRegistry().loadLibrary(argv[1]) == nullptr) {
    std::fprintf(stderr, "cannot load the plugin library %s\n", argv[1]);
    return 1;
  }
  // 2. the engine
  std::vector<char> const plan = readFile(argv[2]);
  std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(plan.data(), plan.size()));
  if (!engine) return 1;
  std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());
  std::vector<char> const image = readFile(argv[3]);
  if (static_cast<int64_t>(image.size()) != 3 * H * W * 4) {
    std::fprintf(stderr, "%s: expected %lld bytes (float32 [3, %lld, %lld])\n", argv[3],
                 static_cast<long long>(3 * H * W * 4), static_cast<long long>(H), static_cast<long long>(W));
    return 1;
  }
  // 3. buffers: inputs with their shapes set, then every output at the shape the context gives it
  std::map<std::string, void*> device;
  cudaStream_t stream = nullptr;
  if (!ok(cudaStreamCreate(&stream), "cudaStreamCreate")) return 1;
  nvinfer1::Dims images{}, imageSizes{};
  images.nbDims = 4;
  images.d[0] = 1, images.d[1] = 3, images.d[2] = H, images.d[3] = W;
  imageSizes.nbDims = 2;
  imageSizes.d[0] = 1, imageSizes.d[1] = 2;
  if (!context->setInputShape("images", images) || !context->setInputShape("image_sizes", imageSizes)) return 1;
  for (int32_t i = 0; i < engine->getNbIOTensors(); ++i) {
    char const* name = engine->getIOTensorName(i);
    size_t const bytes =
        static_cast<size_t>(volume(context->getTensorShape(name))) * elementSize(engine->getTensorDataType(name));
    if (!ok(cudaMalloc(&device[name], bytes > 0 ? bytes : 1), "cudaMalloc")) return 1;
    context->setTensorAddress(name, device[name]);
  }
  ok(cudaMemcpyAsync(device["images"], image.data(), image.size(), cudaMemcpyHostToDevice, stream), "copy");
  ok(cudaMemcpyAsync(device["image_sizes"], sizes, sizeof(sizes), cudaMemcpyHostToDevice, stream), "copy");
  // 4. run, then read the fixed-size outputs back
  if (!context->enqueueV3(stream)) return 1;
  auto fetch = [&](char const* name, size_t elemBytes) {
    std::vector<char> host(static_cast<size_t>(volume(context->getTensorShape(name))) * elemBytes);
    cudaMemcpyAsync(host.data(), device[name], host.size(), cudaMemcpyDeviceToHost, stream);
    return host;
  };
  std::vector<char> const num = fetch("num_detections", 8), boxes = fetch("boxes", 4), scores = fetch("scores", 4),
                          labels = fetch("labels", 8);
  if (!ok(cudaStreamSynchronize(stream), "run")) return 1;
  int64_t const n = *reinterpret_cast<int64_t const*>(num.data());
  std::printf("%lld detections\n", static_cast<long long>(n));
  auto const* b = reinterpret_cast<float const*>(boxes.data());
  auto const* s = reinterpret_cast<float const*>(scores.data());
  auto const* l = reinterpret_cast<int64_t const*>(labels.data());
  for (int64_t k = 0; k < n; ++k) {
    std::printf("label %lld score %.4f box %.1f %.1f %.1f %.1f\n", static_cast<long long>(l[k]), s[k], b[4 * k],
                b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]);
  }
  for (auto& kv : device) cudaFree(kv.second);
  cudaStreamDestroy(stream);
  return 0;
}
