// LibTorch tensors over wire tensors, for the router's request and response
// (the worker hop needs none: proto/expert_wire.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "moe/v1/tensor.pb.h"
#include "proto/tensor_codec.h"

namespace moe::router {

// A tensor over `wire`'s bytes as `view` (proto::CheckTensor of `wire`)
// describes them: it aliases wire.data() (no copy) whenever the bytes are
// suitably aligned, else it is a copy. `wire` must outlive the result and
// stay unchanged; treat the result as read-only. Internal when LibTorch
// fails.
absl::StatusOr<at::Tensor> ViewWireTensor(const moe::v1::Tensor& wire,
                                          const proto::TensorView& view);

// Writes `t` (float32/float16/bfloat16/int64, any layout) into *wire as
// `dtype` (a float dtype for float tensors, kInt64 for int64 ones), in one
// pass over the data.
absl::Status EncodeWireTensor(const at::Tensor& t, common::DType dtype,
                              moe::v1::Tensor* wire);

}  // namespace moe::router
