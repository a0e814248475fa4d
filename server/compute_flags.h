// The expert-compute flags moe-expert and moe-run share:
//   --compute_dtype          float32 (default, docs/numerics.md parity) or
//                            bfloat16
//   --compute_threads_bf16   LibTorch threads for the bfloat16 GEMMs
#pragma once

#include <map>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "experts/cpu_expert_shard.h"
#include "experts/expert_shard.h"

namespace moe::server {

// A worker's --device: auto, cpu, cuda or cuda:N.
struct DeviceChoice {
  enum class Kind { kAuto, kCpu, kCuda };
  Kind kind = Kind::kAuto;
  int ordinal = 0;  // kCuda
};

// InvalidArgument naming the flag for anything else.
absl::StatusOr<DeviceChoice> ParseDevice(absl::string_view flag);

// Whether this binary has the CUDA backend (MOE_CUDA found nvcc).
bool CudaBuilt();

// The shard for `device` (a --device value) with the compute flags: the
// CPU shard, or with the CUDA backend the GPU shard (calls of at most
// max_rows rows, gpu_streams at once). auto picks cuda:0 when the backend
// is built and a device is visible, else the CPU, and logs which and why.
// FailedPrecondition for cuda without the backend or without a visible
// device; ResourceExhausted when the experts do not fit on the device.
absl::StatusOr<std::unique_ptr<experts::ExpertShard>> MakeExpertShard(
    absl::string_view device,
    std::map<common::ExpertKey, common::ExpertWeights> weights,
    int64_t max_rows, int gpu_streams);

// The CPU shard's options from the flags; InvalidArgument naming the flag
// for a dtype other than float32 or bfloat16.
absl::StatusOr<experts::CpuShardOptions> CpuShardOptionsFromFlags();

}  // namespace moe::server
