// Conversions between moe.v1.Tensor (wire) and LibTorch tensors.
//
// The hot paths avoid copies: ViewTensor reads a received message's bytes in
// place, and WireBuffer lets a producer write its result straight into the
// outgoing message's bytes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "moe/v1/tensor.pb.h"

namespace moe::proto {

// Decodes a wire tensor into a new CPU tensor. InvalidArgument naming `field`
// for an unspecified/unknown dtype, a negative dimension or data whose length
// does not match; ResourceExhausted for a shape with more than
// `max_elements` elements.
absl::StatusOr<at::Tensor> DecodeTensor(const moe::v1::Tensor& wire,
                                        absl::string_view field,
                                        int64_t max_elements);

// The same checks, but the result aliases wire.data() (no copy) whenever the
// bytes are suitably aligned, so `wire` must outlive it and stay unchanged.
// Treat the result as read-only.
absl::StatusOr<at::Tensor> ViewTensor(const moe::v1::Tensor& wire,
                                      absl::string_view field,
                                      int64_t max_elements);

// Sets wire's dtype and shape, sizes wire->data for them and returns a CPU
// tensor of that dtype and shape over those bytes, to be written in place.
// Valid until `wire` is modified or destroyed.
absl::StatusOr<at::Tensor> WireBuffer(moe::v1::DType dtype,
                                      const std::vector<int64_t>& shape,
                                      moe::v1::Tensor* wire);

// Encodes `t` (any floating dtype, any device) as `dtype` into *wire, with a
// single pass over the data.
absl::Status EncodeTensor(const at::Tensor& t, moe::v1::DType dtype,
                          moe::v1::Tensor* wire);

absl::StatusOr<moe::v1::DType> WireDType(c10::ScalarType type);
absl::StatusOr<c10::ScalarType> TorchDType(moe::v1::DType dtype);

}  // namespace moe::proto
