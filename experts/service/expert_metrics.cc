#include "experts/service/expert_metrics.h"

#include "absl/strings/str_cat.h"
#include "common/metrics_buckets.h"

namespace moe::experts {

ExpertMetrics::ExpertMetrics(prometheus::Registry& registry,
                             const common::ModelSpec& spec,
                             const std::vector<common::ExpertKey>& hosted)
    : batch_(prometheus::BuildHistogram()
                 .Name("moe_expert_batch_tokens")
                 .Help("Token rows per RunExperts call.")
                 .Register(registry)
                 .Add({},
                      prometheus::Histogram::BucketBoundaries{
                          1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
                          16384, 65536})),
      inflight_(prometheus::BuildGauge()
                    .Name("moe_expert_inflight_requests")
                    .Help("RunExperts calls queued or running.")
                    .Register(registry)
                    .Add({})),
      ready_(prometheus::BuildGauge()
                 .Name("moe_expert_ready")
                 .Help("1 once the shard's weights are loaded and serving.")
                 .Register(registry)
                 .Add({})) {
  auto& tokens = prometheus::BuildCounter()
                     .Name("moe_expert_tokens_total")
                     .Help("Token rows each expert processed.")
                     .Register(registry);
  auto& seconds = prometheus::BuildHistogram()
                      .Name("moe_expert_forward_duration_seconds")
                      .Help("Compute time of one expert on one call's rows.")
                      .Register(registry);
  for (const common::ExpertKey& key : hosted) {
    const std::map<std::string, std::string> labels = {
        {"layer", spec.layers[key.layer].name},
        {"expert", absl::StrCat(key.expert)}};
    experts_[key] = {&tokens.Add(labels),
                     &seconds.Add(labels, common::LatencyBucketsSeconds())};
  }
}

void ExpertMetrics::RecordBatch(int64_t tokens) {
  batch_.Observe(static_cast<double>(tokens));
}

void ExpertMetrics::RecordSegment(common::ExpertKey key, int64_t tokens,
                                  double seconds) {
  auto it = experts_.find(key);
  if (it == experts_.end()) return;
  it->second.tokens->Increment(static_cast<double>(tokens));
  it->second.seconds->Observe(seconds);
}

void ExpertMetrics::AddInflight(int delta) { inflight_.Increment(delta); }

void ExpertMetrics::SetReady(bool ready) { ready_.Set(ready ? 1 : 0); }

}  // namespace moe::experts
