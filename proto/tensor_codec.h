// Conversions between moe.v1.Tensor (wire) and LibTorch tensors.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "moe/v1/tensor.pb.h"

namespace moe::proto {

// Decodes a wire tensor into a new CPU tensor. InvalidArgument naming `field`
// for an unspecified/unknown dtype, a negative dimension, a shape with more
// than `max_elements` elements or data whose length does not match.
absl::StatusOr<at::Tensor> DecodeTensor(const moe::v1::Tensor& wire,
                                        absl::string_view field,
                                        int64_t max_elements);

// Encodes `t` (any floating dtype, any device) as `dtype` into *wire.
absl::Status EncodeTensor(const at::Tensor& t, moe::v1::DType dtype,
                          moe::v1::Tensor* wire);

// Encodes rows [row, row + count) of a contiguous 2-D float32 CPU tensor,
// converted to `dtype`, appending them to wire->data (the caller sets shape).
absl::Status AppendRows(const at::Tensor& t, int64_t row, int64_t count,
                        moe::v1::DType dtype, moe::v1::Tensor* wire);

absl::StatusOr<moe::v1::DType> WireDType(c10::ScalarType type);
absl::StatusOr<c10::ScalarType> TorchDType(moe::v1::DType dtype);

}  // namespace moe::proto
