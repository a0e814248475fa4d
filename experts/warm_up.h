// WarmUpShard: runs a shard on synthetic rows before it takes calls, so
// that the first real calls do not pay what only a first call pays: the
// GEMM library's thread start-up, first-touch page faults of the scratch and
// output buffers (kept for reuse afterwards, common/allocator.h), and on a
// GPU the cuBLAS heuristics. Without it the first forwards of
// [4, 1024, 512] through moe-up took 1.4-2x the steady time
// (BENCHMARKS.md, "warm-up").
//
// Example:
//   MOE_ASSIGN_OR_RETURN(WarmUpReport r, WarmUpShard(*shard, 131072));
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "experts/expert_shard.h"

namespace moe::experts {

struct WarmUpReport {
  int calls = 0;
  int64_t rows = 0;  // over all calls
  absl::Duration elapsed;
};

// Two calls over every expert of the shard's first layer: kWarmUpSmallRows
// rows per expert (the few-rows path), then up to kWarmUpLargeRows per
// expert (the GEMM path), at most `max_rows` rows per call. The outputs are
// discarded. Errors are the shard's (a warm-up that fails means the shard
// cannot serve).
inline constexpr int64_t kWarmUpSmallRows = 4;
inline constexpr int64_t kWarmUpLargeRows = 512;
absl::StatusOr<WarmUpReport> WarmUpShard(const ExpertShard& shard,
                                         int64_t max_rows);

}  // namespace moe::experts
