// The expert worker's Prometheus metrics:
//   moe_expert_tokens_total{layer,expert}
//   moe_expert_forward_duration_seconds{layer,expert}  (histogram, per segment)
//   moe_expert_batch_tokens                            (histogram, per call)
//   moe_expert_inflight_requests, moe_expert_ready
// Series exist for every hosted expert from the start; their number is
// (hosted experts) x 18 (a counter and a 15-bucket histogram), see
// docs/operations.md, "Cardinality".
//
// Thread-safe.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <map>
#include <vector>

#include "common/expert_segment.h"
#include "common/model_spec.h"

namespace moe::experts {

class ExpertMetrics {
 public:
  // `registry` must outlive this object.
  ExpertMetrics(prometheus::Registry& registry, const common::ModelSpec& spec,
                const std::vector<common::ExpertKey>& hosted);

  void RecordBatch(int64_t tokens);
  void RecordSegment(common::ExpertKey key, int64_t tokens, double seconds);
  void AddInflight(int delta);
  void SetReady(bool ready);

 private:
  struct PerExpert {
    prometheus::Counter* tokens;
    prometheus::Histogram* seconds;
  };
  std::map<common::ExpertKey, PerExpert> experts_;
  prometheus::Histogram& batch_;
  prometheus::Gauge& inflight_;
  prometheus::Gauge& ready_;
};

}  // namespace moe::experts
