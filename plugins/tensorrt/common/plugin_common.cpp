#include "plugin_common.h"

#include <cmath>
#include <cstdio>
#include <mutex>
#include <sstream>

#include "mrcnn/kernels.h"

namespace mrcnn::trt {

namespace {

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;

char const* kindName(FieldKind kind) {
  switch (kind) {
    case FieldKind::kFLOATS: return "a list of floats";
    case FieldKind::kFLOAT: return "a float";
    case FieldKind::kINT: return "an integer";
  }
  return "?";
}

// The field's values as doubles, or false when its type is not one this kind accepts.
bool readValues(nvinfer1::PluginField const& f, FieldKind kind, std::vector<double>& out) {
  using T = nvinfer1::PluginFieldType;
  out.clear();
  if (f.length < 0 || (f.length > 0 && f.data == nullptr)) return false;
  bool const integral = f.type == T::kINT8 || f.type == T::kINT16 || f.type == T::kINT32 || f.type == T::kINT64;
  bool const floating = f.type == T::kFLOAT32 || f.type == T::kFLOAT64;
  if (kind == FieldKind::kINT ? !integral : !(floating || integral)) return false;
  for (int32_t i = 0; i < f.length; ++i) {
    switch (f.type) {
      case T::kFLOAT32: out.push_back(static_cast<float const*>(f.data)[i]); break;
      case T::kFLOAT64: out.push_back(static_cast<double const*>(f.data)[i]); break;
      case T::kINT8: out.push_back(static_cast<int8_t const*>(f.data)[i]); break;
      case T::kINT16: out.push_back(static_cast<int16_t const*>(f.data)[i]); break;
      case T::kINT32: out.push_back(static_cast<int32_t const*>(f.data)[i]); break;
      case T::kINT64: out.push_back(static_cast<double>(static_cast<int64_t const*>(f.data)[i])); break;
      default: return false;
    }
  }
  return true;
}

// Attributes the ONNX parser may pass besides the plugin's own fields: they select the creator, nothing more.
bool isParserAttribute(char const* name) {
  return std::strcmp(name, "plugin_version") == 0 || std::strcmp(name, "plugin_namespace") == 0;
}

}  // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  std::lock_guard<std::mutex> lock(gLoggerMutex);
  if (gLoggerFinder == nullptr && finder != nullptr) gLoggerFinder = finder;
}

void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept {
  try {
    nvinfer1::ILogger* logger = nullptr;
    {
      std::lock_guard<std::mutex> lock(gLoggerMutex);
      if (gLoggerFinder != nullptr) logger = gLoggerFinder->findLogger();
    }
    if (logger != nullptr) {
      logger->log(severity, message.c_str());
    } else if (severity <= nvinfer1::ILogger::Severity::kWARNING) {
      std::fprintf(stderr, "%s\n", message.c_str());  // no TensorRT logger (a driver, a test): stderr
    }
  } catch (...) {
  }
}

bool FieldValues::parse(std::string const& op, std::vector<FieldSpec> const& specs,
                        nvinfer1::PluginFieldCollection const* fc) noexcept {
  try {
    mFloats.assign(specs.size(), {});
    mInts.assign(specs.size(), 0);
    std::vector<bool> seen(specs.size(), false);
    int32_t const n = fc == nullptr ? 0 : fc->nbFields;
    if (n > 0 && fc->fields == nullptr) {
      logError(op, "the field collection has no fields array");
      return false;
    }
    std::vector<double> values;
    for (int32_t k = 0; k < n; ++k) {
      nvinfer1::PluginField const& f = fc->fields[k];
      if (f.name == nullptr) {
        logError(op, "a field without a name");
        return false;
      }
      size_t i = 0;
      while (i < specs.size() && std::strcmp(specs[i].name, f.name) != 0) ++i;
      if (i == specs.size()) {
        if (isParserAttribute(f.name)) continue;
        logError(op, std::string("unknown field '") + f.name + "'");
        return false;
      }
      FieldSpec const& s = specs[i];
      if (!readValues(f, s.kind, values)) {
        logError(op, std::string("field '") + s.name + "' must be " + kindName(s.kind) + " (got field type " +
                         std::to_string(static_cast<int>(f.type)) + ")");
        return false;
      }
      auto const count = static_cast<int32_t>(values.size());
      if (count < s.min_count || count > s.max_count) {
        std::ostringstream m;
        m << "field '" << s.name << "' needs " << s.min_count;
        if (s.max_count != s.min_count) m << " to " << s.max_count;
        m << " value(s), got " << count;
        logError(op, m.str());
        return false;
      }
      for (double v : values) {
        bool const whole = s.kind != FieldKind::kINT || std::floor(v) == v;
        if (std::isnan(v) || v < s.lo || v > s.hi || !whole) {
          std::ostringstream m;
          m << "field '" << s.name << "' = " << v << " is out of range [" << s.lo << ", " << s.hi << "]";
          logError(op, m.str());
          return false;
        }
      }
      if (s.kind == FieldKind::kINT) {
        mInts[i] = static_cast<int64_t>(values[0]);
      } else {
        mFloats[i].assign(values.begin(), values.end());
      }
      seen[i] = true;
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      if (!seen[i]) {
        logError(op, std::string("missing field '") + specs[i].name + "'");
        return false;
      }
    }
    return true;
  } catch (std::exception const& e) {
    logError(op, std::string("reading the fields failed: ") + e.what());
    return false;
  }
}

void SerializedFields::addFloats(char const* name, std::vector<float> const& values) {
  mFloatStore.push_back(values);
  mFields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kFLOAT32, static_cast<int32_t>(values.size()));
}

void SerializedFields::addInt(char const* name, int64_t value) {
  mIntStore.push_back(std::make_unique<int32_t>(static_cast<int32_t>(value)));
  mFields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
}

nvinfer1::PluginFieldCollection const* SerializedFields::collection() noexcept {
  // pointers are taken once every field is in (the stores do not move any more)
  size_t floats = 0, ints = 0;
  for (auto& f : mFields) {
    if (f.type == nvinfer1::PluginFieldType::kFLOAT32) {
      f.data = mFloatStore[floats++].data();
    } else {
      f.data = mIntStore[ints++].get();
    }
  }
  mCollection.nbFields = static_cast<int32_t>(mFields.size());
  mCollection.fields = mFields.data();
  return &mCollection;
}

FieldNames::FieldNames(std::vector<FieldSpec> const& specs) {
  for (auto const& s : specs) {
    auto const type =
        s.kind == FieldKind::kINT ? nvinfer1::PluginFieldType::kINT32 : nvinfer1::PluginFieldType::kFLOAT32;
    mFields.emplace_back(s.name, nullptr, type, s.kind == FieldKind::kFLOATS ? s.max_count : 1);
  }
  mCollection.nbFields = static_cast<int32_t>(mFields.size());
  mCollection.fields = mFields.data();
}

int32_t launched(std::string const& op, int status) noexcept {
  if (status != 0) {
    logError(op, std::string("CUDA launch failed: ") + mrcnn_error_string(status) + " (status " +
                     std::to_string(status) + ")");
  }
  return status == 0 ? 0 : -1;
}

}  // namespace mrcnn::trt
