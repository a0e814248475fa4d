// The expert worker's Prometheus metrics (DESIGN.md section 6):
//   moe_expert_tokens_total{expert}
//   moe_expert_forward_duration_seconds{expert}   (histogram, per segment)
//   moe_expert_batch_tokens                       (histogram, per call)
//   moe_expert_inflight_requests, moe_expert_ready
// Thread-safe.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <map>
#include <vector>

namespace moe::experts {

class ExpertMetrics {
 public:
  // `registry` must outlive this object; series exist for every hosted
  // expert from the start.
  ExpertMetrics(prometheus::Registry& registry,
                const std::vector<int64_t>& experts);

  void RecordBatch(int64_t tokens);
  void RecordSegment(int64_t expert, int64_t tokens, double seconds);
  void AddInflight(int delta);
  void SetReady(bool ready);

 private:
  std::map<int64_t, prometheus::Counter*> tokens_;
  std::map<int64_t, prometheus::Histogram*> seconds_;
  prometheus::Histogram& batch_;
  prometheus::Gauge& inflight_;
  prometheus::Gauge& ready_;
};

}  // namespace moe::experts
