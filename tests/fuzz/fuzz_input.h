// Helpers the fuzz targets share: splitting the fuzzer's bytes into gRPC
// slices (the readers must not care where a message is cut) and taking
// small parameters off the front.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe::fuzz {

// Consumes bytes from the front of the input.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  // One byte (0 when none are left).
  uint8_t Byte() {
    if (size_ == 0) return 0;
    --size_;
    return *data_++;
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_;
  size_t size_;
};

// The rest of `in` as a ByteBuffer cut into slices every `piece` bytes
// (piece 0: one slice).
inline grpc::ByteBuffer Sliced(const Input& in, size_t piece) {
  std::vector<grpc::Slice> slices;
  const size_t step = piece == 0 ? in.size() : piece;
  for (size_t at = 0; at < in.size(); at += step) {
    const size_t n = std::min(step, in.size() - at);
    slices.emplace_back(in.data() + at, n);
  }
  if (slices.empty()) slices.emplace_back();
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// Keeps a computed value alive, so that the reads behind it happen.
template <typename T>
void Keep(T value) {
  asm volatile("" : : "r"(value) : "memory");
}

}  // namespace moe::fuzz
