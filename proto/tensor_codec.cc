#include "proto/tensor_codec.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/host_tensor.h"
#include "common/torch_convert.h"

namespace moe::proto {

absl::StatusOr<moe::v1::DType> WireDType(c10::ScalarType type) {
  switch (type) {
    case c10::kFloat:
      return moe::v1::FLOAT32;
    case c10::kBFloat16:
      return moe::v1::BFLOAT16;
    case c10::kHalf:
      return moe::v1::FLOAT16;
    case c10::kLong:
      return moe::v1::INT64;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "dtype ", c10::toString(type), " cannot go on the wire"));
  }
}

absl::StatusOr<c10::ScalarType> TorchDType(moe::v1::DType dtype) {
  switch (dtype) {
    case moe::v1::FLOAT32:
      return c10::kFloat;
    case moe::v1::BFLOAT16:
      return c10::kBFloat16;
    case moe::v1::FLOAT16:
      return c10::kHalf;
    case moe::v1::INT64:
      return c10::kLong;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "dtype ", moe::v1::DType_Name(dtype), " (", static_cast<int>(dtype),
          ") is not one of FLOAT32, BFLOAT16, FLOAT16, INT64"));
  }
}

absl::StatusOr<at::Tensor> ViewTensor(const moe::v1::Tensor& wire,
                                      absl::string_view field,
                                      int64_t max_elements) {
  absl::StatusOr<c10::ScalarType> type = TorchDType(wire.dtype());
  if (!type.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", type.status().message()));
  }
  std::vector<int64_t> shape(wire.shape().begin(), wire.shape().end());
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": negative dimension in shape ",
                       common::ShapeToString(shape)));
    }
    if (d != 0 && numel > max_elements / d) {
      return absl::ResourceExhaustedError(
          absl::StrCat(field, ": shape ", common::ShapeToString(shape),
                       " exceeds the limit of ", max_elements, " elements"));
    }
    numel *= d;
  }
  if (numel > max_elements) {
    return absl::ResourceExhaustedError(
        absl::StrCat(field, ": shape ", common::ShapeToString(shape),
                     " exceeds the limit of ", max_elements, " elements"));
  }
  const size_t elem = at::elementSize(*type);
  if (wire.data().size() != static_cast<size_t>(numel) * elem) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": data is ", wire.data().size(), " bytes but shape ",
        common::ShapeToString(shape), " of ", moe::v1::DType_Name(wire.dtype()),
        " needs ", static_cast<size_t>(numel) * elem));
  }
  at::Tensor out;
  absl::Status status = common::TorchCall("decode", [&] {
    const auto options = at::TensorOptions().dtype(*type);
    void* data = const_cast<char*>(wire.data().data());
    if (numel > 0 && reinterpret_cast<uintptr_t>(data) % elem == 0) {
      out = at::from_blob(data, shape, options);
    } else {
      out = at::empty(shape, options);
      if (numel > 0) std::memcpy(out.data_ptr(), data, wire.data().size());
    }
  });
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<at::Tensor> DecodeTensor(const moe::v1::Tensor& wire,
                                        absl::string_view field,
                                        int64_t max_elements) {
  absl::StatusOr<at::Tensor> view = ViewTensor(wire, field, max_elements);
  if (!view.ok()) return view.status();
  at::Tensor out;
  absl::Status status = common::TorchCall("decode", [&] {
    // A view over the message is copied out; a fallback copy already owns
    // its bytes.
    out = view->numel() > 0 && view->data_ptr() == wire.data().data()
              ? view->clone()
              : *view;
  });
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<at::Tensor> WireBuffer(moe::v1::DType dtype,
                                      const std::vector<int64_t>& shape,
                                      moe::v1::Tensor* wire) {
  absl::StatusOr<c10::ScalarType> type = TorchDType(dtype);
  if (!type.ok()) return type.status();
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  wire->set_dtype(dtype);
  wire->clear_shape();
  for (int64_t d : shape) wire->add_shape(d);
  std::string* data = wire->mutable_data();
  const size_t bytes = static_cast<size_t>(numel) * at::elementSize(*type);
  // Large buffers get a capacity rounded up to whole MiB, so that messages of
  // varying sizes reuse freed blocks instead of fragmenting the heap.
  constexpr size_t kMiB = size_t{1} << 20;
  if (bytes > kMiB) data->reserve((bytes + kMiB - 1) / kMiB * kMiB);
  // The bytes are overwritten next; resize() value-initialises them, which
  // costs one streaming write, much less than building and copying a tensor.
  data->resize(bytes);
  at::Tensor out;
  absl::Status status = common::TorchCall("encode", [&] {
    const auto options = at::TensorOptions().dtype(*type);
    out = numel == 0 ? at::empty(shape, options)
                     : at::from_blob(data->data(), shape, options);
  });
  if (!status.ok()) return status;
  return out;
}

absl::Status EncodeTensor(const at::Tensor& t, moe::v1::DType dtype,
                          moe::v1::Tensor* wire) {
  const std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  absl::StatusOr<at::Tensor> buffer = WireBuffer(dtype, shape, wire);
  if (!buffer.ok()) return buffer.status();
  return common::TorchCall("encode", [&] {
    if (t.numel() > 0) buffer->copy_(t);
  });
}

}  // namespace moe::proto
