#include "router/service/wire_tensors.h"

#include <ATen/ATen.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch/torch_convert.h"
#include "proto/tensor_codec.h"

namespace moe::router {

absl::StatusOr<moe::v1::DType> WireDTypeOf(c10::ScalarType type) {
  MOE_ASSIGN_OR_RETURN(common::DType dtype, common::FromScalarType(type));
  return proto::ToWireDType(dtype);
}

absl::StatusOr<at::Tensor> ViewWireTensor(const moe::v1::Tensor& wire,
                                          absl::string_view field,
                                          int64_t max_elements) {
  MOE_ASSIGN_OR_RETURN(proto::TensorRef ref,
                       proto::CheckTensor(wire, field, max_elements));
  MOE_ASSIGN_OR_RETURN(c10::ScalarType type, common::ToScalarType(ref.dtype));
  at::Tensor out;
  MOE_RETURN_IF_ERROR(common::TorchCall("decode", [&] {
    const auto options = at::TensorOptions().dtype(type);
    const size_t elem = common::ElementSize(ref.dtype);
    void* data = const_cast<char*>(ref.data);
    if (ref.numel > 0 && reinterpret_cast<uintptr_t>(data) % elem == 0) {
      out = at::from_blob(data, ref.shape, options);
    } else {
      out = at::empty(ref.shape, options);
      if (ref.numel > 0) {
        std::memcpy(out.data_ptr(), data,
                    static_cast<size_t>(ref.numel) * elem);
      }
    }
  }));
  return out;
}

absl::Status EncodeWireTensor(const at::Tensor& t, moe::v1::DType dtype,
                              moe::v1::Tensor* wire) {
  MOE_ASSIGN_OR_RETURN(common::DType common_dtype,
                       proto::FromWireDType(dtype, "tensor"));
  MOE_ASSIGN_OR_RETURN(c10::ScalarType type,
                       common::ToScalarType(common_dtype));
  const std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  char* bytes = proto::PrepareTensor(dtype, shape, wire);
  return common::TorchCall("encode", [&] {
    if (t.numel() == 0) return;
    at::Tensor buffer =
        at::from_blob(bytes, shape, at::TensorOptions().dtype(type));
    buffer.copy_(t);
  });
}

}  // namespace moe::router
