#include "common/dtype.h"

#include <cstring>

namespace moe::common {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* safetensors_name;
  const char* name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kFloat32, "F32", "float32", 4},
    {DType::kFloat16, "F16", "float16", 2},
    {DType::kBFloat16, "BF16", "bfloat16", 2},
    {DType::kFloat64, "F64", "float64", 8},
    {DType::kInt64, "I64", "int64", 8},
    {DType::kInt32, "I32", "int32", 4},
    {DType::kInt16, "I16", "int16", 2},
    {DType::kInt8, "I8", "int8", 1},
    {DType::kUInt8, "U8", "uint8", 1},
    {DType::kBool, "BOOL", "bool", 1},
};

const DTypeEntry& Entry(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  return kDTypes[0];  // Unreachable: every enumerator is listed.
}

}  // namespace

size_t ElementSize(DType dtype) { return Entry(dtype).size; }

const char* SafetensorsDTypeName(DType dtype) {
  return Entry(dtype).safetensors_name;
}

bool ParseSafetensorsDType(std::string_view name, DType* dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.safetensors_name) {
      *dtype = e.dtype;
      return true;
    }
  }
  return false;
}

const char* SafetensorsDTypeNames() {
  return "F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL";
}

const char* DTypeName(DType dtype) { return Entry(dtype).name; }

bool ParseDTypeName(std::string_view name, DType* dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) {
      *dtype = e.dtype;
      return true;
    }
  }
  return false;
}

bool IsFloatingPoint(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 ||
         dtype == DType::kBFloat16 || dtype == DType::kFloat64;
}

void ConvertToFloat32(DType dtype, const void* src, int64_t n, float* dst) {
  // Nothing to convert; the pointers of empty buffers may be null, which
  // memcpy must not see even for 0 bytes.
  if (n <= 0) return;
  const auto* bytes = static_cast<const unsigned char*>(src);
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kFloat64:
      for (int64_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, bytes + i * 8, sizeof(v));
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::kFloat16:
    case DType::kBFloat16: {
      const bool half = dtype == DType::kFloat16;
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, bytes + i * 2, sizeof(v));
        dst[i] = half ? HalfToFloat(v) : BFloat16ToFloat(v);
      }
      return;
    }
    default:
      return;  // Excluded by REQUIRES.
  }
}

void ConvertFromFloat32(const float* src, int64_t n, DType dtype, void* dst) {
  if (n <= 0) return;  // as above
  auto* bytes = static_cast<unsigned char*>(dst);
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kFloat16:
    case DType::kBFloat16: {
      const bool half = dtype == DType::kFloat16;
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t v = half ? FloatToHalf(src[i]) : FloatToBFloat16(src[i]);
        std::memcpy(bytes + i * 2, &v, sizeof(v));
      }
      return;
    }
    default:
      return;  // Excluded by REQUIRES.
  }
}

}  // namespace moe::common
