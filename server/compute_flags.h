// The expert-compute flags and shards of the LibTorch binaries (moe-expert,
// moe-run):
//   --compute_dtype          float32 (default, docs/numerics.md parity) or
//                            bfloat16
//   --compute_threads_bf16   LibTorch threads for the bfloat16 GEMMs
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "common/expert_set.h"
#include "experts/cpu_expert_shard.h"
#include "experts/expert_shard.h"
#include "server/shard_request.h"

namespace moe::server {

// Whether this binary has the CUDA backend (MOE_CUDA found nvcc).
bool CudaBuilt();

// moe-expert's shards (a ShardFactory): the LibTorch CPU shard, or with the
// CUDA backend the GPU shard (calls of at most request.max_rows rows,
// request.gpu_streams at once). auto picks cuda:0 when the backend is built
// and a device is visible, else the CPU, and logs which and why.
// FailedPrecondition for cuda without the backend or without a visible
// device; ResourceExhausted when the experts do not fit on the device;
// InvalidArgument for --device=host (moe-expert-gpu's).
absl::StatusOr<std::unique_ptr<experts::ExpertShard>> MakeExpertShard(
    const common::Checkpoint& checkpoint, const common::ExpertSet& experts,
    const ShardRequest& request);

// The CPU shard's options from the flags; InvalidArgument naming the flag
// for a dtype other than float32 or bfloat16.
absl::StatusOr<experts::CpuShardOptions> CpuShardOptionsFromFlags();

}  // namespace moe::server
