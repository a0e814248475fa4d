// LibTorch tensors over wire tensors, for the router's request and response
// (the worker hop needs none: proto/expert_wire.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "moe/v1/tensor.pb.h"

namespace moe::router {

// proto::CheckTensor, then a tensor that aliases wire.data() (no copy)
// whenever the bytes are suitably aligned, else a copy. `wire` must outlive
// the result and stay unchanged; treat the result as read-only.
absl::StatusOr<at::Tensor> ViewWireTensor(const moe::v1::Tensor& wire,
                                          absl::string_view field,
                                          int64_t max_elements);

// Writes `t` (float32/float16/bfloat16/int64, any layout) into *wire as
// `dtype` (a float dtype for float tensors, INT64 for int64 ones), in one
// pass over the data.
absl::Status EncodeWireTensor(const at::Tensor& t, moe::v1::DType dtype,
                              moe::v1::Tensor* wire);

// The wire dtype of a LibTorch dtype (float32, bfloat16, float16, int64).
absl::StatusOr<moe::v1::DType> WireDTypeOf(c10::ScalarType type);

}  // namespace moe::router
