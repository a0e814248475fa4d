#include "common/dtype.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace moe::common {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kFloat32, "F32", 4},   {DType::kFloat16, "F16", 2},
    {DType::kBFloat16, "BF16", 2}, {DType::kFloat64, "F64", 8},
    {DType::kInt64, "I64", 8},     {DType::kInt32, "I32", 4},
    {DType::kInt16, "I16", 2},     {DType::kInt8, "I8", 1},
    {DType::kUInt8, "U8", 1},      {DType::kBool, "BOOL", 1},
};

const DTypeEntry& Entry(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  return kDTypes[0];  // Unreachable: every enumerator is listed.
}

}  // namespace

size_t ElementSize(DType dtype) { return Entry(dtype).size; }

const char* SafetensorsDTypeName(DType dtype) { return Entry(dtype).name; }

absl::StatusOr<DType> ParseSafetensorsDType(absl::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", name,
                   "\" (supported: F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)"));
}

bool IsFloatingPoint(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 ||
         dtype == DType::kBFloat16 || dtype == DType::kFloat64;
}

void ConvertToFloat32(DType dtype, const void* src, int64_t n, float* dst) {
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
