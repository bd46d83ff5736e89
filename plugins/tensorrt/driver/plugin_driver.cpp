// The plugin driver: calls each mrcnn plugin of libmrcnn_trt_plugins as TensorRT does, with no TensorRT library.
//
//   mrcnn_trt_plugin_driver LIBRARY [--gpu]
//
// Loads LIBRARY (dlopen), hands it a logger (setLoggerFinder), takes its creators (getCreators), and for each plugin:
//   1. createPlugin(kBUILD) from fields, then getFieldsToSerialize -> createPlugin(kRUNTIME): the fields must round
//      trip unchanged;
//   2. getOutputDataTypes, getOutputShapes through a concrete IExprBuilder (shape expressions on constants), and the
//      supportsFormatCombination table (each position's accepted types, earlier positions holding accepted ones);
//   3. with --gpu (a CUDA device): clone -> attachToContext, configurePlugin, getWorkspaceSize, onShapeChange and
//      enqueue on a stream with device buffers, for batch 1 and 3, empty inputs and a large shape; every output is
//      compared with the CPU kernel of the same op (compiled into this driver).
// Prints one JSON document on stdout (the tests read it) and exits 0 when every check passed, 1 otherwise.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mrcnn/kernels.h"

using namespace nvinfer1;

namespace {

// ---- logging: what the library logs is kept and reported ---------------------------------------------------------
struct Logger : ILogger {
  std::vector<std::string> lines;
  void log(Severity severity, char const* msg) noexcept override {
    if (severity <= Severity::kWARNING) lines.emplace_back(msg);
  }
};
struct Finder : ILoggerFinder {
  Logger* logger;
  explicit Finder(Logger* l) : logger(l) {}
  ILogger* findLogger() override { return logger; }
};

// ---- a concrete IExprBuilder: every expression is a constant -------------------------------------------------------
struct ConstImpl : apiv::VDimensionExpr {
  int64_t value;
  explicit ConstImpl(int64_t v) : value(v) {}
  bool isConstant() const override { return true; }
  int64_t getConstantValue() const override { return value; }
  bool isSizeTensor() const override { return false; }
};
struct Expr : IDimensionExpr {
  explicit Expr(apiv::VDimensionExpr* impl) { mImpl = impl; }
};
struct BuilderImpl : apiv::VExprBuilder {
  std::deque<ConstImpl> impls;
  std::deque<Expr> exprs;
  IDimensionExpr const* constant(int64_t v) override {
    impls.emplace_back(v);
    exprs.emplace_back(&impls.back());
    return &exprs.back();
  }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
    int64_t const x = a.getConstantValue(), y = b.getConstantValue();
    switch (op) {
      case DimensionOperation::kSUM: return constant(x + y);
      case DimensionOperation::kPROD: return constant(x * y);
      case DimensionOperation::kMAX: return constant(x > y ? x : y);
      case DimensionOperation::kMIN: return constant(x < y ? x : y);
      case DimensionOperation::kSUB: return constant(x - y);
      case DimensionOperation::kEQUAL: return constant(x == y);
      case DimensionOperation::kLESS: return constant(x < y);
      case DimensionOperation::kFLOOR_DIV: return constant(y ? (x / y - ((x % y != 0) && ((x < 0) != (y < 0)))) : 0);
      case DimensionOperation::kCEIL_DIV: return constant(y ? (x + y - 1) / y : 0);
    }
    return constant(0);
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;
  }
};
struct Builder : IExprBuilder {
  explicit Builder(apiv::VExprBuilder* impl) { mImpl = impl; }
};

// ---- the cases: fields as the exports carry them, and input shapes -------------------------------------------------
struct Field {
  std::string name;
  PluginFieldType type;
  std::vector<float> floats;
  std::vector<int32_t> ints;
};
using Shape = std::vector<int64_t>;
struct Case {
  std::string plugin;
  std::vector<Field> fields;
};

Field floats(std::string n, std::vector<float> v) {
  return {std::move(n), PluginFieldType::kFLOAT32, std::move(v), {}};
}
Field integer(std::string n, int32_t v) { return {std::move(n), PluginFieldType::kINT32, {}, {v}}; }

std::vector<Case> cases() {
  float const clip = std::log(1000.0F / 16);
  return {
      {"AnchorGrid", {floats("sizes", {32}), floats("aspect_ratios", {0.5F, 1.0F, 2.0F}), integer("stride", 0)}},
      {"BoxIou", {}},
      {"PreNmsSelect",
       {integer("top_k", 1000), floats("min_size", {0.0F}), floats("weights", {1, 1, 1, 1}), floats("clip", {clip})}},
      {"BoxNms",
       {floats("iou_threshold", {0.7F}), floats("score_threshold", {-INFINITY}), integer("max_output", 1000)}},
  };
}

PluginFieldCollection collection(std::vector<Field> const& fields, std::vector<PluginField>& storage) {
  storage.clear();
  for (auto const& f : fields) {
    void const* data = f.type == PluginFieldType::kFLOAT32 ? static_cast<void const*>(f.floats.data())
                                                           : static_cast<void const*>(f.ints.data());
    auto const n = static_cast<int32_t>(f.type == PluginFieldType::kFLOAT32 ? f.floats.size() : f.ints.size());
    storage.emplace_back(f.name.c_str(), data, f.type, n);
  }
  PluginFieldCollection fc;
  fc.nbFields = static_cast<int32_t>(storage.size());
  fc.fields = storage.data();
  return fc;
}

// The fields of a collection as comparable values (name -> doubles).
std::map<std::string, std::vector<double>> values(PluginFieldCollection const* fc) {
  std::map<std::string, std::vector<double>> out;
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    auto const& f = fc->fields[i];
    std::vector<double> v;
    for (int32_t k = 0; k < f.length; ++k) {
      if (f.type == PluginFieldType::kFLOAT32)
        v.push_back(static_cast<float const*>(f.data)[k]);
      else if (f.type == PluginFieldType::kINT32)
        v.push_back(static_cast<int32_t const*>(f.data)[k]);
      else if (f.type == PluginFieldType::kINT64)
        v.push_back(static_cast<double>(static_cast<int64_t const*>(f.data)[k]));
      else if (f.type == PluginFieldType::kFLOAT64)
        v.push_back(static_cast<double const*>(f.data)[k]);
    }
    out[f.name] = v;
  }
  return out;
}

char const* typeName(DataType t) {
  static char const* names[] = {"float32", "float16", "int8",     "int32", "bool",
                                "uint8",   "fp8",     "bfloat16", "int64", "int4"};
  auto const i = static_cast<int32_t>(t);
  return i >= 0 && i < 10 ? names[i] : "?";
}
constexpr int32_t kNB_TYPES = 10;  // kFLOAT .. kINT4: the types both TensorRT 10 and 11 headers know

std::string quoted(std::string const& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

// Each position's accepted types: earlier positions hold the first accepted type, then (second pass) the last.
std::vector<std::vector<DataType>> formatTable(IPluginV3OneBuild* build, int32_t nbIn, int32_t nbOut) {
  int32_t const n = nbIn + nbOut;
  std::vector<std::vector<DataType>> accepted(n);
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<DynamicPluginTensorDesc> io(n);
    for (auto& d : io) {
      d.desc.format = TensorFormat::kLINEAR;
      d.desc.type = DataType::kFLOAT;
      d.desc.scale = -1.0F;
    }
    for (int32_t pos = 0; pos < n; ++pos) {
      std::vector<DataType> ok;
      for (int32_t t = 0; t < kNB_TYPES; ++t) {
        io[pos].desc.type = static_cast<DataType>(t);
        if (build->supportsFormatCombination(pos, io.data(), nbIn, nbOut)) ok.push_back(io[pos].desc.type);
      }
      for (auto t : ok) {
        bool seen = false;
        for (auto u : accepted[pos]) seen = seen || u == t;
        if (!seen) accepted[pos].push_back(t);
      }
      io[pos].desc.type = ok.empty() ? DataType::kFLOAT : (pass == 0 ? ok.front() : ok.back());
    }
  }
  return accepted;
}

// Input shapes per plugin for the shape check (and, scaled, the GPU runs): batch B, sizes from one FPN level.
std::vector<Shape> shapesFor(std::string const& p, int64_t B, int64_t n) {
  if (p == "AnchorGrid") return {{B, 8, n, n + 3}, {B, 3, 4 * n, 4 * (n + 3)}};
  if (p == "BoxIou") return {{B, n, 4}, {B, n + 5, 4}};
  if (p == "PreNmsSelect") return {{n * 3, 4}, {B, n * 3}, {B, n * 3, 4}, {B, 2}};
  return {{B, n, 4}, {B, n}, {B, n}, {B, n}};  // BoxNms
}

// The largest shapes an R-50 engine's profile gives each op at 1344 x 1344, batch 2: P2's anchors (336 x 336 x 3),
// 5000 NMS candidates (1000 per level), 1000 x 5000 IoUs.
std::vector<Shape> largeShapes(std::string const& p) {
  if (p == "AnchorGrid") return {{2, 256, 336, 336}, {2, 3, 1344, 1344}};
  if (p == "BoxIou") return {{2, 1000, 4}, {2, 5000, 4}};
  if (p == "PreNmsSelect") return {{336 * 336 * 3, 4}, {2, 336 * 336 * 3}, {2, 336 * 336 * 3, 4}, {2, 2}};
  return {{2, 5000, 4}, {2, 5000}, {2, 5000}, {2, 5000}};
}

// ---- GPU: enqueue against the CPU kernels --------------------------------------------------------------------------
#define CUDA_OK(x) (static_cast<int>(x) == 0)

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) {
    if (n && !CUDA_OK(cudaMalloc(&ptr, n))) ptr = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

size_t elementSize(DataType t) {
  switch (t) {
    case DataType::kHALF: return 2;
    case DataType::kINT64: return 8;
    case DataType::kBOOL:
    case DataType::kINT8:
    case DataType::kUINT8: return 1;
    default: return 4;
  }
}

struct HostTensor {
  DataType type;
  Shape shape;
  std::vector<uint8_t> bytes;
  int64_t numel() const {
    int64_t v = 1;
    for (auto d : shape) v *= d;
    return v;
  }
};

// Random inputs as the graph would feed them (boxes xyxy inside 640 px, logits, classes 0..2, valid mostly 1).
std::vector<HostTensor> randomInputs(std::string const& p, std::vector<Shape> const& shapes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u01(0.0F, 1.0F);
  std::vector<DataType> types;
  if (p == "AnchorGrid")
    types = {DataType::kFLOAT, DataType::kFLOAT};
  else if (p == "BoxIou")
    types = {DataType::kFLOAT, DataType::kFLOAT};
  else if (p == "PreNmsSelect")
    types = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64};
  else
    types = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64, DataType::kBOOL};
  std::vector<HostTensor> out;
  for (size_t i = 0; i < shapes.size(); ++i) {
    HostTensor t{types[i], shapes[i], {}};
    t.bytes.resize(static_cast<size_t>(t.numel()) * elementSize(t.type));
    bool const boxes = (p == "BoxIou") || (p == "BoxNms" && i == 0) || (p == "PreNmsSelect" && i == 0);
    if (t.type == DataType::kFLOAT) {
      auto* f = reinterpret_cast<float*>(t.bytes.data());
      for (int64_t k = 0; k < t.numel(); ++k)
        f[k] = (p == "PreNmsSelect" && i == 2) ? (u01(rng) - 0.5F) * 0.4F : boxes ? 0.0F : (u01(rng) - 0.5F) * 8.0F;
      if (boxes) {
        for (int64_t k = 0; k + 3 < t.numel(); k += 4) {
          float const x = u01(rng) * 600, y = u01(rng) * 600, w = 2 + u01(rng) * 120, h = 2 + u01(rng) * 120;
          f[k] = x;
          f[k + 1] = y;
          f[k + 2] = x + w;
          f[k + 3] = y + h;
        }
      }
      if (p == "BoxNms" && i == 1)
        for (int64_t k = 0; k < t.numel(); ++k) f[k] = u01(rng);
    } else if (t.type == DataType::kINT64) {
      auto* q = reinterpret_cast<int64_t*>(t.bytes.data());
      for (int64_t k = 0; k < t.numel(); ++k) q[k] = (p == "PreNmsSelect") ? 600 - (k % 2) * 40 : rng() % 3;
    } else {
      for (auto& b : t.bytes) b = u01(rng) < 0.9F ? 1 : 0;
    }
    out.push_back(std::move(t));
  }
  return out;
}

// The CPU kernel's outputs for the same inputs (the reference of the GPU run).
std::vector<HostTensor> cpuReference(std::string const& p, std::vector<Field> const& fields,
                                     std::vector<HostTensor> const& in, std::vector<HostTensor> out, int& status) {
  auto f = [&](char const* n) -> Field const& {
    for (auto const& x : fields)
      if (x.name == n) return x;
    return fields.front();
  };
  auto F = [](HostTensor const& t) { return reinterpret_cast<float const*>(t.bytes.data()); };
  auto Fo = [](HostTensor& t) { return reinterpret_cast<float*>(t.bytes.data()); };
  auto L = [](HostTensor& t) { return reinterpret_cast<int64_t*>(t.bytes.data()); };
  if (p == "AnchorGrid") {
    Shape const& a = in[0].shape;
    Shape const& b = in[1].shape;
    status =
        mrcnn_anchor_grid_cpu(a[2], a[3], b[2], b[3], f("sizes").floats.data(),
                              static_cast<int64_t>(f("sizes").floats.size()), f("aspect_ratios").floats.data(),
                              static_cast<int64_t>(f("aspect_ratios").floats.size()), f("stride").ints[0], Fo(out[0]));
  } else if (p == "BoxIou") {
    status = mrcnn_box_iou_f32_cpu(F(in[0]), F(in[1]), in[0].shape[0], in[0].shape[1], in[1].shape[1], Fo(out[0]));
  } else if (p == "PreNmsSelect") {
    status = mrcnn_pre_nms_select_cpu(
        F(in[0]), F(in[1]), F(in[2]), reinterpret_cast<int64_t const*>(in[3].bytes.data()), in[1].shape[0],
        in[1].shape[1], f("top_k").ints[0], f("min_size").floats[0], f("weights").floats.data(), f("clip").floats[0],
        Fo(out[0]), Fo(out[1]), out[2].bytes.data());
  } else {
    status =
        mrcnn_box_nms_cpu(F(in[0]), F(in[1]), reinterpret_cast<int64_t const*>(in[2].bytes.data()), in[3].bytes.data(),
                          in[0].shape[0], in[0].shape[1], f("iou_threshold").floats[0], f("score_threshold").floats[0],
                          f("max_output").ints[0], Fo(out[0]), Fo(out[1]), L(out[2]), L(out[3]), L(out[4]));
  }
  return out;
}

double maxDiff(HostTensor const& a, HostTensor const& b) {
  double worst = 0;
  int64_t const n = a.numel();
  for (int64_t k = 0; k < n; ++k) {
    double x, y;
    if (a.type == DataType::kFLOAT) {
      x = reinterpret_cast<float const*>(a.bytes.data())[k];
      y = reinterpret_cast<float const*>(b.bytes.data())[k];
    } else if (a.type == DataType::kINT64) {
      x = static_cast<double>(reinterpret_cast<int64_t const*>(a.bytes.data())[k]);
      y = static_cast<double>(reinterpret_cast<int64_t const*>(b.bytes.data())[k]);
    } else {
      x = a.bytes[k];
      y = b.bytes[k];
    }
    if (std::isnan(x) != std::isnan(y)) return INFINITY;
    if (!std::isnan(x)) worst = std::max(worst, std::fabs(x - y));
  }
  return worst;
}

// The output shapes the plugin's own expressions give for constant input `shapes` (false: getOutputShapes failed).
bool outputShapes(IPluginV3OneBuild* build, std::vector<Shape> const& shapes, std::vector<Shape>& out) {
  int32_t const nbIn = static_cast<int32_t>(shapes.size()), nbOut = build->getNbOutputs();
  BuilderImpl impl;
  Builder builder(&impl);
  std::vector<DimsExprs> inExprs(nbIn), outExprs(nbOut);
  for (int32_t i = 0; i < nbIn; ++i) {
    inExprs[i].nbDims = static_cast<int32_t>(shapes[i].size());
    for (size_t k = 0; k < shapes[i].size(); ++k) inExprs[i].d[k] = builder.constant(shapes[i][k]);
  }
  if (build->getOutputShapes(inExprs.data(), nbIn, nullptr, 0, outExprs.data(), nbOut, builder) != 0) return false;
  out.assign(static_cast<size_t>(nbOut), Shape{});
  for (int32_t o = 0; o < nbOut; ++o)
    for (int32_t k = 0; k < outExprs[o].nbDims; ++k) out[o].push_back(outExprs[o].d[k]->getConstantValue());
  return true;
}

// One GPU run of `plugin` on `shapes`: the max difference of each output from the CPU kernel, or an error text.
std::string gpuRun(IPluginV3* plugin, Case const& c, std::vector<Shape> const& shapes, uint32_t seed, bool& ok) {
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* own = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::unique_ptr<IPluginV3> runtimePlugin(own->attachToContext(nullptr));
  if (!runtimePlugin) {
    ok = false;
    return "\"attachToContext gave nullptr\"";
  }
  auto* run = static_cast<IPluginV3OneRuntime*>(runtimePlugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  int32_t const nbIn = static_cast<int32_t>(shapes.size()), nbOut = build->getNbOutputs();
  std::vector<HostTensor> in = randomInputs(c.plugin, shapes, seed);
  // output shapes from the plugin's own expressions
  std::vector<Shape> outShapes;
  if (!outputShapes(build, shapes, outShapes)) {
    ok = false;
    return "\"getOutputShapes failed\"";
  }
  std::vector<DataType> inTypes, outTypes(nbOut);
  for (auto const& t : in) inTypes.push_back(t.type);
  build->getOutputDataTypes(outTypes.data(), nbOut, inTypes.data(), nbIn);
  std::vector<HostTensor> out(nbOut);
  for (int32_t o = 0; o < nbOut; ++o) {
    out[o].type = outTypes[o];
    out[o].shape = outShapes[o];
    out[o].bytes.assign(static_cast<size_t>(out[o].numel()) * elementSize(outTypes[o]), 0);
  }
  // descriptors, as TensorRT hands them
  auto desc = [](HostTensor const& t) {
    PluginTensorDesc d{};
    d.dims.nbDims = static_cast<int32_t>(t.shape.size());
    for (size_t k = 0; k < t.shape.size(); ++k) d.dims.d[k] = t.shape[k];
    d.type = t.type;
    d.format = TensorFormat::kLINEAR;
    d.scale = -1.0F;
    return d;
  };
  std::vector<PluginTensorDesc> inDesc, outDesc;
  std::vector<DynamicPluginTensorDesc> inDyn, outDyn;
  for (auto const& t : in) {
    inDesc.push_back(desc(t));
    inDyn.push_back({inDesc.back(), inDesc.back().dims, inDesc.back().dims, inDesc.back().dims});
  }
  for (auto const& t : out) {
    outDesc.push_back(desc(t));
    outDyn.push_back({outDesc.back(), outDesc.back().dims, outDesc.back().dims, outDesc.back().dims});
  }
  if (build->configurePlugin(inDyn.data(), nbIn, outDyn.data(), nbOut) != 0 ||
      run->onShapeChange(inDesc.data(), nbIn, outDesc.data(), nbOut) != 0) {
    ok = false;
    return "\"configurePlugin / onShapeChange failed\"";
  }
  size_t const wsBytes = build->getWorkspaceSize(inDyn.data(), nbIn, outDyn.data(), nbOut);
  std::vector<std::unique_ptr<DeviceBuffer>> dIn, dOut;
  std::vector<void const*> inPtrs;
  std::vector<void*> outPtrs;
  for (auto const& t : in) {
    dIn.push_back(std::make_unique<DeviceBuffer>(t.bytes.size()));
    if (!t.bytes.empty()) cudaMemcpy(dIn.back()->ptr, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice);
    inPtrs.push_back(dIn.back()->ptr);
  }
  for (auto const& t : out) {
    dOut.push_back(std::make_unique<DeviceBuffer>(t.bytes.size()));
    outPtrs.push_back(dOut.back()->ptr);
  }
  DeviceBuffer ws(wsBytes);
  cudaStream_t stream = nullptr;
  cudaStreamCreate(&stream);
  int32_t const rc = run->enqueue(inDesc.data(), outDesc.data(), inPtrs.data(), outPtrs.data(), ws.ptr, stream);
  cudaError_t const sync = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  if (rc != 0 || !CUDA_OK(sync)) {
    ok = false;
    return "\"enqueue failed (status " + std::to_string(rc) + ", " + cudaGetErrorString(sync) + ")\"";
  }
  std::vector<HostTensor> got = out;
  for (int32_t o = 0; o < nbOut; ++o)
    if (!got[o].bytes.empty()) cudaMemcpy(got[o].bytes.data(), outPtrs[o], got[o].bytes.size(), cudaMemcpyDeviceToHost);
  int status = 0;
  std::vector<HostTensor> ref = cpuReference(c.plugin, c.fields, in, out, status);
  if (status != 0) {
    ok = false;
    return "\"the CPU kernel failed\"";
  }
  std::ostringstream s;
  s << "{\"shapes\": [";
  for (size_t i = 0; i < shapes.size(); ++i) {
    s << (i ? ", " : "") << "[";
    for (size_t k = 0; k < shapes[i].size(); ++k) s << (k ? ", " : "") << shapes[i][k];
    s << "]";
  }
  s << "], \"workspace\": " << wsBytes << ", \"max_diff\": [";
  for (int32_t o = 0; o < nbOut; ++o) {
    double const d = maxDiff(got[o], ref[o]);
    // kernels share one IEEE math without FMA: equal up to 1e-5 (float), exactly for integers and bools
    bool const pass = got[o].type == DataType::kFLOAT ? d <= 1e-5 : d == 0.0;
    ok = ok && pass;
    s << (o ? ", " : "") << (std::isfinite(d) ? d : -1.0);
  }
  s << "]}";
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s LIBRARY [--gpu]\n", argv[0]);
    return 2;
  }
  bool const gpu = argc > 2 && std::strcmp(argv[2], "--gpu") == 0;
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 2;
  }
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto setFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  if (!getCreators || !setFinder) {
    std::fprintf(stderr, "%s lacks getCreators / setLoggerFinder\n", argv[1]);
    return 2;
  }
  Logger logger;
  Finder finder(&logger);
  setFinder(&finder);
  int32_t nb = 0;
  IPluginCreatorInterface* const* creators = getCreators(nb);
  bool all = true;
  std::ostringstream json;
  json << "{\"creators\": " << nb << ", \"plugins\": [";
  int count = 0;
  for (Case const& c : cases()) {
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < nb; ++i) {
      auto* cr = static_cast<IPluginCreatorV3One*>(creators[i]);
      if (c.plugin == cr->getPluginName()) creator = cr;
    }
    json << (count++ ? ", " : "") << "{\"name\": " << quoted(c.plugin);
    if (!creator) {
      json << ", \"error\": \"no creator\"}";
      all = false;
      continue;
    }
    std::vector<PluginField> storage;
    PluginFieldCollection fc = collection(c.fields, storage);
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin(c.plugin.c_str(), &fc, TensorRTPhase::kBUILD));
    if (!plugin) {
      json << ", \"error\": \"createPlugin(kBUILD) gave nullptr\"}";
      all = false;
      continue;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* run = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    // 1. fields round trip
    auto const given = values(&fc);
    auto const serialized = values(run->getFieldsToSerialize());
    std::unique_ptr<IPluginV3> again(
        creator->createPlugin(c.plugin.c_str(), run->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
    bool const roundTrip =
        again != nullptr && given == serialized &&
        values(static_cast<IPluginV3OneRuntime*>(again->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
                   ->getFieldsToSerialize()) == given;
    all = all && roundTrip;
    json << ", \"version\": " << quoted(core->getPluginVersion())
         << ", \"namespace\": " << quoted(core->getPluginNamespace())
         << ", \"fields_round_trip\": " << (roundTrip ? "true" : "false");
    // 2. output types, shapes and the format table
    int32_t const nbOut = build->getNbOutputs();
    std::vector<Shape> shapes = shapesFor(c.plugin, 3, 20);
    int32_t const nbIn = static_cast<int32_t>(shapes.size());
    std::vector<DataType> inTypes(nbIn, DataType::kFLOAT), outTypes(nbOut);
    int32_t const typesRc = build->getOutputDataTypes(outTypes.data(), nbOut, inTypes.data(), nbIn);
    json << ", \"outputs\": " << nbOut << ", \"output_types\": [";
    for (int32_t o = 0; o < nbOut; ++o) json << (o ? ", " : "") << quoted(typesRc == 0 ? typeName(outTypes[o]) : "?");
    std::vector<Shape> outShapes;
    bool const shapesOk = outputShapes(build, shapes, outShapes);
    json << "], \"input_shapes\": [";
    for (int32_t i = 0; i < nbIn; ++i) {
      json << (i ? ", " : "") << "[";
      for (size_t k = 0; k < shapes[i].size(); ++k) json << (k ? ", " : "") << shapes[i][k];
      json << "]";
    }
    json << "], \"output_shapes\": [";
    for (size_t o = 0; o < outShapes.size(); ++o) {
      json << (o ? ", " : "") << "[";
      for (size_t k = 0; k < outShapes[o].size(); ++k) json << (k ? ", " : "") << outShapes[o][k];
      json << "]";
    }
    all = all && typesRc == 0 && shapesOk;
    json << "], \"formats\": [";
    auto table = formatTable(build, nbIn, nbOut);
    for (size_t pos = 0; pos < table.size(); ++pos) {
      json << (pos ? ", " : "") << "[";
      for (size_t k = 0; k < table[pos].size(); ++k) json << (k ? ", " : "") << quoted(typeName(table[pos][k]));
      json << "]";
    }
    json << "]";
    // 3. GPU
    if (gpu) {
      json << ", \"gpu\": [";
      std::vector<std::vector<Shape>> runs = {shapesFor(c.plugin, 1, 40), shapesFor(c.plugin, 3, 40),
                                              shapesFor(c.plugin, 3, 0), largeShapes(c.plugin)};
      for (size_t r = 0; r < runs.size(); ++r) {
        bool ok = true;
        json << (r ? ", " : "") << gpuRun(plugin.get(), c, runs[r], static_cast<uint32_t>(17 + r), ok);
        all = all && ok;
      }
      json << "]";
    }
    json << "}";
  }
  json << "], \"log\": [";
  for (size_t i = 0; i < logger.lines.size(); ++i) json << (i ? ", " : "") << quoted(logger.lines[i]);
  json << "], \"passed\": " << (all ? "true" : "false") << "}";
  std::printf("%s\n", json.str().c_str());
  return all ? 0 : 1;
}
