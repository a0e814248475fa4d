#include "common/torch/torch_convert.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>

namespace moe::common {

absl::StatusOr<c10::ScalarType> ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return c10::kFloat;
    case DType::kFloat16:
      return c10::kHalf;
    case DType::kBFloat16:
      return c10::kBFloat16;
    case DType::kFloat64:
      return c10::kDouble;
    case DType::kInt64:
      return c10::kLong;
    case DType::kInt32:
      return c10::kInt;
    case DType::kInt16:
      return c10::kShort;
    case DType::kInt8:
      return c10::kChar;
    case DType::kUInt8:
      return c10::kByte;
    case DType::kBool:
      return c10::kBool;
  }
  return absl::InvalidArgumentError("unknown dtype");
}

absl::StatusOr<DType> FromScalarType(c10::ScalarType type) {
  switch (type) {
    case c10::kFloat:
      return DType::kFloat32;
    case c10::kHalf:
      return DType::kFloat16;
    case c10::kBFloat16:
      return DType::kBFloat16;
    case c10::kDouble:
      return DType::kFloat64;
    case c10::kLong:
      return DType::kInt64;
    case c10::kInt:
      return DType::kInt32;
    case c10::kShort:
      return DType::kInt16;
    case c10::kChar:
      return DType::kInt8;
    case c10::kByte:
      return DType::kUInt8;
    case c10::kBool:
      return DType::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported tensor dtype ", c10::toString(type)));
  }
}

absl::StatusOr<at::Tensor> ToTorch(const HostTensor& tensor) {
  absl::StatusOr<int64_t> numel = NumElements(tensor.shape);
  if (!numel.ok()) return numel.status();
  const uint64_t expected =
      static_cast<uint64_t>(*numel) * ElementSize(tensor.dtype);
  if (tensor.data.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor data is ", tensor.data.size(), " bytes but shape ",
                     ShapeToString(tensor.shape), " of ",
                     SafetensorsDTypeName(tensor.dtype), " needs ", expected));
  }
  absl::StatusOr<c10::ScalarType> type = ToScalarType(tensor.dtype);
  if (!type.ok()) return type.status();
  at::Tensor out;
  absl::Status status = TorchCall("ToTorch", [&] {
    out = at::empty(tensor.shape, at::TensorOptions().dtype(*type));
    if (expected > 0) std::memcpy(out.data_ptr(), tensor.data.data(), expected);
  });
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<HostTensor> FromTorch(const at::Tensor& tensor) {
  absl::StatusOr<DType> dtype = FromScalarType(tensor.scalar_type());
  if (!dtype.ok()) return dtype.status();
  HostTensor out;
  out.dtype = *dtype;
  absl::Status status = TorchCall("FromTorch", [&] {
    at::Tensor cpu = tensor.to(at::kCPU).contiguous();
    out.shape.assign(cpu.sizes().begin(), cpu.sizes().end());
    out.data.assign(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes());
  });
  if (!status.ok()) return status;
  return out;
}

void UseIntraOpThreads(int n) {
  if (at::get_num_threads() != n) at::set_num_threads(n);
}

}  // namespace moe::common
