#include "proto/expert_wire.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/host_tensor.h"

namespace moe::proto {
namespace {

// Protobuf wire types.
constexpr int kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5;

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

int64_t ElementSize(moe::v1::DType dtype) {
  switch (dtype) {
    case moe::v1::FLOAT32:
      return 4;
    case moe::v1::BFLOAT16:
    case moe::v1::FLOAT16:
      return 2;
    default:
      return 0;
  }
}

grpc::Slice OwnedSlice(std::string bytes) { return grpc::Slice(bytes); }

// Reads a message that lies in several slices.
class Cursor {
 public:
  Cursor(const std::vector<grpc::Slice>& slices) : slices_(slices) {
    while (slice_ < slices_.size() && slices_[slice_].size() == 0) ++slice_;
  }
  int64_t offset() const { return offset_; }

  bool ReadByte(uint8_t* b) {
    if (slice_ >= slices_.size()) return false;
    *b = slices_[slice_].begin()[pos_];
    Advance(1);
    return true;
  }
  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool Skip(uint64_t n) {
    while (n > 0) {
      if (slice_ >= slices_.size()) return false;
      const uint64_t here = slices_[slice_].size() - pos_;
      const uint64_t step = std::min(n, here);
      Advance(step);
      n -= step;
    }
    return true;
  }

 private:
  void Advance(uint64_t n) {
    pos_ += n;
    offset_ += static_cast<int64_t>(n);
    while (slice_ < slices_.size() && pos_ == slices_[slice_].size()) {
      ++slice_;
      pos_ = 0;
    }
  }
  const std::vector<grpc::Slice>& slices_;
  size_t slice_ = 0;
  size_t pos_ = 0;
  int64_t offset_ = 0;
};

bool SkipField(Cursor& c, int wire_type) {
  uint64_t v;
  switch (wire_type) {
    case kVarint:
      return c.ReadVarint(&v);
    case kFixed64:
      return c.Skip(8);
    case kLen:
      return c.ReadVarint(&v) && c.Skip(v);
    case kFixed32:
      return c.Skip(4);
    default:
      return false;  // groups are not used by our messages
  }
}

}  // namespace

RunExpertsRequestWriter::RunExpertsRequestWriter(moe::v1::DType dtype,
                                                 int64_t dim)
    : dtype_(dtype), dim_(dim) {}

void RunExpertsRequestWriter::AddRows(const at::Tensor& owner, const void* data,
                                      int64_t rows) {
  if (rows <= 0) return;
  const size_t bytes = static_cast<size_t>(rows * dim_ * ElementSize(dtype_));
  // The slice holds a reference to the tensor until gRPC releases it.
  auto* keep = new at::Tensor(owner);
  data_.emplace_back(
      const_cast<void*>(data), bytes,
      [](void* p) { delete static_cast<at::Tensor*>(p); }, keep);
  rows_ += rows;
}

void RunExpertsRequestWriter::AddSegment(int64_t expert_id, int64_t count) {
  std::string segment;
  PutVarint(Tag(1, kVarint), &segment);
  PutVarint(static_cast<uint64_t>(expert_id), &segment);
  PutVarint(Tag(2, kVarint), &segment);
  PutVarint(static_cast<uint64_t>(count), &segment);
  PutVarint(Tag(2, kLen), &segments_);  // RunExpertsRequest.segments
  PutVarint(segment.size(), &segments_);
  segments_ += segment;
}

grpc::ByteBuffer RunExpertsRequestWriter::Finish(moe::v1::DType output_dtype) {
  const uint64_t data_bytes =
      static_cast<uint64_t>(rows_ * dim_ * ElementSize(dtype_));
  // Tensor: dtype, packed shape, then the data's tag and length; the data
  // follow as the callers' slices.
  std::string shape;
  PutVarint(static_cast<uint64_t>(rows_), &shape);
  PutVarint(static_cast<uint64_t>(dim_), &shape);
  std::string tensor;
  PutVarint(Tag(1, kVarint), &tensor);
  PutVarint(static_cast<uint64_t>(dtype_), &tensor);
  PutVarint(Tag(2, kLen), &tensor);
  PutVarint(shape.size(), &tensor);
  tensor += shape;
  PutVarint(Tag(3, kLen), &tensor);
  PutVarint(data_bytes, &tensor);
  std::string head;
  PutVarint(Tag(1, kLen), &head);  // RunExpertsRequest.tokens
  PutVarint(tensor.size() + data_bytes, &head);
  head += tensor;

  std::string tail = std::move(segments_);
  PutVarint(Tag(3, kVarint), &tail);  // RunExpertsRequest.output_dtype
  PutVarint(static_cast<uint64_t>(output_dtype), &tail);

  std::vector<grpc::Slice> slices;
  slices.reserve(data_.size() + 2);
  slices.push_back(OwnedSlice(std::move(head)));
  for (grpc::Slice& s : data_) slices.push_back(std::move(s));
  slices.push_back(OwnedSlice(std::move(tail)));
  data_.clear();
  return grpc::ByteBuffer(slices.data(), slices.size());
}

absl::StatusOr<WireTensorView> WireTensorView::Parse(
    const grpc::ByteBuffer& message, const std::string& field) {
  WireTensorView view;
  if (!message.Dump(&view.slices_).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": unreadable message"));
  }
  int64_t start = 0;
  for (const grpc::Slice& s : view.slices_) {
    view.starts_.push_back(start);
    start += static_cast<int64_t>(s.size());
  }
  const int64_t total = start;
  const auto malformed = [&field](const char* what) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": malformed message (", what, ")"));
  };
  Cursor c(view.slices_);
  bool found = false, has_data = false;
  uint64_t data_bytes = 0;
  while (c.offset() < total) {
    uint64_t tag;
    if (!c.ReadVarint(&tag)) return malformed("truncated tag");
    const int number = static_cast<int>(tag >> 3), type = tag & 7;
    if (number != 1 || type != kLen) {
      if (!SkipField(c, type)) return malformed("bad field");
      continue;
    }
    if (found) return malformed("the tensor appears twice");
    found = true;
    uint64_t len;
    if (!c.ReadVarint(&len) ||
        len > static_cast<uint64_t>(total - c.offset())) {
      return malformed("truncated tensor");
    }
    const int64_t end = c.offset() + static_cast<int64_t>(len);
    while (c.offset() < end) {
      uint64_t t, v;
      if (!c.ReadVarint(&t)) return malformed("truncated tensor field");
      const int n = static_cast<int>(t >> 3), wt = t & 7;
      if (n == 1 && wt == kVarint) {  // dtype
        if (!c.ReadVarint(&v)) return malformed("truncated dtype");
        view.dtype_ = static_cast<moe::v1::DType>(v);
      } else if (n == 2 && wt == kLen) {  // shape, packed
        if (!c.ReadVarint(&v)) return malformed("truncated shape");
        const int64_t shape_end = c.offset() + static_cast<int64_t>(v);
        while (c.offset() < shape_end) {
          uint64_t d;
          if (!c.ReadVarint(&d)) return malformed("truncated shape");
          view.shape_.push_back(static_cast<int64_t>(d));
        }
      } else if (n == 2 && wt == kVarint) {  // shape, unpacked
        if (!c.ReadVarint(&v)) return malformed("truncated shape");
        view.shape_.push_back(static_cast<int64_t>(v));
      } else if (n == 3 && wt == kLen) {  // data
        if (!c.ReadVarint(&data_bytes) ||
            data_bytes > static_cast<uint64_t>(end - c.offset())) {
          return malformed("truncated data");
        }
        view.data_begin_ = c.offset();
        has_data = true;
        c.Skip(data_bytes);
      } else if (!SkipField(c, wt)) {
        return malformed("bad tensor field");
      }
    }
    if (c.offset() != end) return malformed("tensor length");
  }
  if (!found)
    return absl::InvalidArgumentError(absl::StrCat(field, ": missing"));
  view.element_size_ = ElementSize(view.dtype_);
  if (view.element_size_ == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": dtype ", static_cast<int>(view.dtype_),
                     " is not one of FLOAT32, BFLOAT16, FLOAT16"));
  }
  int64_t numel = 1;
  for (int64_t d : view.shape_) {
    if (d < 0 || (d > 0 && numel > (int64_t{1} << 40) / d)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": bad shape ", common::ShapeToString(view.shape_)));
    }
    numel *= d;
  }
  const uint64_t expected = static_cast<uint64_t>(numel * view.element_size_);
  if ((has_data ? data_bytes : 0) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": data is ", has_data ? data_bytes : 0, " bytes but shape ",
        common::ShapeToString(view.shape_), " needs ", expected));
  }
  return view;
}

size_t WireTensorView::SliceAt(int64_t at) const {
  return static_cast<size_t>(
      std::upper_bound(starts_.begin(), starts_.end(), at) - starts_.begin() -
      1);
}

const void* WireTensorView::Contiguous(int64_t offset, int64_t n) const {
  const int64_t at = data_begin_ + offset;
  if (slices_.empty()) return nullptr;
  const size_t i = SliceAt(at);
  const int64_t in_slice = at - starts_[i];
  if (in_slice + n > static_cast<int64_t>(slices_[i].size())) return nullptr;
  return slices_[i].begin() + in_slice;
}

void WireTensorView::CopyData(int64_t offset, int64_t n, void* dst) const {
  int64_t at = data_begin_ + offset;
  auto* out = static_cast<uint8_t*>(dst);
  size_t i = SliceAt(at);
  while (n > 0 && i < slices_.size()) {
    const int64_t in_slice = at - starts_[i];
    const int64_t step = std::min<int64_t>(
        n, static_cast<int64_t>(slices_[i].size()) - in_slice);
    std::memcpy(out, slices_[i].begin() + in_slice, static_cast<size_t>(step));
    out += step;
    at += step;
    n -= step;
    ++i;
  }
}

}  // namespace moe::proto
