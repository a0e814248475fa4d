// The expert worker's Prometheus metrics:
//   moe_expert_tokens_total{layer,expert}
//   moe_expert_forward_duration_seconds{layer,expert}  (histogram, per segment)
//   moe_expert_batch_tokens                            (histogram, per call)
//   moe_expert_call_duration_seconds{stage}            (histogram, per call:
//       stage "compute" = the call's compute, on a GPU its kernels and
//       GEMMs; "copy" = its host <-> device copies, GPU workers only)
//   moe_expert_device_memory_bytes                     (GPU arena; 0 on CPU)
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
#include "common/expert_set.h"
#include "common/model_spec.h"

namespace moe::experts {

class ExpertMetrics {
 public:
  // `registry` must outlive this object.
  ExpertMetrics(prometheus::Registry& registry, const common::ModelSpec& spec,
                const common::ExpertSet& hosted);

  void RecordBatch(int64_t tokens);
  // One call's compute and (GPU) copy time.
  void RecordCall(double compute_seconds, double copy_seconds, bool gpu);
  void SetDeviceMemory(int64_t bytes);
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
  prometheus::Histogram* call_compute_;
  prometheus::Histogram* call_copy_;
  prometheus::Gauge& device_memory_;
  prometheus::Gauge& inflight_;
  prometheus::Gauge& ready_;
};

}  // namespace moe::experts
