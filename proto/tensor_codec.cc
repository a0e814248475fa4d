#include "proto/tensor_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace moe::proto {

absl::StatusOr<common::DType> FromWireDType(moe::v1::DType dtype,
                                            absl::string_view field) {
  switch (dtype) {
    case moe::v1::FLOAT32:
      return common::DType::kFloat32;
    case moe::v1::BFLOAT16:
      return common::DType::kBFloat16;
    case moe::v1::FLOAT16:
      return common::DType::kFloat16;
    case moe::v1::INT64:
      return common::DType::kInt64;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": dtype ",
          moe::v1::DType_IsValid(dtype) ? moe::v1::DType_Name(dtype)
                                        : std::string("?"),
          " (", static_cast<int>(dtype),
          ") is not one of FLOAT32, BFLOAT16, FLOAT16, INT64"));
  }
}

absl::StatusOr<moe::v1::DType> ToWireDType(common::DType dtype) {
  switch (dtype) {
    case common::DType::kFloat32:
      return moe::v1::FLOAT32;
    case common::DType::kBFloat16:
      return moe::v1::BFLOAT16;
    case common::DType::kFloat16:
      return moe::v1::FLOAT16;
    case common::DType::kInt64:
      return moe::v1::INT64;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "dtype ", common::SafetensorsDTypeName(dtype),
          " cannot be sent: convert the tensor to float32, bfloat16 or "
          "float16 first"));
  }
}

moe::v1::DType WireDType(common::DType dtype) {
  const absl::StatusOr<moe::v1::DType> wire = ToWireDType(dtype);
  return wire.ok() ? *wire : moe::v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<TensorView> CheckTensorHeader(
    moe::v1::DType dtype, std::vector<int64_t> shape, int64_t data_bytes,
    absl::string_view field, int64_t max_elements, bool floats_only) {
  TensorView view;
  absl::StatusOr<common::DType> common_dtype = FromWireDType(dtype, field);
  if (floats_only &&
      (!common_dtype.ok() || !common::IsFloatingPoint(*common_dtype))) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": dtype ",
                     moe::v1::DType_IsValid(dtype) ? moe::v1::DType_Name(dtype)
                                                   : std::string("?"),
                     " (", static_cast<int>(dtype),
                     ") is not one of FLOAT32, BFLOAT16, FLOAT16"));
  }
  if (!common_dtype.ok()) return common_dtype.status();
  view.dtype = *common_dtype;
  view.shape = std::move(shape);
  for (int64_t d : view.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": negative dimension in shape ",
                       common::ShapeToString(view.shape)));
    }
  }
  int64_t numel = 1;
  for (int64_t d : view.shape) {
    // numel * d > max_elements, without overflow.
    if (d != 0 && numel > max_elements / d) {
      return absl::ResourceExhaustedError(absl::StrCat(
          field, ": shape ", common::ShapeToString(view.shape),
          " has more than the limit of ", max_elements, " elements"));
    }
    numel *= d;
  }
  view.numel = numel;
  if (data_bytes != view.byte_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": data is ", data_bytes, " bytes but shape ",
                     common::ShapeToString(view.shape), " of ",
                     moe::v1::DType_Name(dtype), " needs ", view.byte_size()));
  }
  return view;
}

absl::StatusOr<TensorView> CheckTensor(const moe::v1::Tensor& wire,
                                       absl::string_view field,
                                       int64_t max_elements, bool floats_only) {
  return CheckTensorHeader(
      wire.dtype(),
      std::vector<int64_t>(wire.shape().begin(), wire.shape().end()),
      static_cast<int64_t>(wire.data().size()), field, max_elements,
      floats_only);
}

absl::StatusOr<common::HostTensor> DecodeTensor(const moe::v1::Tensor& wire,
                                                absl::string_view field,
                                                int64_t max_elements) {
  absl::StatusOr<TensorView> view = CheckTensor(wire, field, max_elements);
  if (!view.ok()) return view.status();
  common::HostTensor out;
  out.dtype = view->dtype;
  out.shape = std::move(view->shape);
  out.data = wire.data();
  return out;
}

absl::Status EncodeTensor(const common::HostTensor& tensor,
                          moe::v1::Tensor* wire) {
  absl::StatusOr<moe::v1::DType> dtype = ToWireDType(tensor.dtype);
  if (!dtype.ok()) return dtype.status();
  wire->set_dtype(*dtype);
  wire->clear_shape();
  for (int64_t d : tensor.shape) wire->add_shape(d);
  wire->set_data(tensor.data);
  return absl::OkStatus();
}

char* PrepareTensor(common::DType dtype, const std::vector<int64_t>& shape,
                    moe::v1::Tensor* wire) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  wire->set_dtype(WireDType(dtype));
  wire->clear_shape();
  for (int64_t d : shape) wire->add_shape(d);
  std::string* data = wire->mutable_data();
  const size_t bytes = static_cast<size_t>(numel) * common::ElementSize(dtype);
  constexpr size_t kMiB = size_t{1} << 20;
  if (bytes > kMiB) data->reserve((bytes + kMiB - 1) / kMiB * kMiB);
  // resize() value-initialises the bytes, one streaming write, much less
  // than building a tensor and copying it.
  data->resize(bytes);
  return data->data();
}

}  // namespace moe::proto
