// Device: where a shard's experts run. The one type for that idea, from the
// --device flag to GetShardInfo ("cpu", "cuda:0" on the wire).
#pragma once

#include <string>

namespace moe::experts {

struct Device {
  // kCpu: LibTorch's CPU experts (moe-expert); kHost: the plain C++
  // reference experts (moe-expert-gpu without a GPU); kCuda: a GPU.
  enum class Kind { kCpu, kHost, kCuda };
  Kind kind = Kind::kCpu;
  int ordinal = 0;  // kCuda: the CUDA device index

  static Device Cpu() { return {Kind::kCpu, 0}; }
  static Device Host() { return {Kind::kHost, 0}; }
  static Device Cuda(int ordinal) { return {Kind::kCuda, ordinal}; }

  // Inputs and outputs cross to and from device memory.
  bool is_gpu() const { return kind == Kind::kCuda; }
  // "cpu", "host", "cuda:0".
  std::string ToString() const {
    switch (kind) {
      case Kind::kCpu:
        return "cpu";
      case Kind::kHost:
        return "host";
      case Kind::kCuda:
        break;
    }
    return "cuda:" + std::to_string(ordinal);
  }
  friend bool operator==(const Device& a, const Device& b) {
    return a.kind == b.kind &&
           (a.kind != Kind::kCuda || a.ordinal == b.ordinal);
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

}  // namespace moe::experts
