// Element types of tensors in checkpoints, files and on the wire.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::common {

enum class DType {
  kFloat32,
  kFloat16,
  kBFloat16,
  kFloat64,
  kInt64,
  kInt32,
  kInt16,
  kInt8,
  kUInt8,
  kBool,
};

// Bytes per element.
size_t ElementSize(DType dtype);

// The safetensors spelling ("F32", "BF16", "I64", ...).
const char* SafetensorsDTypeName(DType dtype);

// Parses a safetensors dtype name; InvalidArgument for an unknown one.
absl::StatusOr<DType> ParseSafetensorsDType(absl::string_view name);

// True for kFloat32, kFloat16, kBFloat16 and kFloat64.
bool IsFloatingPoint(DType dtype);

}  // namespace moe::common
