// A tensor held as raw little-endian, row-major bytes: the form tensors take
// in safetensors files and on the wire. Knows nothing of LibTorch; see
// common/torch/torch_convert.h for the conversions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace moe::common {

struct HostTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string data;  // ElementSize(dtype) * NumElements(shape) bytes.
};

// Product of the dimensions (1 for a scalar). InvalidArgument for a negative
// dimension or a product that does not fit in int64.
absl::StatusOr<int64_t> NumElements(const std::vector<int64_t>& shape);

// "[2, 12, 16]".
std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace moe::common
