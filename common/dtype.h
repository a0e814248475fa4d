// Element types of tensors in checkpoints, files and on the wire, and the
// conversions between float32 and the two 16-bit float formats. No LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/float_bits.h"

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

// Converts `n` elements of a floating-point `dtype` at `src` (little-endian,
// any alignment) to float32 at `dst`.
// REQUIRES: IsFloatingPoint(dtype).
void ConvertToFloat32(DType dtype, const void* src, int64_t n, float* dst);

// Converts `n` float32 values to kFloat32, kFloat16 or kBFloat16 at `dst`.
// REQUIRES: dtype is one of those three.
void ConvertFromFloat32(const float* src, int64_t n, DType dtype, void* dst);

}  // namespace moe::common
