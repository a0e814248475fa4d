// moe.v1.Tensor <-> common::HostTensor, the plain tensor type of files, the
// wire and the client API. No LibTorch.
//
// Every received tensor goes through CheckTensorHeader: a dtype it knows, no
// negative dimension, an element count that neither overflows nor passes
// `max_elements`, and data whose length matches. The error names `field`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "common/host_tensor.h"
#include "moe/v1/tensor.pb.h"

namespace moe::proto {

// The one mapping between moe.v1.DType and common::DType: FLOAT32,
// BFLOAT16, FLOAT16, INT64 <-> the same. InvalidArgument naming `field` for
// DTYPE_UNSPECIFIED or an unknown value.
absl::StatusOr<common::DType> FromWireDType(moe::v1::DType dtype,
                                            absl::string_view field);
// InvalidArgument for a dtype the wire cannot carry (float64, int32, ...),
// saying which it can.
absl::StatusOr<moe::v1::DType> ToWireDType(common::DType dtype);
// For dtypes known to travel (the float ones and int64).
// REQUIRES: ToWireDType(dtype) is OK.
moe::v1::DType WireDType(common::DType dtype);

// A received tensor's header, checked: the one view of a wire tensor,
// whether protobuf parsed it (CheckTensor) or it is read in place from a
// message's slices (proto/expert_wire.h).
struct TensorView {
  common::DType dtype = common::DType::kFloat32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t byte_size() const {
    return numel * static_cast<int64_t>(common::ElementSize(dtype));
  }
};

// The checks of every received tensor: a dtype the wire carries (a float one
// when `floats_only`), no negative dimension, an element count that neither
// overflows nor passes `max_elements`, and `data_bytes` of data to match.
// InvalidArgument naming `field`; ResourceExhausted past `max_elements`.
absl::StatusOr<TensorView> CheckTensorHeader(
    moe::v1::DType dtype, std::vector<int64_t> shape, int64_t data_bytes,
    absl::string_view field, int64_t max_elements, bool floats_only = false);

// CheckTensorHeader of a parsed tensor; its bytes are wire.data().
absl::StatusOr<TensorView> CheckTensor(const moe::v1::Tensor& wire,
                                       absl::string_view field,
                                       int64_t max_elements,
                                       bool floats_only = false);

// CheckTensor, then a copy.
absl::StatusOr<common::HostTensor> DecodeTensor(const moe::v1::Tensor& wire,
                                                absl::string_view field,
                                                int64_t max_elements);

// Copies `tensor` into *wire. InvalidArgument for a dtype the wire cannot
// carry.
absl::Status EncodeTensor(const common::HostTensor& tensor,
                          moe::v1::Tensor* wire);

// Sets wire's dtype and shape and sizes its data for them; returns where the
// bytes go (valid until *wire changes). Large buffers get a capacity rounded
// up to whole MiB, so that messages of varying size reuse freed blocks.
// REQUIRES: every dimension >= 0 and the byte size fits in memory.
// REQUIRES: ToWireDType(dtype) is OK.
char* PrepareTensor(common::DType dtype, const std::vector<int64_t>& shape,
                    moe::v1::Tensor* wire);

}  // namespace moe::proto
