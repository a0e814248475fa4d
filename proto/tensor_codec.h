// moe.v1.Tensor <-> common::HostTensor, the plain tensor type of files, the
// wire and the client API. No LibTorch.
//
// Every received tensor goes through CheckTensor: a dtype it knows, no
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

// FLOAT32, BFLOAT16, FLOAT16, INT64 <-> the same common::DType.
// InvalidArgument naming `field` for DTYPE_UNSPECIFIED or an unknown value.
absl::StatusOr<common::DType> FromWireDType(moe::v1::DType dtype,
                                            absl::string_view field);
// InvalidArgument for a dtype the wire cannot carry (float64, int32, ...),
// saying which it can.
absl::StatusOr<moe::v1::DType> ToWireDType(common::DType dtype);

// A checked wire tensor; `data` points into the message.
struct TensorRef {
  common::DType dtype = common::DType::kFloat32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  const char* data = nullptr;  // numel * ElementSize(dtype) bytes
};

// InvalidArgument naming `field` for a bad dtype, a negative dimension or a
// data length that does not match; ResourceExhausted when the shape has more
// than `max_elements` elements (computed without overflow).
absl::StatusOr<TensorRef> CheckTensor(const moe::v1::Tensor& wire,
                                      absl::string_view field,
                                      int64_t max_elements);

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
char* PrepareTensor(moe::v1::DType dtype, const std::vector<int64_t>& shape,
                    moe::v1::Tensor* wire);

// Bytes per element of FLOAT32/BFLOAT16/FLOAT16/INT64; 0 for others.
int64_t WireElementSize(moe::v1::DType dtype);

}  // namespace moe::proto
