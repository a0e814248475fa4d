// The expert-compute flags moe-expert and moe-run share:
//   --compute_dtype          float32 (default, docs/numerics.md parity) or
//                            bfloat16
//   --compute_threads_bf16   LibTorch threads for the bfloat16 GEMMs
#pragma once

#include "absl/status/statusor.h"
#include "experts/cpu_expert_shard.h"

namespace moe::server {

// The CPU shard's options from the flags; InvalidArgument naming the flag
// for a dtype other than float32 or bfloat16.
absl::StatusOr<experts::CpuShardOptions> CpuShardOptionsFromFlags();

}  // namespace moe::server
