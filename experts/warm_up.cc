#include "experts/warm_up.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/time/clock.h"
#include "common/status_macros.h"

namespace moe::experts {

absl::StatusOr<WarmUpReport> WarmUpShard(const ExpertShard& shard,
                                         int64_t max_rows) {
  const absl::Time start = absl::Now();
  std::vector<common::ExpertKey> keys;
  for (const common::ExpertKey& key : shard.experts().keys()) {
    if (keys.empty() || key.layer == keys.front().layer) keys.push_back(key);
  }
  WarmUpReport report;
  const int64_t n = static_cast<int64_t>(keys.size());
  if (n == 0 || max_rows < 1) return report;
  std::vector<float> x, y;
  for (int64_t per_expert : {kWarmUpSmallRows, kWarmUpLargeRows}) {
    per_expert = std::max<int64_t>(1, std::min(per_expert, max_rows / n));
    const int64_t experts = std::min(n, max_rows / per_expert);
    const int64_t rows = experts * per_expert;
    // Values of the size of normalised activations; any finite input does.
    x.resize(static_cast<size_t>(rows * shard.dim()));
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = std::sin(0.37f * static_cast<float>(i % 4099));
    }
    y.assign(x.size(), 0.0f);
    std::vector<common::ExpertSegment> segments;
    for (int64_t e = 0; e < experts; ++e) {
      segments.push_back({keys[e], e * per_expert, per_expert});
    }
    MOE_RETURN_IF_ERROR(shard.Run({common::DType::kFloat32, x.data(), rows},
                                  segments, y.data()));
    ++report.calls;
    report.rows += rows;
  }
  report.elapsed = absl::Now() - start;
  return report;
}

}  // namespace moe::experts
