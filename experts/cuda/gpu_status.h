// The GPU backend's error vocabulary. The GPU core (this folder) is plain
// C++ on the CUDA runtime and cuBLAS, with no abseil, so that moe-gpu-check
// builds on a machine that has only nvcc and CMake; CudaExpertShard turns
// a Status into an absl::Status with the same code at the boundary.
#pragma once

#include <string>
#include <utility>

namespace moe::experts::gpu {

enum class Code {
  kOk,
  kInvalidArgument,     // a call or a configuration that cannot work
  kResourceExhausted,   // device or pinned memory does not fit
  kFailedPrecondition,  // no CUDA device, or not the one asked for
  kInternal,            // the CUDA runtime or cuBLAS failed
};

class Status {
 public:
  Status() = default;
  Status(Code code, std::string message)
      : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

#define MOE_GPU_RETURN_IF_ERROR(expr)         \
  do {                                        \
    ::moe::experts::gpu::Status _st = (expr); \
    if (!_st.ok()) return _st;                \
  } while (0)

}  // namespace moe::experts::gpu
