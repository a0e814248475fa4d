#include "router/service/prometheus_router_metrics.h"

#include <algorithm>
#include <deque>
#include <map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/layer_config.h"
#include "common/metrics_buckets.h"

namespace moe::router {

const char* RouterStageLabel(RouterStage stage) {
  switch (stage) {
    case RouterStage::kPre:
      return "pre";
    case RouterStage::kGate:
      return "gate";
    case RouterStage::kPlan:
      return "plan";
    case RouterStage::kEncode:
      return "encode";
    case RouterStage::kBatchWait:
      return "batch_wait";
    case RouterStage::kRpcWait:
      return "rpc_wait";
    case RouterStage::kCombine:
      return "combine";
  }
  return "unknown";
}

const char* ProtocolLabel(Protocol protocol) {
  switch (protocol) {
    case Protocol::kMoeV1:
      return "moe.v1";
    case Protocol::kOipGrpc:
      return "oip_grpc";
    case Protocol::kOipRest:
      return "oip_rest";
  }
  return "unknown";
}

namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;
using Labels = std::map<std::string, std::string>;

constexpr const char* kChoices[2] = {"first", "second"};
constexpr WorkerState kStates[] = {
    WorkerState::kConnecting,    WorkerState::kUp,
    WorkerState::kUnreachable,   WorkerState::kWrongModel,
    WorkerState::kNothingUseful, WorkerState::kDown,
    WorkerState::kGone};
// Codes whose series exist from the start (others appear when first seen).
constexpr const char* kCodes[] = {
    "OK",          "INVALID_ARGUMENT",  "NOT_FOUND",      "RESOURCE_EXHAUSTED",
    "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED"};

Histogram::BucketBoundaries UtilizationBuckets() {
  return {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
}

Family<Counter>& CounterFamily(prometheus::Registry& r, const char* name,
                               const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}
Family<Gauge>& GaugeFamily(prometheus::Registry& r, const char* name,
                           const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}
Family<Histogram>& HistogramFamily(prometheus::Registry& r, const char* name,
                                   const char* help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r);
}

// The per-layer families, by name and help: one table.
struct LayerFamilies {
  Family<Counter>& assignments;
  Family<Counter>& dropped;
  Family<Counter>& tokens;
  Family<Counter>& skipped;
  Family<Counter>& dropped_tokens;
  Family<Counter>& degraded;
  Family<Gauge>& capacity;
  Family<Histogram>& utilization;
  Family<Gauge>& balancedness;
  Family<Gauge>& balance_loss;
  Family<Gauge>& z_loss;
};

LayerFamilies MakeLayerFamilies(prometheus::Registry& r) {
  return {
      CounterFamily(r, "moe_router_expert_assignments_total",
                    "Expert assignments kept and computed, by layer, expert "
                    "and choice."),
      CounterFamily(r, "moe_router_dropped_assignments_total",
                    "Expert assignments requested but not computed, by "
                    "reason: capacity (over the expert's capacity), "
                    "expert_unavailable (its workers failed), deadline."),
      CounterFamily(r, "moe_router_tokens_total",
                    "Tokens routed (batch x sequence of every forward)."),
      CounterFamily(r, "moe_router_second_choice_skipped_total",
                    "Second choices the policy did not request (not drops)."),
      CounterFamily(r, "moe_router_dropped_tokens_total",
                    "Tokens that lost every requested choice (MoE output "
                    "zero)."),
      CounterFamily(r, "moe_router_degraded_responses_total",
                    "Answers missing some experts' outputs (drop policy)."),
      GaugeFamily(r, "moe_router_expert_capacity_tokens",
                  "Expert capacity C (slots per expert per batch row) of the "
                  "layer's last forward."),
      HistogramFamily(r, "moe_router_capacity_utilization",
                      "Per forward: kept assignments / (experts x capacity x "
                      "batch rows)."),
      GaugeFamily(r, "moe_router_load_balancedness",
                  "Mean over max of kept assignments per expert over the "
                  "recent window (1 = perfectly even)."),
      GaugeFamily(r, "moe_router_balance_loss",
                  "Raw load-balancing loss of the layer's last forward."),
      GaugeFamily(r, "moe_router_router_z_loss",
                  "Raw router z-loss of the layer's last forward."),
  };
}

}  // namespace

// The series of one layer and its balancedness window.
struct PrometheusRouterMetrics::Layer {
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

// A worker's series.
struct PrometheusRouterMetrics::Worker {
  Histogram* rpc;
  Gauge* up;
  std::vector<Gauge*> state;  // by kStates
};

namespace {

// The series of one layer of the model.
std::unique_ptr<PrometheusRouterMetrics::Layer> MakeLayer(
    const common::LayerSpec& spec_layer, const LayerFamilies& f) {
  auto layer = std::make_unique<PrometheusRouterMetrics::Layer>();
  const common::LayerConfig& c = spec_layer.config;
  const std::string& name = spec_layer.name;
  layer->experts = c.total_experts();
  {
    absl::MutexLock lock(&layer->mu);
    layer->recent_sum.assign(layer->experts, 0);
  }
  for (int k = 0; k < 2; ++k) {
    for (int64_t e = 0; e < layer->experts; ++e) {
      const Labels expert = {{"layer", name},
                             {"expert", absl::StrCat(e)},
                             {"choice", kChoices[k]}};
      layer->assignments[k].push_back(&f.assignments.Add(expert));
      for (DropReason r : kAllDropReasons) {
        Labels with_reason = expert;
        with_reason["reason"] = DropReasonLabel(r);
        layer->dropped[k][static_cast<int>(r)].push_back(
            &f.dropped.Add(with_reason));
      }
    }
    for (int64_t o = 0; c.hierarchical() && o < c.num_experts; ++o) {
      layer->outer_dropped[k].push_back(
          &f.dropped.Add({{"layer", name},
                          {"expert", absl::StrCat("outer_", o)},
                          {"choice", kChoices[k]},
                          {"reason", DropReasonLabel(DropReason::kCapacity)}}));
    }
  }
  const Labels labels = {{"layer", name}};
  layer->tokens = &f.tokens.Add(labels);
  layer->skipped = &f.skipped.Add(labels);
  layer->dropped_tokens = &f.dropped_tokens.Add(labels);
  layer->degraded = &f.degraded.Add(labels);
  layer->capacity = &f.capacity.Add(labels);
  layer->utilization = &f.utilization.Add(labels, UtilizationBuckets());
  layer->balancedness = &f.balancedness.Add(labels);
  layer->balancedness->Set(1.0);
  layer->balance_loss = &f.balance_loss.Add(labels);
  layer->z_loss = &f.z_loss.Add(labels);
  return layer;
}

}  // namespace

PrometheusRouterMetrics::PrometheusRouterMetrics(
    prometheus::Registry& registry, const common::ModelSpec& spec,
    const std::vector<std::string>& workers, absl::Duration balance_window)
    : requests_(CounterFamily(registry, "moe_router_requests_total",
                              "Forward requests (moe.v1 Forward and the Open "
                              "Inference Protocol's infer), by protocol and "
                              "final gRPC code.")),
      request_seconds_(HistogramFamily(registry,
                                       "moe_router_request_duration_seconds",
                                       "Forward latency at the router.")
                           .Add({}, common::LatencyBucketsSeconds())),
      inflight_(GaugeFamily(registry, "moe_router_inflight_requests",
                            "Forward requests queued or running.")
                    .Add({})),
      rest_body_bytes_(
          GaugeFamily(registry, "moe_router_rest_body_bytes",
                      "Bytes of REST infer bodies held now, from before a "
                      "body is read until its answer is made (bounded by "
                      "--http_max_bytes_in_flight).")
              .Add({})),
      rest_connections_(
          GaugeFamily(registry, "moe_router_rest_connections",
                      "REST connections open now: served (holding one of the "
                      "--http_threads threads) or waiting for a thread.")),
      rest_served_(rest_connections_.Add({{"state", "served"}})),
      rest_waiting_(rest_connections_.Add({{"state", "waiting"}})),
      rest_cut_(CounterFamily(
          registry, "moe_router_rest_connections_closed_total",
          "REST connections the router closed before their request was in, "
          "by reason: slow_head (no whole head within "
          "--http_request_timeout_s after the keep-alive), slow_body (the "
          "body not in within the timeout plus 1 s per MiB received), "
          "large_head (a "
          "head past 64 KiB).")),
      rest_cut_slow_head_(rest_cut_.Add({{"reason", "slow_head"}})),
      rest_cut_slow_body_(rest_cut_.Add({{"reason", "slow_body"}})),
      rest_cut_large_head_(rest_cut_.Add({{"reason", "large_head"}})),
      forward_cpu_(
          CounterFamily(registry, "moe_router_forward_cpu_seconds_total",
                        "CPU time of the threads running forwards, while they "
                        "ran them: the stages' work without waiting or "
                        "preemption (gRPC's own threads not included).")
              .Add({})),
      inline_forwards_(
          CounterFamily(registry, "moe_router_inline_forwards_total",
                        "Forwards that ran on the gRPC thread that received "
                        "them (small, with the router idle: "
                        "--inline_max_tokens).")
              .Add({})),
      batch_forwards_(
          HistogramFamily(registry, "moe_router_worker_batch_forwards",
                          "Forwards that shared one RunExperts call (dynamic "
                          "batching; always 1 when it is off).")
              .Add({}, Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 12, 16, 24,
                                                   32, 64})),
      batch_rows_(
          HistogramFamily(registry, "moe_router_worker_batch_rows",
                          "Token rows in one RunExperts call.")
              .Add({}, Histogram::BucketBoundaries{16, 64, 256, 1024, 4096,
                                                   16384, 65536})),
      window_(balance_window) {
  const LayerFamilies layer_families = MakeLayerFamilies(registry);
  for (const common::LayerSpec& layer : spec.layers) {
    layers_.push_back(MakeLayer(layer, layer_families));
  }
  auto& rpc =
      HistogramFamily(registry, "moe_router_worker_rpc_duration_seconds",
                      "RunExperts call latency, by worker.");
  auto& up =
      GaugeFamily(registry, "moe_router_worker_up",
                  "1 when the worker answers its probe and serves this model.");
  auto& state = GaugeFamily(
      registry, "moe_router_worker_state",
      "1 for the worker's current state: connecting, up, unreachable, "
      "wrong_model (another fingerprint), nothing_useful, down, gone (left "
      "the addresses of its name).");
  worker_rpc_ = &rpc;
  worker_up_ = &up;
  worker_state_ = &state;
  for (size_t i = 0; i < workers.size(); ++i) {
    AddWorker(static_cast<int>(i), workers[i]);
  }
  auto& stages = CounterFamily(
      registry, "moe_router_stage_seconds_total",
      "Router wall time per forward stage: pre, gate, plan (gather), encode, "
      "batch_wait, rpc_wait, combine.");
  for (RouterStage stage : kAllRouterStages) {
    stages_.push_back(&stages.Add({{"stage", RouterStageLabel(stage)}}));
  }
  auto& rejected = CounterFamily(registry, "moe_router_rejected_requests_total",
                                 "Requests refused before routing, by reason.");
  for (RejectReason reason : kAllRejectReasons) {
    rejected_.push_back(&rejected.Add({{"reason", RejectReasonLabel(reason)}}));
  }
  for (Protocol protocol : kAllProtocols) {
    for (const char* code : kCodes) {
      requests_.Add({{"protocol", ProtocolLabel(protocol)}, {"code", code}});
    }
  }
}

PrometheusRouterMetrics::~PrometheusRouterMetrics() = default;

void PrometheusRouterMetrics::RecordForward(int layer_index,
                                            const ForwardResult& r) {
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

void PrometheusRouterMetrics::RecordRequest(Protocol protocol,
                                            absl::StatusCode code,
                                            absl::Duration elapsed) {
  requests_
      .Add({{"protocol", ProtocolLabel(protocol)},
            {"code", absl::StatusCodeToString(code)}})
      .Increment();
  request_seconds_.Observe(absl::ToDoubleSeconds(elapsed));
}

void PrometheusRouterMetrics::RecordStage(RouterStage stage,
                                          absl::Duration elapsed) {
  stages_[static_cast<size_t>(stage)]->Increment(
      absl::ToDoubleSeconds(elapsed));
}

void PrometheusRouterMetrics::RecordForwardCpu(absl::Duration cpu) {
  forward_cpu_.Increment(absl::ToDoubleSeconds(cpu));
}

void PrometheusRouterMetrics::RecordInlineForward() {
  inline_forwards_.Increment();
}

void PrometheusRouterMetrics::RecordStages(const ForwardTimings& t) {
  const std::pair<RouterStage, absl::Duration> stages[] = {
      {RouterStage::kPre, t.pre},
      {RouterStage::kGate, t.gate},
      {RouterStage::kPlan, t.plan},
      {RouterStage::kBatchWait, t.batch_wait},
      {RouterStage::kRpcWait, t.rpc_wait},
      {RouterStage::kCombine, t.combine}};
  for (const auto& [stage, d] : stages) RecordStage(stage, d);
}

void PrometheusRouterMetrics::RecordRejected(RejectReason reason) {
  rejected_[static_cast<size_t>(reason)]->Increment();
}

void PrometheusRouterMetrics::AddRestBodyBytes(int64_t delta) {
  rest_body_bytes_.Increment(static_cast<double>(delta));
}

void PrometheusRouterMetrics::AddRestConnections(int served, int waiting) {
  rest_served_.Increment(served);
  rest_waiting_.Increment(waiting);
}

void PrometheusRouterMetrics::RecordRestConnectionCut(
    const common::ConnectionDeadlines::Cut& cut) {
  (cut.head_bytes > 0 ? rest_cut_large_head_
   : cut.stage == common::ConnectionDeadlines::Stage::kBody
       ? rest_cut_slow_body_
       : rest_cut_slow_head_)
      .Increment();
}

void PrometheusRouterMetrics::AddInflight(int delta) {
  inflight_.Increment(delta);
}

void PrometheusRouterMetrics::AddWorker(int worker,
                                        const std::string& address) {
  Worker w{
      &worker_rpc_->Add({{"worker", address}}, common::LatencyBucketsSeconds()),
      &worker_up_->Add({{"worker", address}}),
      {}};
  for (WorkerState s : kStates) {
    w.state.push_back(&worker_state_->Add(
        {{"worker", address}, {"state", WorkerStateName(s)}}));
  }
  w.state[0]->Set(1);  // connecting
  absl::MutexLock lock(&workers_mu_);
  // The pool numbers its workers in the order they come.
  if (worker != static_cast<int>(workers_.size())) return;
  workers_.push_back(std::move(w));
}

void PrometheusRouterMetrics::RecordWorkerRpc(int worker,
                                              absl::Duration elapsed,
                                              int forwards, int64_t rows) {
  prometheus::Histogram* rpc = nullptr;
  {
    absl::ReaderMutexLock lock(&workers_mu_);
    if (worker >= 0 && worker < static_cast<int>(workers_.size())) {
      rpc = workers_[worker].rpc;
    }
  }
  if (rpc != nullptr) rpc->Observe(absl::ToDoubleSeconds(elapsed));
  batch_forwards_.Observe(forwards);
  batch_rows_.Observe(static_cast<double>(rows));
}

void PrometheusRouterMetrics::SetWorkerState(int worker, WorkerState state) {
  absl::ReaderMutexLock lock(&workers_mu_);
  if (worker < 0 || worker >= static_cast<int>(workers_.size())) return;
  const Worker& w = workers_[worker];
  w.up->Set(state == WorkerState::kUp ? 1 : 0);
  for (size_t s = 0; s < std::size(kStates); ++s) {
    w.state[s]->Set(kStates[s] == state ? 1 : 0);
  }
}

}  // namespace moe::router
