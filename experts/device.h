// Device: where a shard's experts run. The one type for that idea, from the
// --device flag to GetShardInfo ("cpu", "cuda:0" on the wire).
#pragma once

#include <string>

namespace moe::experts {

struct Device {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int ordinal = 0;  // kCuda: the CUDA device index

  static Device Cpu() { return {Kind::kCpu, 0}; }
  static Device Cuda(int ordinal) { return {Kind::kCuda, ordinal}; }

  // Inputs and outputs cross to and from device memory.
  bool is_gpu() const { return kind == Kind::kCuda; }
  // "cpu", "cuda:0".
  std::string ToString() const {
    return kind == Kind::kCpu ? "cpu" : "cuda:" + std::to_string(ordinal);
  }
  friend bool operator==(const Device& a, const Device& b) {
    return a.kind == b.kind && (a.kind == Kind::kCpu || a.ordinal == b.ordinal);
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

}  // namespace moe::experts
