// The element type of every tensor in moe-serve: checkpoints, files, the
// wire (proto/tensor_codec.h maps moe.v1.DType onto it, the one place that
// does), the compute dtype of experts, and the GPU backend's buffers. Also
// the conversions between float32 and the two 16-bit float formats. Plain
// C++ (no abseil, no LibTorch), so that the GPU backend's standalone build
// (moe-gpu-check) shares it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

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

// Parses a safetensors dtype name into *dtype; false for an unknown one.
bool ParseSafetensorsDType(std::string_view name, DType* dtype);
// "F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL": what ParseSafetensorsDType
// knows, for error messages.
const char* SafetensorsDTypeNames();

// The lower-case name people write: "float32", "bfloat16", "int64", ...
const char* DTypeName(DType dtype);
// The inverse of DTypeName; false for an unknown name.
bool ParseDTypeName(std::string_view name, DType* dtype);

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
