#include "experts/service/expert_metrics.h"

#include "absl/strings/str_cat.h"
#include "common/metrics_buckets.h"

namespace moe::experts {

ExpertMetrics::ExpertMetrics(prometheus::Registry& registry,
                             const common::ModelSpec& spec,
                             const common::ExpertSet& hosted)
    : spec_(spec),
      batch_(prometheus::BuildHistogram()
                 .Name("moe_expert_batch_tokens")
                 .Help("Token rows per RunExperts call.")
                 .Register(registry)
                 .Add({},
                      prometheus::Histogram::BucketBoundaries{
                          1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
                          16384, 65536})),
      device_memory_(prometheus::BuildGauge()
                         .Name("moe_expert_device_memory_bytes")
                         .Help("Device memory the GPU experts hold (weights "
                               "and workspaces); 0 on the CPU.")
                         .Register(registry)
                         .Add({})),
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
  auto& call = prometheus::BuildHistogram()
                   .Name("moe_expert_call_duration_seconds")
                   .Help(
                       "Per RunExperts call: compute time (on a GPU, "
                       "kernels and GEMMs) and host-device copy time.")
                   .Register(registry);
  call_compute_ =
      &call.Add({{"stage", "compute"}}, common::LatencyBucketsSeconds());
  call_copy_ = &call.Add({{"stage", "copy"}}, common::LatencyBucketsSeconds());
  auto& stages = prometheus::BuildCounter()
                     .Name("moe_expert_stage_seconds_total")
                     .Help(
                         "Where RunExperts calls spend their time: parse, "
                         "copy_in (host to device), compute, copy_out "
                         "(device to host), serialize.")
                     .Register(registry);
  const char* const names[5] = {"parse", "copy_in", "compute", "copy_out",
                                "serialize"};
  for (int i = 0; i < 5; ++i) stage_[i] = &stages.Add({{"stage", names[i]}});
  auto& tokens = prometheus::BuildCounter()
                     .Name("moe_expert_tokens_total")
                     .Help("Token rows each expert processed.")
                     .Register(registry);
  auto& seconds = prometheus::BuildHistogram()
                      .Name("moe_expert_forward_duration_seconds")
                      .Help("Compute time of one expert on one call's rows.")
                      .Register(registry);
  tokens_family_ = &tokens;
  seconds_family_ = &seconds;
  Host(hosted);
  generation_ = &prometheus::BuildGauge()
                     .Name("moe_expert_placement_generation")
                     .Help(
                         "Generation of the last placement change "
                         "(SetExperts); 0 for the experts started with.")
                     .Register(registry)
                     .Add({});
  weight_bytes_ = &prometheus::BuildGauge()
                       .Name("moe_expert_weight_bytes")
                       .Help("Bytes of expert weights this worker holds.")
                       .Register(registry)
                       .Add({});
  inline_ = &prometheus::BuildCounter()
                 .Name("moe_expert_inline_calls_total")
                 .Help(
                     "RunExperts calls that ran on the gRPC thread that "
                     "received them (at most --inline_max_request_kib, "
                     "arriving while the compute threads were idle).")
                 .Register(registry)
                 .Add({});
  auto& passes = prometheus::BuildCounter()
                     .Name("moe_expert_gpu_passes_total")
                     .Help(
                         "Passes of GPU calls by the path they ran on: "
                         "small_rows (decode-sized: at most --gpu_small_rows "
                         "rows per expert, moe-serve's kernels) or gemm "
                         "(cuBLAS); 0 on CPU workers.")
                     .Register(registry);
  small_rows_passes_ = &passes.Add({{"path", "small_rows"}});
  gemm_passes_ = &passes.Add({{"path", "gemm"}});
}

void ExpertMetrics::Host(const common::ExpertSet& hosted) {
  absl::MutexLock lock(&mu_);
  for (const common::ExpertKey& key : hosted.keys()) {
    if (experts_.count(key) != 0) continue;
    const std::map<std::string, std::string> labels = {
        {"layer", spec_.layers[key.layer].name},
        {"expert", absl::StrCat(key.expert)}};
    experts_[key] = {
        &tokens_family_->Add(labels),
        &seconds_family_->Add(labels, common::LatencyBucketsSeconds())};
  }
}

void ExpertMetrics::SetPlacement(int64_t generation, int64_t weight_bytes) {
  generation_->Set(static_cast<double>(generation));
  weight_bytes_->Set(static_cast<double>(weight_bytes));
}

void ExpertMetrics::RecordBatch(int64_t tokens) {
  batch_.Observe(static_cast<double>(tokens));
}

void ExpertMetrics::RecordCall(const CallStages& s, bool gpu) {
  call_compute_->Observe(s.compute);
  if (gpu) call_copy_->Observe(s.copy_in + s.copy_out);
  const double seconds[5] = {s.parse, s.copy_in, s.compute, s.copy_out,
                             s.serialize};
  for (int i = 0; i < 5; ++i) stage_[i]->Increment(seconds[i]);
}

void ExpertMetrics::RecordGpuPasses(int64_t small_rows, int64_t gemm) {
  if (small_rows > 0) {
    small_rows_passes_->Increment(static_cast<double>(small_rows));
  }
  if (gemm > 0) gemm_passes_->Increment(static_cast<double>(gemm));
}

void ExpertMetrics::SetDeviceMemory(int64_t bytes) {
  device_memory_.Set(static_cast<double>(bytes));
}

void ExpertMetrics::RecordSegment(common::ExpertKey key, int64_t tokens,
                                  double seconds) {
  PerExpert series;
  {
    absl::MutexLock lock(&mu_);
    auto it = experts_.find(key);
    if (it == experts_.end()) return;
    series = it->second;
  }
  series.tokens->Increment(static_cast<double>(tokens));
  series.seconds->Observe(seconds);
}

void ExpertMetrics::AddInflight(int delta) { inflight_.Increment(delta); }

void ExpertMetrics::SetReady(bool ready) { ready_.Set(ready ? 1 : 0); }

}  // namespace moe::experts
