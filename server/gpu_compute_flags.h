// The shards of moe-expert-gpu, the LibTorch-free worker:
//   --compute_dtype   float32 (default) or bfloat16 (a CUDA device only)
// with the CUDA backend (--device=cuda[:N]) or the plain C++ reference
// experts (--device=host: exact and slow, for tests and machines without a
// GPU); auto picks cuda:0 when the backend is built and a device is
// visible, else host with a warning that says it is slow.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "common/expert_set.h"
#include "experts/expert_shard.h"
#include "server/shard_request.h"

namespace moe::server {

// A ShardFactory. FailedPrecondition for cuda without the backend or
// without a visible device; ResourceExhausted when the experts do not fit
// on it; InvalidArgument for --device=cpu (moe-expert's) or bfloat16 on the
// host.
absl::StatusOr<std::unique_ptr<experts::ExpertShard>> MakeGpuWorkerShard(
    const common::Checkpoint& checkpoint, const common::ExpertSet& experts,
    const ShardRequest& request);

}  // namespace moe::server
