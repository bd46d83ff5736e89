// What every mrcnn TensorRT plugin shares: the namespace and version, logging through the logger TensorRT hands in
// (setLoggerFinder), field specs with their validation, the fields a plugin serializes, and a CRTP base that
// implements the IPluginV3 boilerplate (capabilities, names, clone, attachToContext, fields to serialize) so that
// each op's plugin holds only its own shapes, formats, workspace and enqueue.
//
// Shapes of TensorRT's world here: no TensorRT library is linked (the plugin library loads into TensorRT and
// TensorRT-RTX alike and is drivable with neither); only the header-inline parts of the API are used.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace mrcnn::trt {

constexpr char const* kNAMESPACE = "mrcnn";
constexpr char const* kVERSION = "1";

// ---- logging ------------------------------------------------------------------------------------------------------
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;
inline void logError(std::string const& op, std::string const& message) noexcept {
  log(nvinfer1::ILogger::Severity::kERROR, "mrcnn::" + op + ": " + message);
}

// ---- fields -------------------------------------------------------------------------------------------------------
// A field as the contract table names it: a float list, a float scalar or an int scalar (the ONNX parser passes an
// ONNX float attribute as kFLOAT32, an int as kINT32, a float list as kFLOAT32 with its length; from Python any
// float or int type is accepted and converted).
enum class FieldKind { kFLOATS, kFLOAT, kINT };

struct FieldSpec {
  char const* name;
  FieldKind kind;
  int32_t min_count;  // values (1 for scalars)
  int32_t max_count;
  double lo;  // every value within [lo, hi]
  double hi;
};

// The validated values of every field of a spec list, in spec order. `parse` logs one error naming the op and the
// field (missing, wrong type, wrong count, out of range, unknown field) and returns false.
class FieldValues {
 public:
  bool parse(std::string const& op, std::vector<FieldSpec> const& specs,
             nvinfer1::PluginFieldCollection const* fc) noexcept;
  std::vector<float> const& floats(size_t i) const { return mFloats[i]; }
  float scalar(size_t i) const { return mFloats[i][0]; }
  int64_t integer(size_t i) const { return mInts[i]; }

 private:
  std::vector<std::vector<float>> mFloats;
  std::vector<int64_t> mInts;
};

// The fields a plugin hands back for serialization (kFLOAT32 arrays, kINT32 scalars), owning their storage.
class SerializedFields {
 public:
  void addFloats(char const* name, std::vector<float> const& values);
  void addFloat(char const* name, float value) { addFloats(name, {value}); }
  void addInt(char const* name, int64_t value);
  nvinfer1::PluginFieldCollection const* collection() noexcept;

 private:
  std::vector<std::vector<float>> mFloatStore;
  std::vector<std::unique_ptr<int32_t>> mIntStore;
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

// The creator's getFieldNames(): names and types of a spec list.
class FieldNames {
 public:
  explicit FieldNames(std::vector<FieldSpec> const& specs);
  nvinfer1::PluginFieldCollection const* collection() noexcept { return &mCollection; }

 private:
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mCollection{};
};

// ---- formats ------------------------------------------------------------------------------------------------------
inline bool isLinear(nvinfer1::PluginTensorDesc const& d) { return d.format == nvinfer1::TensorFormat::kLINEAR; }
inline int64_t volume(nvinfer1::Dims const& d) {
  int64_t v = 1;
  for (int32_t i = 0; i < d.nbDims; ++i) v *= d.d[i];
  return v;
}
// supportsFormatCombination of a plugin whose every input and output has one dtype (types: inputs, then outputs):
// linear, and that dtype.
inline bool fixedFormat(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* io, int32_t nbInputs, int32_t nbOutputs,
                        std::vector<nvinfer1::DataType> const& types) {
  return nbInputs + nbOutputs == static_cast<int32_t>(types.size()) && pos >= 0 &&
         pos < static_cast<int32_t>(types.size()) && isLinear(io[pos].desc) && io[pos].desc.type == types[pos];
}
// A CUDA launcher's status as the plugin's: 0, or one logged error naming the op.
int32_t launched(std::string const& op, int status) noexcept;

// ---- the IPluginV3 boilerplate
// --------------------------------------------------------------------------------------- Derived must provide: static
// char const* name(); static std::vector<FieldSpec> const& specs(); static std::unique_ptr<Derived>
// fromFields(FieldValues const&) (extra checks, logged, nullptr on failure); void serialize(SerializedFields&) const;
// and the IPluginV3OneBuild / IPluginV3OneRuntime methods of its op (getNbOutputs, getOutputDataTypes, getOutputShapes,
// supportsFormatCombination, getWorkspaceSize, enqueue).
template <class Derived>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  nvinfer1::IPluginV3* clone() noexcept override {
    try {
      return new Derived(static_cast<Derived const&>(*this));
    } catch (std::exception const& e) {
      logError(Derived::name(), std::string("clone failed: ") + e.what());
      return nullptr;
    }
  }
  char const* getPluginName() const noexcept override { return Derived::name(); }
  char const* getPluginVersion() const noexcept override { return kVERSION; }
  char const* getPluginNamespace() const noexcept override { return kNAMESPACE; }

  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
                        int32_t) noexcept override {
    return 0;  // every launch reads its shapes from enqueue's descriptors
  }
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    try {
      mSerialized = SerializedFields();
      static_cast<Derived const*>(this)->serialize(mSerialized);
      return mSerialized.collection();
    } catch (std::exception const& e) {
      logError(Derived::name(), std::string("getFieldsToSerialize failed: ") + e.what());
      return nullptr;
    }
  }

 protected:
  PluginBase() = default;
  PluginBase(PluginBase const&) : PluginBase() {}  // (the serialized fields are rebuilt on request)

 private:
  SerializedFields mSerialized;
};

// The creator of Derived: name, version "1", namespace "mrcnn", the spec list as field names; createPlugin validates
// the fields (both phases: kBUILD from the ONNX parser or a user, kRUNTIME from getFieldsToSerialize).
template <class Derived>
class Creator : public nvinfer1::IPluginCreatorV3One {
 public:
  Creator() : mNames(Derived::specs()) {}
  char const* getPluginName() const noexcept override { return Derived::name(); }
  char const* getPluginVersion() const noexcept override { return kVERSION; }
  char const* getPluginNamespace() const noexcept override { return kNAMESPACE; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return mNames.collection(); }
  nvinfer1::IPluginV3* createPlugin(char const*, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase) noexcept override {
    try {
      FieldValues values;
      if (!values.parse(Derived::name(), Derived::specs(), fc)) return nullptr;
      return Derived::fromFields(values).release();
    } catch (std::exception const& e) {
      logError(Derived::name(), std::string("createPlugin failed: ") + e.what());
      return nullptr;
    }
  }

 private:
  FieldNames mNames;
};

}  // namespace mrcnn::trt
