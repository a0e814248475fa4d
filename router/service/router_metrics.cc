#include "router/service/router_metrics.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/layer_config.h"
#include "common/metrics_buckets.h"

namespace moe::router {
namespace {

constexpr const char* kChoices[2] = {"first", "second"};
constexpr WorkerState kStates[] = {
    WorkerState::kConnecting,    WorkerState::kUp,
    WorkerState::kUnreachable,   WorkerState::kWrongModel,
    WorkerState::kNothingUseful, WorkerState::kDown};

prometheus::Histogram::BucketBoundaries UtilizationBuckets() {
  return {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
}

}  // namespace

// The series of one layer and its balancedness window.
struct RouterMetrics::Layer {
  int64_t experts = 0;
  std::vector<prometheus::Counter*> assignments[2];
  std::vector<prometheus::Counter*> dropped[2][3];     // [choice][reason][e]
  std::vector<prometheus::Counter*> outer_dropped[2];  // [choice][o]
  prometheus::Counter* tokens;
  prometheus::Counter* skipped;
  prometheus::Counter* dropped_tokens;
  prometheus::Counter* degraded;
  prometheus::Gauge* capacity;
  prometheus::Histogram* utilization;
  prometheus::Gauge* balancedness;
  prometheus::Gauge* balance_loss;
  prometheus::Gauge* z_loss;

  absl::Mutex mu;
  std::deque<std::pair<absl::Time, std::vector<int64_t>>> recent
      ABSL_GUARDED_BY(mu);
  std::vector<int64_t> recent_sum ABSL_GUARDED_BY(mu);

  void AddToWindow(const std::vector<int64_t>& per_expert,
                   absl::Duration window) {
    absl::MutexLock lock(&mu);
    const absl::Time now = absl::Now();
    recent.emplace_back(now, per_expert);
    for (int64_t e = 0; e < experts; ++e) recent_sum[e] += per_expert[e];
    while (!recent.empty() && now - recent.front().first > window) {
      for (int64_t e = 0; e < experts; ++e) {
        recent_sum[e] -= recent.front().second[e];
      }
      recent.pop_front();
    }
    int64_t max = 0, sum = 0;
    for (int64_t v : recent_sum) {
      max = std::max(max, v);
      sum += v;
    }
    balancedness->Set(max > 0 ? (static_cast<double>(sum) / experts) / max
                              : 1.0);
  }
};

RouterMetrics::RouterMetrics(prometheus::Registry& registry,
                             const common::ModelSpec& spec,
                             const std::vector<std::string>& workers,
                             absl::Duration balance_window)
    : requests_(prometheus::BuildCounter()
                    .Name("moe_router_requests_total")
                    .Help("Forward requests, by final gRPC code.")
                    .Register(registry)),
      request_seconds_(prometheus::BuildHistogram()
                           .Name("moe_router_request_duration_seconds")
                           .Help("Forward latency at the router.")
                           .Register(registry)
                           .Add({}, common::LatencyBucketsSeconds())),
      inflight_(prometheus::BuildGauge()
                    .Name("moe_router_inflight_requests")
                    .Help("Forward requests queued or running.")
                    .Register(registry)
                    .Add({})),
      rejected_(prometheus::BuildCounter()
                    .Name("moe_router_rejected_requests_total")
                    .Help("Requests refused before routing, by reason.")
                    .Register(registry)),
      stages_(prometheus::BuildCounter()
                  .Name("moe_router_stage_seconds_total")
                  .Help("Router wall time per forward stage: pre, gate, plan "
                        "(gather), encode, batch_wait, rpc_wait, combine.")
                  .Register(registry)),
      forward_cpu_(
          prometheus::BuildCounter()
              .Name("moe_router_forward_cpu_seconds_total")
              .Help("CPU time of the threads running forwards, while they ran "
                    "them: the stages' work without waiting or preemption "
                    "(gRPC's own threads not included).")
              .Register(registry)
              .Add({})),
      batch_forwards_(
          prometheus::BuildHistogram()
              .Name("moe_router_worker_batch_forwards")
              .Help("Forwards that shared one RunExperts call (dynamic "
                    "batching; always 1 when it is off).")
              .Register(registry)
              .Add({},
                   prometheus::Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 12,
                                                           16, 24, 32, 64})),
      batch_rows_(prometheus::BuildHistogram()
                      .Name("moe_router_worker_batch_rows")
                      .Help("Token rows in one RunExperts call.")
                      .Register(registry)
                      .Add({},
                           prometheus::Histogram::BucketBoundaries{
                               16, 64, 256, 1024, 4096, 16384, 65536})),
      window_(balance_window) {
  auto& assignments = prometheus::BuildCounter()
                          .Name("moe_router_expert_assignments_total")
                          .Help(
                              "Expert assignments kept and computed, by "
                              "layer, expert and choice.")
                          .Register(registry);
  auto& dropped = prometheus::BuildCounter()
                      .Name("moe_router_dropped_assignments_total")
                      .Help(
                          "Expert assignments requested but not computed, "
                          "by reason: capacity (over the expert's "
                          "capacity), expert_unavailable (its workers "
                          "failed), deadline.")
                      .Register(registry);
  auto& tokens = prometheus::BuildCounter()
                     .Name("moe_router_tokens_total")
                     .Help("Tokens routed (batch x sequence of every forward).")
                     .Register(registry);
  auto& skipped = prometheus::BuildCounter()
                      .Name("moe_router_second_choice_skipped_total")
                      .Help(
                          "Second choices the policy did not request (not "
                          "drops).")
                      .Register(registry);
  auto& dropped_tokens = prometheus::BuildCounter()
                             .Name("moe_router_dropped_tokens_total")
                             .Help(
                                 "Tokens that lost every requested choice "
                                 "(MoE output zero).")
                             .Register(registry);
  auto& degraded = prometheus::BuildCounter()
                       .Name("moe_router_degraded_responses_total")
                       .Help(
                           "Answers missing some experts' outputs (drop "
                           "policy).")
                       .Register(registry);
  auto& capacity = prometheus::BuildGauge()
                       .Name("moe_router_expert_capacity_tokens")
                       .Help(
                           "Expert capacity C (slots per expert per batch "
                           "row) of the layer's last forward.")
                       .Register(registry);
  auto& utilization = prometheus::BuildHistogram()
                          .Name("moe_router_capacity_utilization")
                          .Help(
                              "Per forward: kept assignments / (experts x "
                              "capacity x batch rows).")
                          .Register(registry);
  auto& balancedness = prometheus::BuildGauge()
                           .Name("moe_router_load_balancedness")
                           .Help(
                               "Mean over max of kept assignments per "
                               "expert over the recent window (1 = "
                               "perfectly even).")
                           .Register(registry);
  auto& balance_loss = prometheus::BuildGauge()
                           .Name("moe_router_balance_loss")
                           .Help(
                               "Raw load-balancing loss of the layer's "
                               "last forward.")
                           .Register(registry);
  auto& z_loss = prometheus::BuildGauge()
                     .Name("moe_router_router_z_loss")
                     .Help("Raw router z-loss of the layer's last forward.")
                     .Register(registry);
  for (const common::LayerSpec& spec_layer : spec.layers) {
    auto layer = std::make_unique<Layer>();
    const common::LayerConfig& c = spec_layer.config;
    const std::string name = spec_layer.name;
    layer->experts = c.total_experts();
    layer->recent_sum.assign(layer->experts, 0);
    for (int k = 0; k < 2; ++k) {
      for (int64_t e = 0; e < layer->experts; ++e) {
        const std::string expert = absl::StrCat(e);
        layer->assignments[k].push_back(&assignments.Add(
            {{"layer", name}, {"expert", expert}, {"choice", kChoices[k]}}));
        for (DropReason r : kAllDropReasons) {
          layer->dropped[k][static_cast<int>(r)].push_back(
              &dropped.Add({{"layer", name},
                            {"expert", expert},
                            {"choice", kChoices[k]},
                            {"reason", DropReasonLabel(r)}}));
        }
      }
      if (c.hierarchical()) {
        for (int64_t o = 0; o < c.num_experts; ++o) {
          layer->outer_dropped[k].push_back(
              &dropped.Add({{"layer", name},
                            {"expert", absl::StrCat("outer_", o)},
                            {"choice", kChoices[k]},
                            {"reason", "capacity"}}));
        }
      }
    }
    const std::map<std::string, std::string> labels = {{"layer", name}};
    layer->tokens = &tokens.Add(labels);
    layer->skipped = &skipped.Add(labels);
    layer->dropped_tokens = &dropped_tokens.Add(labels);
    layer->degraded = &degraded.Add(labels);
    layer->capacity = &capacity.Add(labels);
    layer->utilization = &utilization.Add(labels, UtilizationBuckets());
    layer->balancedness = &balancedness.Add(labels);
    layer->balancedness->Set(1.0);
    layer->balance_loss = &balance_loss.Add(labels);
    layer->z_loss = &z_loss.Add(labels);
    layers_.push_back(std::move(layer));
  }
  auto& rpc = prometheus::BuildHistogram()
                  .Name("moe_router_worker_rpc_duration_seconds")
                  .Help("RunExperts call latency, by worker.")
                  .Register(registry);
  auto& up = prometheus::BuildGauge()
                 .Name("moe_router_worker_up")
                 .Help(
                     "1 when the worker answers its probe and serves this "
                     "model.")
                 .Register(registry);
  auto& state = prometheus::BuildGauge()
                    .Name("moe_router_worker_state")
                    .Help(
                        "1 for the worker's current state: connecting, up, "
                        "unreachable, wrong_model (another fingerprint), "
                        "nothing_useful, down.")
                    .Register(registry);
  for (const std::string& w : workers) {
    worker_rpc_.push_back(
        &rpc.Add({{"worker", w}}, common::LatencyBucketsSeconds()));
    worker_up_.push_back(&up.Add({{"worker", w}}));
    std::vector<prometheus::Gauge*> states;
    for (WorkerState s : kStates) {
      states.push_back(
          &state.Add({{"worker", w}, {"state", WorkerStateName(s)}}));
    }
    states[0]->Set(1);  // connecting
    worker_state_.push_back(std::move(states));
  }
  for (const char* stage :
       {"pre", "gate", "plan", "encode", "batch_wait", "rpc_wait", "combine"}) {
    stages_.Add({{"stage", stage}});
  }
  for (const char* reason : {"queue_full", "too_many_tokens", "overloaded",
                             "deadline", "unauthenticated", "not_ready"}) {
    rejected_.Add({{"reason", reason}});
  }
  for (const char* code :
       {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED",
        "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED"}) {
    requests_.Add({{"code", code}});
  }
}

RouterMetrics::~RouterMetrics() = default;

void RouterMetrics::RecordForward(int layer_index, const ForwardResult& r) {
  Layer& layer = *layers_[layer_index];
  const int64_t batch = r.y.size(0), seq = r.y.size(1);
  layer.tokens->Increment(static_cast<double>(batch * seq));
  std::map<int64_t, DropReason> lost;
  for (const ExpertLoss& loss : r.lost) lost[loss.key.expert] = loss.reason;
  const RoutingResult& level = r.inner ? r.inner->routing : r.routing;
  std::vector<int64_t> per_expert(layer.experts, 0);
  const int64_t tokens = level.groups * level.group_size;
  int64_t lost_tokens = 0;
  for (int64_t tok = 0; tok < tokens; ++tok) {
    bool requested = false, computed = false;
    if (r.inner && r.inner->slot_row[tok] < 0) continue;
    for (int k = 0; k < 2; ++k) {
      const int64_t i = tok * 2 + k;
      if (!level.requested[i]) continue;
      requested = true;
      int64_t e = level.expert[i];
      if (r.inner) {
        const int64_t outer = (tok / level.group_size) / batch;
        e = common::FlatExpertId(outer, e, level.num_experts);
      }
      if (!level.kept[i]) {
        layer.dropped[k][static_cast<int>(DropReason::kCapacity)][e]
            ->Increment();
        continue;
      }
      auto failed = lost.find(e);
      if (failed != lost.end()) {
        layer.dropped[k][static_cast<int>(failed->second)][e]->Increment();
        continue;
      }
      layer.assignments[k][e]->Increment();
      ++per_expert[e];
      computed = true;
    }
    if (requested && !computed && !r.inner) ++lost_tokens;
  }
  if (r.inner) {
    // Outer-level capacity drops, and tokens lost there.
    const RoutingResult& outer = r.routing;
    for (int64_t tok = 0; tok < outer.groups * outer.group_size; ++tok) {
      for (int k = 0; k < 2; ++k) {
        const int64_t i = tok * 2 + k;
        if (!outer.requested[i] || outer.kept[i]) continue;
        layer.outer_dropped[k][outer.expert[i]]->Increment();
      }
    }
    lost_tokens = outer.counts.dropped_tokens;
  }
  layer.dropped_tokens->Increment(static_cast<double>(lost_tokens));
  layer.skipped->Increment(static_cast<double>(
      r.routing.counts.second_skipped +
      (r.inner ? r.inner->routing.counts.second_skipped : 0)));
  if (!r.lost.empty()) layer.degraded->Increment();
  layer.capacity->Set(static_cast<double>(r.routing.capacity));
  const double slots = static_cast<double>(
      r.routing.num_experts * r.routing.capacity * r.routing.groups);
  const RoutingCounts& c = r.routing.counts;
  layer.utilization->Observe(slots > 0 ? (c.kept[0] + c.kept[1]) / slots : 0.0);
  layer.balance_loss->Set(r.losses.balance_loss);
  layer.z_loss->Set(r.losses.router_z_loss);
  layer.AddToWindow(per_expert, window_);
}

void RouterMetrics::RecordRequest(absl::StatusCode code,
                                  absl::Duration elapsed) {
  requests_.Add({{"code", absl::StatusCodeToString(code)}}).Increment();
  request_seconds_.Observe(absl::ToDoubleSeconds(elapsed));
}

void RouterMetrics::RecordStage(const char* stage, absl::Duration elapsed) {
  stages_.Add({{"stage", stage}}).Increment(absl::ToDoubleSeconds(elapsed));
}

void RouterMetrics::RecordForwardCpu(absl::Duration cpu) {
  forward_cpu_.Increment(absl::ToDoubleSeconds(cpu));
}

void RouterMetrics::RecordStages(const ForwardTimings& t) {
  const std::pair<const char*, absl::Duration> stages[] = {
      {"pre", t.pre},           {"gate", t.gate},
      {"plan", t.plan},         {"batch_wait", t.batch_wait},
      {"rpc_wait", t.rpc_wait}, {"combine", t.combine}};
  for (const auto& [stage, d] : stages) RecordStage(stage, d);
}

void RouterMetrics::RecordRejected(const std::string& reason) {
  rejected_.Add({{"reason", reason}}).Increment();
}

void RouterMetrics::AddInflight(int delta) { inflight_.Increment(delta); }

void RouterMetrics::RecordWorkerRpc(int worker, absl::Duration elapsed,
                                    int forwards, int64_t rows) {
  if (worker >= 0 && worker < static_cast<int>(worker_rpc_.size())) {
    worker_rpc_[worker]->Observe(absl::ToDoubleSeconds(elapsed));
  }
  batch_forwards_.Observe(forwards);
  batch_rows_.Observe(static_cast<double>(rows));
}

void RouterMetrics::SetWorkerState(int worker, WorkerState state) {
  if (worker < 0 || worker >= static_cast<int>(worker_up_.size())) return;
  worker_up_[worker]->Set(state == WorkerState::kUp ? 1 : 0);
  for (size_t s = 0; s < std::size(kStates); ++s) {
    worker_state_[worker][s]->Set(kStates[s] == state ? 1 : 0);
  }
}

}  // namespace moe::router
