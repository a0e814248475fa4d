#include "common/dtype.h"

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

}  // namespace moe::common
