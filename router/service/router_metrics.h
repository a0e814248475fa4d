// RouterMetrics: the router's Prometheus metrics (DESIGN.md section 6),
// updated on every forward. Label values are bounded: experts, choices
// ("first", "second"), reasons, workers, codes.
//
//   moe_router_requests_total{code}, moe_router_request_duration_seconds
//   moe_router_tokens_total
//   moe_router_expert_assignments_total{expert,choice}      kept and computed
//   moe_router_dropped_assignments_total{expert,choice,reason}
//       reason: capacity | expert_unavailable | deadline
//   moe_router_second_choice_skipped_total   (policy; not a drop)
//   moe_router_dropped_tokens_total          (tokens that lost every choice)
//   moe_router_expert_capacity_tokens        (C of the last forward)
//   moe_router_capacity_utilization          (histogram: kept / (E * C * B))
//   moe_router_load_balancedness             (mean / max kept assignments per
//                                             expert over the last window)
//   moe_router_balance_loss, moe_router_router_z_loss   (last forward, raw)
//   moe_router_worker_rpc_duration_seconds{worker},
//   moe_router_worker_up{worker} moe_router_worker_batch_forwards,
//   moe_router_worker_batch_rows
//                                            (histograms per worker call)
//   moe_router_stage_seconds_total{stage}
//   moe_router_inflight_requests, moe_router_rejected_requests_total{reason}
//
// For a two-level MoE, assignments and their drops are counted at the inner
// level with expert = o * Ei + i; outer-level capacity drops are counted with
// expert = "outer_<o>".
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/model_config.h"
#include "router/engine/moe_engine.h"

namespace moe::router {

class RouterMetrics {
 public:
  // `registry` must outlive this object.
  RouterMetrics(prometheus::Registry& registry,
                const common::ModelConfig& config,
                const std::vector<std::string>& workers,
                absl::Duration balance_window = absl::Seconds(60));

  // A completed forward. `failure_reasons` maps each unavailable expert to
  // "expert_unavailable" or "deadline".
  void RecordForward(const ForwardResult& result,
                     const std::map<int64_t, std::string>& failure_reasons);
  // Every Forward call, by final code.
  void RecordRequest(grpc::StatusCode code, absl::Duration elapsed);
  // reason: queue_full, too_many_tokens.
  void RecordRejected(const std::string& reason);
  void AddInflight(int delta);
  // One finished worker call, shared by `forwards` forwards, `rows` rows.
  void RecordWorkerRpc(int worker, absl::Duration elapsed, int forwards,
                       int64_t rows);
  // Router time per stage of one forward, accumulated in
  // moe_router_stage_seconds_total{stage}: pre (validation, block
  // pre-norm), gate, plan (plan + gather), batch_wait (the batching window),
  // rpc_wait, combine (adding the workers' outputs into y as they arrive,
  // residual, feed-forward after). The batcher adds "encode" (building and
  // sending worker requests) per call with RecordStage.
  void RecordStages(const ForwardTimings& timings, absl::Duration batch_wait,
                    absl::Duration rpc_wait);
  void RecordStage(const char* stage, absl::Duration elapsed);
  void SetWorkerUp(int worker, bool up);

 private:
  void AddToWindow(const std::vector<int64_t>& per_expert);

  int64_t experts_;
  std::vector<prometheus::Counter*> assignments_[2];
  // [choice][reason][expert]; reasons: capacity, expert_unavailable, deadline
  std::vector<prometheus::Counter*> dropped_[2][3];
  prometheus::Family<prometheus::Counter>& dropped_family_;
  std::map<std::string, prometheus::Counter*> outer_dropped_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Histogram& request_seconds_;
  prometheus::Counter& tokens_;
  prometheus::Counter& skipped_;
  prometheus::Counter& dropped_tokens_;
  prometheus::Gauge& capacity_;
  prometheus::Histogram& utilization_;
  prometheus::Gauge& balancedness_;
  prometheus::Gauge& balance_loss_;
  prometheus::Gauge& z_loss_;
  std::vector<prometheus::Histogram*> worker_rpc_;
  std::vector<prometheus::Gauge*> worker_up_;
  prometheus::Gauge& inflight_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Counter>& stages_;
  prometheus::Histogram& batch_forwards_;
  prometheus::Histogram& batch_rows_;

  absl::Duration window_;
  mutable std::mutex mu_;
  std::deque<std::pair<absl::Time, std::vector<int64_t>>> recent_;
  std::vector<int64_t> recent_sum_;
  std::mutex outer_mu_;
};

}  // namespace moe::router
