#include "router/api/wire_tensors.h"

#include <ATen/ATen.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch/torch_convert.h"

namespace moe::router {

absl::StatusOr<at::Tensor> ViewWireTensor(const moe::v1::Tensor& wire,
                                          const proto::TensorView& view) {
  MOE_ASSIGN_OR_RETURN(c10::ScalarType type, common::ToScalarType(view.dtype));
  at::Tensor out;
  MOE_RETURN_IF_ERROR(common::TorchCall("decode", [&] {
    const auto options = at::TensorOptions().dtype(type);
    const size_t elem = common::ElementSize(view.dtype);
    void* data = const_cast<char*>(wire.data().data());
    if (view.numel > 0 && reinterpret_cast<uintptr_t>(data) % elem == 0) {
      out = at::from_blob(data, view.shape, options);
    } else {
      out = at::empty(view.shape, options);
      if (view.numel > 0) {
        std::memcpy(out.data_ptr(), data,
                    static_cast<size_t>(view.numel) * elem);
      }
    }
  }));
  return out;
}

absl::Status EncodeWireTensor(const at::Tensor& t, common::DType dtype,
                              moe::v1::Tensor* wire) {
  MOE_RETURN_IF_ERROR(proto::ToWireDType(dtype).status());
  MOE_ASSIGN_OR_RETURN(c10::ScalarType type, common::ToScalarType(dtype));
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
