// The router-to-worker wire (moe.v1.ExpertWorker/RunExperts), both
// directions and both ends, in one place, without copying token rows
// through protobuf messages:
//
//   router  RunExpertsRequestWriter   rows go out as slices over the
//                                     caller's memory (or converted to a
//                                     16-bit wire dtype)
//   worker  RunExpertsRequestView     tokens read in place from the received
//                                     slices, segments checked into
//                                     common::ExpertSegments
//   worker  RunExpertsResponseWriter  outputs written straight into the
//                                     slice that goes out
//   router  RunExpertsResponseView    outputs read in place, as float32 rows
//
// All of it is the ordinary protobuf wire format of
// proto/moe/v1/expert.proto (expert_wire_test checks every part against the
// generated parser and serializer, across every slicing of the bytes). A
// malformed message is an InvalidArgument naming the field, never a read
// out of bounds. No LibTorch.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/expert_segment.h"
#include "proto/tensor_codec.h"

namespace moe::proto {

// The gRPC message limit for `rows` float32 rows of `dim` (a worker call
// either way), with 1 MiB for the segments and framing, capped at what gRPC
// accepts (INT_MAX).
int MaxExpertMessageBytes(int64_t rows, int64_t dim);

class RunExpertsRequestWriter {
 public:
  // Rows of `dim` elements travel as `wire_dtype` (kFloat32, kBFloat16 or
  // kFloat16).
  RunExpertsRequestWriter(common::DType wire_dtype, int64_t dim);

  // Appends `rows` float32 rows stored contiguously at `data`. On a float32
  // wire the bytes go out in place and `owner` (which keeps them alive) is
  // held until gRPC is done with them; otherwise they are converted now.
  void AddFloatRows(const float* data, int64_t rows,
                    std::shared_ptr<const void> owner);
  // Appends a segment: the next `count` rows go to `key`.
  void AddSegment(common::ExpertKey key, int64_t count);
  int64_t rows() const { return rows_; }

  // The serialized request. The writer is spent afterwards.
  grpc::ByteBuffer Finish(common::DType output_dtype);

 private:
  common::DType dtype_;
  int64_t dim_;
  int64_t rows_ = 0;
  std::vector<grpc::Slice> data_;
  std::string segments_;
};

// A received message held as its gRPC slices (no copy).
class WireMessage {
 public:
  // InvalidArgument when the buffer cannot be read.
  static absl::StatusOr<WireMessage> From(const grpc::ByteBuffer& buffer);

  int64_t size() const { return size_; }
  // Copies bytes [offset, offset + n) to `dst`.
  // REQUIRES: the range lies within the message.
  void Copy(int64_t offset, int64_t n, void* dst) const;
  // Those bytes in place when they lie in one slice, else null.
  const void* Contiguous(int64_t offset, int64_t n) const;

 private:
  friend class Cursor;
  std::vector<grpc::Slice> slices_;
  std::vector<int64_t> starts_;  // message offset of each slice
  int64_t size_ = 0;
  size_t SliceAt(int64_t at) const;
};

// A moe.v1.Tensor inside a WireMessage: its checked header
// (proto::CheckTensorHeader, float dtypes only) and where its data start.
struct WireTensor {
  TensorView view;
  int64_t data_offset = 0;  // in the message
};

class RunExpertsRequestView {
 public:
  // ResourceExhausted for more than `max_rows` rows; InvalidArgument naming
  // the field for malformed bytes, a tokens tensor that is not [T, dim] of a
  // float dtype, segments that are not a partition of the T rows (negative
  // counts, a sum other than T, computed without overflow), a layer outside [0,
  // layers), or an output dtype other than FLOAT32/BFLOAT16/FLOAT16.
  static absl::StatusOr<RunExpertsRequestView> Parse(
      const grpc::ByteBuffer& buffer, int64_t dim, int64_t max_rows,
      int layers);

  int64_t rows() const { return tokens_.view.shape[0]; }
  common::DType tokens_dtype() const { return tokens_.view.dtype; }
  // The token rows, contiguous: in place when they lie aligned in one
  // received slice, else copied into *scratch. Valid while this view and
  // *scratch live.
  const void* TokenData(std::string* scratch) const {
    return TokenRowData(0, rows(), scratch);
  }
  // The same for rows [first, first + count) (within [0, rows())): what a
  // call processed in parts copies, at most, is one part.
  const void* TokenRowData(int64_t first, int64_t count,
                           std::string* scratch) const;
  const std::vector<common::ExpertSegment>& segments() const {
    return segments_;
  }
  // The dtype the outputs go back in (the tokens' when unspecified).
  common::DType output_dtype() const { return output_dtype_; }

 private:
  WireMessage message_;
  WireTensor tokens_;
  std::vector<common::ExpertSegment> segments_;
  common::DType output_dtype_ = common::DType::kFloat32;
};

class RunExpertsResponseWriter {
 public:
  // Outputs [rows, dim] of `dtype` (kFloat32, kBFloat16 or kFloat16),
  // written at data() and sent from there.
  RunExpertsResponseWriter(common::DType dtype, int64_t rows, int64_t dim);
  void* data() { return data_; }
  // The serialized response. The writer is spent afterwards.
  grpc::ByteBuffer Finish();

 private:
  grpc::Slice head_;
  grpc::Slice body_;
  void* data_;
};

class RunExpertsResponseView {
 public:
  // InvalidArgument naming "outputs" for malformed bytes or a tensor that
  // is not [rows, dim] of a float dtype.
  static absl::StatusOr<RunExpertsResponseView> Parse(
      const grpc::ByteBuffer& buffer, int64_t rows, int64_t dim);

  common::DType dtype() const { return outputs_.view.dtype; }
  // Rows [first, first + count) as float32: in place when the wire is
  // float32 and they lie aligned in one received slice, else converted into
  // *scratch. Valid while this view and *scratch live.
  // REQUIRES: 0 <= first, first + count <= rows.
  const float* FloatRows(int64_t first, int64_t count,
                         std::vector<float>* scratch) const;

 private:
  WireMessage message_;
  WireTensor outputs_;
};

}  // namespace moe::proto
