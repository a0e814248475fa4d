#include "proto/expert_wire.h"

#include <grpc/slice.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/host_tensor.h"
#include "proto/tensor_codec.h"

namespace moe::proto {

int MaxExpertMessageBytes(int64_t rows, int64_t dim) {
  const int64_t bytes = rows * dim * 4 + (int64_t{1} << 20);
  return static_cast<int>(
      std::min<int64_t>(bytes, std::numeric_limits<int>::max()));
}

// Protobuf wire types.
constexpr int kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5;

// Reads fields of a WireMessage in [offset, end).
class Cursor {
 public:
  Cursor(const WireMessage& m, int64_t begin, int64_t end)
      : m_(m), offset_(begin), end_(end) {
    slice_ = m_.slices_.empty() ? 0 : m_.SliceAt(begin);
  }
  int64_t offset() const { return offset_; }
  bool done() const { return offset_ >= end_; }

  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (offset_ >= end_) return false;
      const uint8_t b = Byte();
      ++offset_;
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // Skips `n` bytes; false when fewer remain.
  bool Skip(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - offset_)) return false;
    offset_ += static_cast<int64_t>(n);
    return true;
  }
  bool SkipField(int wire_type) {
    uint64_t v;
    switch (wire_type) {
      case kVarint:
        return ReadVarint(&v);
      case kFixed64:
        return Skip(8);
      case kLen:
        return ReadVarint(&v) && Skip(v);
      case kFixed32:
        return Skip(4);
      default:
        return false;  // groups: our messages have none
    }
  }
  // Reads a length prefix and returns the end of the field it delimits.
  bool ReadLength(int64_t* field_end) {
    uint64_t n;
    if (!ReadVarint(&n) || n > static_cast<uint64_t>(end_ - offset_)) {
      return false;
    }
    *field_end = offset_ + static_cast<int64_t>(n);
    return true;
  }

 private:
  uint8_t Byte() {
    while (offset_ >= m_.starts_[slice_] +
                          static_cast<int64_t>(m_.slices_[slice_].size())) {
      ++slice_;
    }
    return m_.slices_[slice_].begin()[offset_ - m_.starts_[slice_]];
  }
  const WireMessage& m_;
  int64_t offset_;
  int64_t end_;
  size_t slice_;
};

namespace {

uint32_t Tag(int field, int wire_type) {
  return static_cast<uint32_t>(field << 3 | wire_type);
}

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Field `field` (a moe.v1.Tensor of [rows, dim] `dtype`) up to its data's
// length prefix: the data bytes follow.
std::string TensorFieldHead(int field, common::DType dtype, int64_t rows,
                            int64_t dim) {
  const uint64_t data_bytes =
      static_cast<uint64_t>(rows * dim) * common::ElementSize(dtype);
  std::string shape;
  PutVarint(static_cast<uint64_t>(rows), &shape);
  PutVarint(static_cast<uint64_t>(dim), &shape);
  std::string tensor;
  PutVarint(Tag(1, kVarint), &tensor);
  PutVarint(static_cast<uint64_t>(WireDType(dtype)), &tensor);
  PutVarint(Tag(2, kLen), &tensor);
  PutVarint(shape.size(), &tensor);
  tensor += shape;
  PutVarint(Tag(3, kLen), &tensor);
  PutVarint(data_bytes, &tensor);
  std::string head;
  PutVarint(Tag(field, kLen), &head);
  PutVarint(tensor.size() + data_bytes, &head);
  head += tensor;
  return head;
}

void ReleaseOwner(void* p) {
  delete static_cast<std::shared_ptr<const void>*>(p);
}

absl::Status Malformed(const std::string& field, const char* what) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": malformed message (", what, ")"));
}

// The moe.v1.Tensor in [begin, end) of `m`, its header checked by
// CheckTensorHeader (float dtypes).
absl::StatusOr<WireTensor> ParseTensor(const WireMessage& m, int64_t begin,
                                       int64_t end, const std::string& field) {
  WireTensor t;
  Cursor c(m, begin, end);
  uint64_t dtype = 0;
  std::vector<int64_t> shape;
  int64_t data_bytes = 0;
  while (!c.done()) {
    uint64_t tag, v;
    if (!c.ReadVarint(&tag)) return Malformed(field, "truncated tensor field");
    const int n = static_cast<int>(tag >> 3), wt = tag & 7;
    if (n == 1 && wt == kVarint) {  // dtype
      if (!c.ReadVarint(&dtype)) return Malformed(field, "truncated dtype");
    } else if (n == 2 && wt == kLen) {  // shape, packed
      int64_t shape_end;
      if (!c.ReadLength(&shape_end)) return Malformed(field, "truncated shape");
      Cursor s(m, c.offset(), shape_end);
      while (!s.done()) {
        if (!s.ReadVarint(&v)) return Malformed(field, "truncated shape");
        shape.push_back(static_cast<int64_t>(v));
      }
      c.Skip(static_cast<uint64_t>(shape_end - c.offset()));
    } else if (n == 2 && wt == kVarint) {  // shape, unpacked
      if (!c.ReadVarint(&v)) return Malformed(field, "truncated shape");
      shape.push_back(static_cast<int64_t>(v));
    } else if (n == 3 && wt == kLen) {  // data
      int64_t data_end;
      if (!c.ReadLength(&data_end)) return Malformed(field, "truncated data");
      t.data_offset = c.offset();
      data_bytes = data_end - c.offset();
      c.Skip(static_cast<uint64_t>(data_bytes));
    } else if (!c.SkipField(wt)) {
      return Malformed(field, "bad tensor field");
    }
  }
  // 2^40 elements: beyond any message gRPC lets through, small enough that
  // byte sizes cannot overflow.
  constexpr int64_t kMaxElements = int64_t{1} << 40;
  absl::StatusOr<TensorView> view = CheckTensorHeader(
      static_cast<moe::v1::DType>(std::min<uint64_t>(dtype, 1u << 30)),
      std::move(shape), data_bytes, field, kMaxElements,
      /*floats_only=*/true);
  if (absl::IsResourceExhausted(view.status())) {
    // Not a configured limit (the callers check rows): a malformed shape.
    return absl::InvalidArgumentError(view.status().message());
  }
  if (!view.ok()) return view.status();
  t.view = std::move(*view);
  return t;
}

// ExpertSegment{expert_id = 1, count = 2, layer = 3} in [begin, end).
bool ParseSegment(const WireMessage& m, int64_t begin, int64_t end,
                  int64_t* expert, int64_t* count, int64_t* layer) {
  Cursor c(m, begin, end);
  *expert = *count = *layer = 0;
  while (!c.done()) {
    uint64_t tag, v;
    if (!c.ReadVarint(&tag)) return false;
    const int n = static_cast<int>(tag >> 3), wt = tag & 7;
    if (wt == kVarint && n >= 1 && n <= 3) {
      if (!c.ReadVarint(&v)) return false;
      int64_t* out = n == 1 ? expert : n == 2 ? count : layer;
      *out = static_cast<int64_t>(v);
    } else if (!c.SkipField(wt)) {
      return false;
    }
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------
// WireMessage

absl::StatusOr<WireMessage> WireMessage::From(const grpc::ByteBuffer& buffer) {
  WireMessage m;
  if (!buffer.Dump(&m.slices_).ok()) {
    return absl::InvalidArgumentError("unreadable message");
  }
  for (const grpc::Slice& s : m.slices_) {
    m.starts_.push_back(m.size_);
    m.size_ += static_cast<int64_t>(s.size());
  }
  return m;
}

size_t WireMessage::SliceAt(int64_t at) const {
  return static_cast<size_t>(
      std::upper_bound(starts_.begin(), starts_.end(), at) - starts_.begin() -
      1);
}

const void* WireMessage::Contiguous(int64_t offset, int64_t n) const {
  if (slices_.empty() || n == 0) return nullptr;
  const size_t i = SliceAt(offset);
  const int64_t in_slice = offset - starts_[i];
  if (in_slice + n > static_cast<int64_t>(slices_[i].size())) return nullptr;
  return slices_[i].begin() + in_slice;
}

void WireMessage::Copy(int64_t offset, int64_t n, void* dst) const {
  auto* out = static_cast<uint8_t*>(dst);
  size_t i = n > 0 ? SliceAt(offset) : slices_.size();
  while (n > 0 && i < slices_.size()) {
    const int64_t in_slice = offset - starts_[i];
    const int64_t step = std::min<int64_t>(
        n, static_cast<int64_t>(slices_[i].size()) - in_slice);
    std::memcpy(out, slices_[i].begin() + in_slice, static_cast<size_t>(step));
    out += step;
    offset += step;
    n -= step;
    ++i;
  }
}

// ---------------------------------------------------------------------------
// Router: the request out.

RunExpertsRequestWriter::RunExpertsRequestWriter(common::DType wire_dtype,
                                                 int64_t dim)
    : dtype_(wire_dtype), dim_(dim) {}

void RunExpertsRequestWriter::AddFloatRows(const float* data, int64_t rows,
                                           std::shared_ptr<const void> owner) {
  if (rows <= 0) return;
  const int64_t n = rows * dim_;
  if (dtype_ == common::DType::kFloat32) {
    // The slice holds a reference to the owner until gRPC releases it.
    data_.emplace_back(const_cast<float*>(data),
                       static_cast<size_t>(n) * sizeof(float), &ReleaseOwner,
                       new std::shared_ptr<const void>(std::move(owner)));
  } else {
    grpc_slice s = grpc_slice_malloc_large(static_cast<size_t>(n) * 2);
    common::ConvertFromFloat32(data, n, dtype_, GRPC_SLICE_START_PTR(s));
    data_.emplace_back(s, grpc::Slice::STEAL_REF);
  }
  rows_ += rows;
}

void RunExpertsRequestWriter::AddSegment(common::ExpertKey key, int64_t count) {
  std::string segment;
  PutVarint(Tag(1, kVarint), &segment);
  PutVarint(static_cast<uint64_t>(key.expert), &segment);
  PutVarint(Tag(2, kVarint), &segment);
  PutVarint(static_cast<uint64_t>(count), &segment);
  if (key.layer != 0) {
    PutVarint(Tag(3, kVarint), &segment);
    PutVarint(static_cast<uint64_t>(key.layer), &segment);
  }
  PutVarint(Tag(2, kLen), &segments_);  // RunExpertsRequest.segments
  PutVarint(segment.size(), &segments_);
  segments_ += segment;
}

grpc::ByteBuffer RunExpertsRequestWriter::Finish(common::DType output_dtype) {
  // RunExpertsRequest.tokens; its data follow as the rows' slices.
  std::string head = TensorFieldHead(1, dtype_, rows_, dim_);
  std::string tail = std::move(segments_);
  PutVarint(Tag(3, kVarint), &tail);  // RunExpertsRequest.output_dtype
  PutVarint(static_cast<uint64_t>(WireDType(output_dtype)), &tail);

  std::vector<grpc::Slice> slices;
  slices.reserve(data_.size() + 2);
  slices.emplace_back(head);
  for (grpc::Slice& s : data_) slices.push_back(std::move(s));
  slices.emplace_back(tail);
  data_.clear();
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// ---------------------------------------------------------------------------
// Worker: the request in, the response out.

absl::StatusOr<RunExpertsRequestView> RunExpertsRequestView::Parse(
    const grpc::ByteBuffer& buffer, int64_t dim, int64_t max_rows, int layers) {
  RunExpertsRequestView view;
  absl::StatusOr<WireMessage> message = WireMessage::From(buffer);
  if (!message.ok()) return message.status();
  view.message_ = std::move(*message);
  const WireMessage& m = view.message_;
  struct RawSegment {
    int64_t expert, count, layer;
  };
  std::vector<RawSegment> raw;
  bool has_tokens = false;
  uint64_t output_dtype = 0;
  Cursor c(m, 0, m.size());
  while (!c.done()) {
    uint64_t tag;
    if (!c.ReadVarint(&tag)) return Malformed("request", "truncated tag");
    const int n = static_cast<int>(tag >> 3), wt = tag & 7;
    int64_t end;
    if (n == 1 && wt == kLen) {
      if (has_tokens) return Malformed("tokens", "the tensor appears twice");
      if (!c.ReadLength(&end)) return Malformed("tokens", "truncated");
      absl::StatusOr<WireTensor> t = ParseTensor(m, c.offset(), end, "tokens");
      if (!t.ok()) return t.status();
      view.tokens_ = std::move(*t);
      has_tokens = true;
      c.Skip(static_cast<uint64_t>(end - c.offset()));
    } else if (n == 2 && wt == kLen) {
      RawSegment s;
      if (!c.ReadLength(&end) ||
          !ParseSegment(m, c.offset(), end, &s.expert, &s.count, &s.layer)) {
        return Malformed(absl::StrCat("segments[", raw.size(), "]"),
                         "truncated");
      }
      raw.push_back(s);
      c.Skip(static_cast<uint64_t>(end - c.offset()));
    } else if (n == 3 && wt == kVarint) {
      if (!c.ReadVarint(&output_dtype)) {
        return Malformed("output_dtype", "truncated");
      }
    } else if (!c.SkipField(wt)) {
      return Malformed("request", "bad field");
    }
  }
  if (!has_tokens) return absl::InvalidArgumentError("tokens: missing");
  const TensorView& t = view.tokens_.view;
  if (t.shape.size() != 2 || t.shape[1] != dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens: shape ", common::ShapeToString(t.shape),
                     " is not [T, ", dim, "]"));
  }
  if (t.shape[0] > max_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tokens: ", t.shape[0],
                     " rows exceed this worker's "
                     "limit of ",
                     max_rows, " rows per call"));
  }
  if (output_dtype == 0) {  // DTYPE_UNSPECIFIED
    view.output_dtype_ = t.dtype;
  } else {
    absl::StatusOr<common::DType> out = FromWireDType(
        static_cast<moe::v1::DType>(std::min<uint64_t>(output_dtype, 1u << 30)),
        "output_dtype");
    if (!out.ok() || !common::IsFloatingPoint(*out)) {
      return absl::InvalidArgumentError(
          "output_dtype: must be FLOAT32, BFLOAT16 or FLOAT16");
    }
    view.output_dtype_ = *out;
  }
  const int64_t rows = t.shape[0];
  int64_t offset = 0;
  for (size_t i = 0; i < raw.size(); ++i) {
    const RawSegment& s = raw[i];
    if (s.count < 0 || s.count > rows - offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "segments[", i, "]: count ", s.count,
          s.count < 0 ? " is negative"
                      : absl::StrCat(" runs past the ", rows, " token rows")));
    }
    if (s.layer < 0 || s.layer >= layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("segments[", i, "]: layer ", s.layer,
                       " is outside the model's ", layers, " layers"));
    }
    view.segments_.push_back(
        {{static_cast<int32_t>(s.layer), s.expert}, offset, s.count});
    offset += s.count;
  }
  if (offset != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("segments: counts add up to ", offset, " but ", rows,
                     " token rows were sent"));
  }
  return view;
}

const void* RunExpertsRequestView::TokenRowData(int64_t first, int64_t count,
                                                std::string* scratch) const {
  const int64_t row_bytes =
      tokens_.view.shape[1] *
      static_cast<int64_t>(common::ElementSize(tokens_.view.dtype));
  const int64_t bytes = count * row_bytes;
  const int64_t from = tokens_.data_offset + first * row_bytes;
  const void* direct = message_.Contiguous(from, bytes);
  if (direct != nullptr && reinterpret_cast<uintptr_t>(direct) %
                                   common::ElementSize(tokens_.view.dtype) ==
                               0) {
    return direct;
  }
  scratch->resize(static_cast<size_t>(bytes));
  message_.Copy(from, bytes, scratch->data());
  return scratch->data();
}

RunExpertsResponseWriter::RunExpertsResponseWriter(common::DType dtype,
                                                   int64_t rows, int64_t dim) {
  const uint64_t data_bytes =
      static_cast<uint64_t>(rows * dim) * common::ElementSize(dtype);
  // RunExpertsResponse.outputs.
  const std::string head = TensorFieldHead(1, dtype, rows, dim);
  head_ = grpc::Slice(head);
  // Never inlined (small slices keep their bytes inside the struct, which
  // the Slice below copies): data_ must stay where it points.
  grpc_slice body = grpc_slice_malloc_large(static_cast<size_t>(data_bytes));
  data_ = GRPC_SLICE_START_PTR(body);
  body_ = grpc::Slice(body, grpc::Slice::STEAL_REF);
}

grpc::ByteBuffer RunExpertsResponseWriter::Finish() {
  grpc::Slice slices[2] = {std::move(head_), std::move(body_)};
  return grpc::ByteBuffer(slices, 2);
}

// ---------------------------------------------------------------------------
// Router: the response in.

absl::StatusOr<RunExpertsResponseView> RunExpertsResponseView::Parse(
    const grpc::ByteBuffer& buffer, int64_t rows, int64_t dim) {
  RunExpertsResponseView view;
  absl::StatusOr<WireMessage> message = WireMessage::From(buffer);
  if (!message.ok()) return message.status();
  view.message_ = std::move(*message);
  const WireMessage& m = view.message_;
  bool found = false;
  Cursor c(m, 0, m.size());
  while (!c.done()) {
    uint64_t tag;
    if (!c.ReadVarint(&tag)) return Malformed("outputs", "truncated tag");
    const int n = static_cast<int>(tag >> 3), wt = tag & 7;
    if (n != 1 || wt != kLen) {
      if (!c.SkipField(wt)) return Malformed("outputs", "bad field");
      continue;
    }
    if (found) return Malformed("outputs", "the tensor appears twice");
    found = true;
    int64_t end;
    if (!c.ReadLength(&end)) return Malformed("outputs", "truncated tensor");
    absl::StatusOr<WireTensor> t = ParseTensor(m, c.offset(), end, "outputs");
    if (!t.ok()) return t.status();
    view.outputs_ = std::move(*t);
    c.Skip(static_cast<uint64_t>(end - c.offset()));
  }
  if (!found) return absl::InvalidArgumentError("outputs: missing");
  if (view.outputs_.view.shape != std::vector<int64_t>{rows, dim}) {
    return absl::InvalidArgumentError(absl::StrCat(
        "outputs: shape ", common::ShapeToString(view.outputs_.view.shape),
        ", expected [", rows, ", ", dim, "]"));
  }
  return view;
}

const float* RunExpertsResponseView::FloatRows(
    int64_t first, int64_t count, std::vector<float>* scratch) const {
  const common::DType dtype = outputs_.view.dtype;
  const int64_t element_size = static_cast<int64_t>(common::ElementSize(dtype));
  const int64_t dim = outputs_.view.shape[1];
  const int64_t n = count * dim;
  const int64_t from = outputs_.data_offset + first * dim * element_size;
  const int64_t bytes = n * element_size;
  if (dtype == common::DType::kFloat32) {
    const void* direct = message_.Contiguous(from, bytes);
    if (direct != nullptr &&
        reinterpret_cast<uintptr_t>(direct) % alignof(float) == 0) {
      return static_cast<const float*>(direct);
    }
    scratch->resize(static_cast<size_t>(n));
    message_.Copy(from, bytes, scratch->data());
    return scratch->data();
  }
  // 16-bit wire: gather the bytes (they may straddle slices), then widen.
  std::string narrow(static_cast<size_t>(bytes), '\0');
  message_.Copy(from, bytes, narrow.data());
  scratch->resize(static_cast<size_t>(n));
  common::ConvertToFloat32(dtype, narrow.data(), n, scratch->data());
  return scratch->data();
}

}  // namespace moe::proto
