#include "experts/service/expert_metrics.h"

#include "absl/strings/str_cat.h"
#include "server/rpc_metrics.h"

namespace moe::experts {

ExpertMetrics::ExpertMetrics(prometheus::Registry& registry,
                             const std::vector<int64_t>& experts)
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
  for (int64_t e : experts) {
    const std::string id = absl::StrCat(e);
    tokens_[e] = &tokens.Add({{"expert", id}});
    seconds_[e] = &seconds.Add({{"expert", id}}, server::LatencyBuckets());
  }
}

void ExpertMetrics::RecordBatch(int64_t tokens) {
  batch_.Observe(static_cast<double>(tokens));
}

void ExpertMetrics::RecordSegment(int64_t expert, int64_t tokens,
                                  double seconds) {
  auto t = tokens_.find(expert);
  if (t == tokens_.end()) return;
  t->second->Increment(static_cast<double>(tokens));
  seconds_.at(expert)->Observe(seconds);
}

void ExpertMetrics::AddInflight(int delta) { inflight_.Increment(delta); }

void ExpertMetrics::SetReady(bool ready) { ready_.Set(ready ? 1 : 0); }

}  // namespace moe::experts
