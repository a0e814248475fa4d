#include "router/service/router_metrics.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/rpc_metrics.h"

namespace moe::router {
namespace {

constexpr const char* kChoices[2] = {"first", "second"};
constexpr const char* kReasons[3] = {"capacity", "expert_unavailable",
                                     "deadline"};

int ReasonIndex(const std::string& reason) {
  return reason == "deadline" ? 2 : 1;
}

prometheus::Histogram::BucketBoundaries UtilizationBuckets() {
  return {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0};
}

}  // namespace

RouterMetrics::RouterMetrics(prometheus::Registry& registry,
                             const common::ModelConfig& config,
                             const std::vector<std::string>& workers,
                             absl::Duration balance_window)
    : experts_(config.total_experts()),
      dropped_family_(
          prometheus::BuildCounter()
              .Name("moe_router_dropped_assignments_total")
              .Help("Expert assignments requested but not computed, by "
                    "reason: capacity (over the expert's capacity), "
                    "expert_unavailable (its workers failed), deadline.")
              .Register(registry)),
      requests_(prometheus::BuildCounter()
                    .Name("moe_router_requests_total")
                    .Help("Forward requests, by final gRPC code.")
                    .Register(registry)),
      request_seconds_(prometheus::BuildHistogram()
                           .Name("moe_router_request_duration_seconds")
                           .Help("Forward latency at the router.")
                           .Register(registry)
                           .Add({}, server::LatencyBuckets())),
      tokens_(prometheus::BuildCounter()
                  .Name("moe_router_tokens_total")
                  .Help("Tokens routed (batch x sequence of every forward).")
                  .Register(registry)
                  .Add({})),
      skipped_(prometheus::BuildCounter()
                   .Name("moe_router_second_choice_skipped_total")
                   .Help("Second choices the policy did not request (not "
                         "drops).")
                   .Register(registry)
                   .Add({})),
      dropped_tokens_(prometheus::BuildCounter()
                          .Name("moe_router_dropped_tokens_total")
                          .Help("Tokens that lost every requested choice (MoE "
                                "output zero).")
                          .Register(registry)
                          .Add({})),
      capacity_(prometheus::BuildGauge()
                    .Name("moe_router_expert_capacity_tokens")
                    .Help("Expert capacity C (slots per expert per batch row) "
                          "of the last forward.")
                    .Register(registry)
                    .Add({})),
      utilization_(prometheus::BuildHistogram()
                       .Name("moe_router_capacity_utilization")
                       .Help("Per forward: kept assignments / (experts x "
                             "capacity x batch rows).")
                       .Register(registry)
                       .Add({}, UtilizationBuckets())),
      balancedness_(prometheus::BuildGauge()
                        .Name("moe_router_load_balancedness")
                        .Help("Mean over max of kept assignments per expert "
                              "over the recent window (1 = perfectly even).")
                        .Register(registry)
                        .Add({})),
      balance_loss_(prometheus::BuildGauge()
                        .Name("moe_router_balance_loss")
                        .Help("Raw load-balancing loss of the last forward.")
                        .Register(registry)
                        .Add({})),
      z_loss_(prometheus::BuildGauge()
                  .Name("moe_router_router_z_loss")
                  .Help("Raw router z-loss of the last forward.")
                  .Register(registry)
                  .Add({})),
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
                        "(plan and gather), encode, batch_wait, rpc_wait, "
                        "combine.")
                  .Register(registry)),
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
      window_(balance_window),
      recent_sum_(experts_, 0) {
  auto& assignments = prometheus::BuildCounter()
                          .Name("moe_router_expert_assignments_total")
                          .Help(
                              "Expert assignments kept and computed, by "
                              "expert and choice.")
                          .Register(registry);
  for (int k = 0; k < 2; ++k) {
    for (int64_t e = 0; e < experts_; ++e) {
      const std::string expert = absl::StrCat(e);
      assignments_[k].push_back(
          &assignments.Add({{"expert", expert}, {"choice", kChoices[k]}}));
      for (int r = 0; r < 3; ++r) {
        dropped_[k][r].push_back(
            &dropped_family_.Add({{"expert", expert},
                                  {"choice", kChoices[k]},
                                  {"reason", kReasons[r]}}));
      }
    }
  }
  auto& rpc = prometheus::BuildHistogram()
                  .Name("moe_router_worker_rpc_duration_seconds")
                  .Help("RunExperts call latency, by worker.")
                  .Register(registry);
  auto& up = prometheus::BuildGauge()
                 .Name("moe_router_worker_up")
                 .Help("1 when the worker answers its health probe.")
                 .Register(registry);
  for (const std::string& w : workers) {
    worker_rpc_.push_back(&rpc.Add({{"worker", w}}, server::LatencyBuckets()));
    worker_up_.push_back(&up.Add({{"worker", w}}));
  }
  for (const char* stage :
       {"pre", "gate", "plan", "encode", "batch_wait", "rpc_wait", "combine"}) {
    stages_.Add({{"stage", stage}});
  }
  for (const char* reason : {"queue_full", "too_many_tokens"}) {
    rejected_.Add({{"reason", reason}});
  }
  for (const char* code : {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED",
                           "UNAVAILABLE", "DEADLINE_EXCEEDED"}) {
    requests_.Add({{"code", code}});
  }
}

void RouterMetrics::RecordForward(
    const ForwardResult& r,
    const std::map<int64_t, std::string>& failure_reasons) {
  const int64_t batch = r.y.size(0), seq = r.y.size(1);
  tokens_.Increment(static_cast<double>(batch * seq));
  const RoutingResult& level = r.has_inner ? r.inner_routing : r.routing;
  std::vector<int64_t> per_expert(experts_, 0);
  const int64_t tokens = level.groups * level.group_size;
  int64_t lost_tokens = 0;
  for (int64_t tok = 0; tok < tokens; ++tok) {
    bool requested = false, computed = false;
    for (int k = 0; k < 2; ++k) {
      const int64_t i = tok * 2 + k;
      if (!level.requested[i]) continue;
      requested = true;
      int64_t e = level.expert[i];
      if (r.has_inner) {
        const int64_t g = tok / level.group_size;
        e += (g / batch) * level.num_experts;
        if (r.slot_row[tok] < 0) continue;
      }
      if (!level.kept[i]) {
        dropped_[k][0][e]->Increment();
        continue;
      }
      auto failed = failure_reasons.find(e);
      if (failed != failure_reasons.end()) {
        dropped_[k][ReasonIndex(failed->second)][e]->Increment();
        continue;
      }
      assignments_[k][e]->Increment();
      ++per_expert[e];
      computed = true;
    }
    if (requested && !computed && !r.has_inner) ++lost_tokens;
  }
  if (r.has_inner) {
    // Outer-level capacity drops, and tokens lost there.
    const RoutingResult& outer = r.routing;
    std::lock_guard<std::mutex> lock(outer_mu_);
    for (int64_t tok = 0; tok < outer.groups * outer.group_size; ++tok) {
      for (int k = 0; k < 2; ++k) {
        const int64_t i = tok * 2 + k;
        if (!outer.requested[i] || outer.kept[i]) continue;
        const std::string key = absl::StrCat("outer_", outer.expert[i], "/", k);
        auto it = outer_dropped_.find(key);
        if (it == outer_dropped_.end()) {
          it = outer_dropped_
                   .emplace(
                       key,
                       &dropped_family_.Add(
                           {{"expert", absl::StrCat("outer_", outer.expert[i])},
                            {"choice", kChoices[k]},
                            {"reason", "capacity"}}))
                   .first;
        }
        it->second->Increment();
      }
    }
    lost_tokens = outer.counts.dropped_tokens;
  }
  dropped_tokens_.Increment(static_cast<double>(lost_tokens));
  skipped_.Increment(static_cast<double>(
      r.routing.counts.second_skipped +
      (r.has_inner ? r.inner_routing.counts.second_skipped : 0)));
  capacity_.Set(static_cast<double>(r.routing.capacity));
  const double slots = static_cast<double>(
      r.routing.num_experts * r.routing.capacity * r.routing.groups);
  const RoutingCounts& c = r.routing.counts;
  utilization_.Observe(slots > 0 ? (c.kept[0] + c.kept[1]) / slots : 0.0);
  balance_loss_.Set(r.losses.balance_loss);
  z_loss_.Set(r.losses.router_z_loss);
  AddToWindow(per_expert);
}

void RouterMetrics::AddToWindow(const std::vector<int64_t>& per_expert) {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time now = absl::Now();
  recent_.emplace_back(now, per_expert);
  for (int64_t e = 0; e < experts_; ++e) recent_sum_[e] += per_expert[e];
  while (!recent_.empty() && now - recent_.front().first > window_) {
    for (int64_t e = 0; e < experts_; ++e) {
      recent_sum_[e] -= recent_.front().second[e];
    }
    recent_.pop_front();
  }
  int64_t max = 0, sum = 0;
  for (int64_t v : recent_sum_) {
    max = std::max(max, v);
    sum += v;
  }
  balancedness_.Set(max > 0 ? (static_cast<double>(sum) / experts_) / max
                            : 1.0);
}

void RouterMetrics::RecordRequest(grpc::StatusCode code,
                                  absl::Duration elapsed) {
  requests_.Add({{"code", server::StatusCodeName(code)}}).Increment();
  request_seconds_.Observe(absl::ToDoubleSeconds(elapsed));
}

void RouterMetrics::RecordStage(const char* stage, absl::Duration elapsed) {
  stages_.Add({{"stage", stage}}).Increment(absl::ToDoubleSeconds(elapsed));
}

void RouterMetrics::RecordStages(const ForwardTimings& t,
                                 absl::Duration batch_wait,
                                 absl::Duration rpc_wait) {
  const std::pair<const char*, double> stages[] = {
      {"pre", t.pre_us * 1e-6},
      {"gate", t.gate_us * 1e-6},
      {"plan", t.plan_us * 1e-6},
      {"batch_wait", absl::ToDoubleSeconds(batch_wait)},
      {"rpc_wait", absl::ToDoubleSeconds(rpc_wait)},
      {"combine", t.combine_us * 1e-6}};
  for (const auto& [stage, seconds] : stages) {
    stages_.Add({{"stage", stage}}).Increment(seconds);
  }
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

void RouterMetrics::SetWorkerUp(int worker, bool up) {
  if (worker >= 0 && worker < static_cast<int>(worker_up_.size())) {
    worker_up_[worker]->Set(up ? 1 : 0);
  }
}

}  // namespace moe::router
