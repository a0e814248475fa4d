// The router's side of moe.v1.ExpertWorker/RunExperts without copying the
// token rows through protobuf messages:
//
// - RunExpertsRequestWriter produces the serialized RunExpertsRequest as a
//   grpc::ByteBuffer whose row data are slices over the caller's tensors
//   (gRPC writes them to the socket from there);
// - WireTensorView reads the `outputs` tensor of a serialized
//   RunExpertsResponse in place: it parses the small header and copies the
//   data straight from the received slices to where the rows belong.
//
// Both speak the ordinary protobuf wire format of proto/moe/v1/expert.proto,
// so the worker is a plain generated service; expert_wire_test checks them
// against the generated parser and serializer.
#pragma once

#include <ATen/core/Tensor.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/v1/tensor.pb.h"

namespace moe::proto {

class RunExpertsRequestWriter {
 public:
  // Rows of `dim` elements of `dtype` (FLOAT32, BFLOAT16 or FLOAT16).
  RunExpertsRequestWriter(moe::v1::DType dtype, int64_t dim);

  // Appends `rows` rows stored contiguously at `data`, which lies in
  // `owner`'s memory; the buffer keeps `owner` alive until gRPC is done.
  void AddRows(const at::Tensor& owner, const void* data, int64_t rows);
  // Appends a segment: `count` consecutive rows for `expert_id`.
  void AddSegment(int64_t expert_id, int64_t count);
  int64_t rows() const { return rows_; }

  // The serialized request. The writer is spent afterwards.
  grpc::ByteBuffer Finish(moe::v1::DType output_dtype);

 private:
  moe::v1::DType dtype_;
  int64_t dim_;
  int64_t rows_ = 0;
  std::vector<grpc::Slice> data_;
  std::string segments_;
};

// The tensor in field 1 of a serialized message (RunExpertsResponse.outputs).
class WireTensorView {
 public:
  // InvalidArgument naming `field` for malformed bytes, a dtype other than
  // FLOAT32/BFLOAT16/FLOAT16, a negative dimension, or data whose length does
  // not match the shape.
  static absl::StatusOr<WireTensorView> Parse(const grpc::ByteBuffer& message,
                                              const std::string& field);

  moe::v1::DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t element_size() const { return element_size_; }

  // Copies bytes [offset, offset + n) of the data to `dst`.
  void CopyData(int64_t offset, int64_t n, void* dst) const;
  // Those bytes in place when they lie in one received slice, else null.
  // Valid while this view lives.
  const void* Contiguous(int64_t offset, int64_t n) const;

 private:
  std::vector<grpc::Slice> slices_;
  std::vector<int64_t> starts_;  // offset of each slice in the message
  moe::v1::DType dtype_ = moe::v1::DTYPE_UNSPECIFIED;
  std::vector<int64_t> shape_;
  int64_t element_size_ = 0;
  int64_t data_begin_ = 0;  // offset of the data in the message

  // The slice holding message byte `at` (the last one starting at or before
  // it).
  size_t SliceAt(int64_t at) const;
};

}  // namespace moe::proto
