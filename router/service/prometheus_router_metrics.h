// PrometheusRouterMetrics: the router's Prometheus metrics, updated on every
// forward. Label values are bounded: layers, experts, choices ("first",
// "second"), drop reasons (router/failure_reason.h), reject reasons
// (router/service/reject_reason.h), stages, workers, worker states, codes.
//
//   moe_router_requests_total{code}, moe_router_request_duration_seconds
//   moe_router_tokens_total{layer}
//   moe_router_expert_assignments_total{layer,expert,choice}  kept, computed
//   moe_router_dropped_assignments_total{layer,expert,choice,reason}
//       reason: capacity | expert_unavailable | deadline
//   moe_router_second_choice_skipped_total{layer}  (policy; not a drop)
//   moe_router_dropped_tokens_total{layer}     (tokens that lost every choice)
//   moe_router_degraded_responses_total{layer} (answers missing experts)
//   moe_router_expert_capacity_tokens{layer}   (C of the last forward)
//   moe_router_capacity_utilization{layer}     (histogram: kept / (E*C*B))
//   moe_router_load_balancedness{layer}        (mean / max kept assignments
//                                               per expert over the window)
//   moe_router_balance_loss{layer}, moe_router_router_z_loss{layer}  (raw)
//   moe_router_worker_rpc_duration_seconds{worker}
//   moe_router_worker_up{worker}
//   moe_router_worker_state{worker,state}      (1 for the current state)
//   moe_router_worker_batch_forwards, moe_router_worker_batch_rows
//   moe_router_stage_seconds_total{stage}, moe_router_forward_cpu_seconds_total
//   moe_router_inline_forwards_total
//   moe_router_inflight_requests, moe_router_rejected_requests_total{reason}
//   moe_router_rest_body_bytes, moe_router_rest_connections{state}
//   moe_router_rest_connections_closed_total{reason}
//
// For a two-level layer, assignments and their drops are counted at the
// inner level with expert = o * Ei + i; outer-level capacity drops with
// expert = "outer_<o>". Series per layer: E x 8 (+ Eo x 2 outer drops) plus
// 18 for the per-layer gauges and histogram (docs/operations.md).
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/model_spec.h"
#include "router/service/router_metrics.h"

namespace moe::router {

class PrometheusRouterMetrics final : public RouterMetrics {
 public:
  // `registry` must outlive this object. `workers` are the workers'
  // addresses, in the pool's order.
  PrometheusRouterMetrics(prometheus::Registry& registry,
                          const common::ModelSpec& spec,
                          const std::vector<std::string>& workers,
                          absl::Duration balance_window = absl::Seconds(60));
  ~PrometheusRouterMetrics() override;

  void RecordForward(int layer, const ForwardResult& result) override;
  void RecordRequest(Protocol protocol, absl::StatusCode code,
                     absl::Duration elapsed) override;
  void RecordRejected(RejectReason reason) override;
  void AddInflight(int delta) override;
  void RecordWorkerRpc(int worker, absl::Duration elapsed, int forwards,
                       int64_t rows) override;
  void RecordStages(const ForwardTimings& timings) override;
  void RecordStage(RouterStage stage, absl::Duration elapsed) override;
  void RecordForwardCpu(absl::Duration cpu) override;
  void RecordInlineForward() override;
  void SetWorkerState(int worker, WorkerState state) override;
  void AddWorker(int worker, const std::string& address) override;
  void AddRestBodyBytes(int64_t delta) override;
  void AddRestConnections(int served, int waiting) override;
  void RecordRestConnectionCut(
      const common::ConnectionDeadlines::Cut& cut) override;

  // The series of one layer and of one worker (defined in the .cc).
  struct Layer;
  struct Worker;

 private:
  std::vector<std::unique_ptr<Layer>> layers_;
  // Grows when workers are found later (AddWorker): read under the lock.
  mutable absl::Mutex workers_mu_;
  std::vector<Worker> workers_ ABSL_GUARDED_BY(workers_mu_);
  prometheus::Family<prometheus::Histogram>* worker_rpc_;
  prometheus::Family<prometheus::Gauge>* worker_up_;
  prometheus::Family<prometheus::Gauge>* worker_state_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Histogram& request_seconds_;
  prometheus::Gauge& inflight_;
  prometheus::Gauge& rest_body_bytes_;
  prometheus::Family<prometheus::Gauge>& rest_connections_;
  prometheus::Gauge& rest_served_;
  prometheus::Gauge& rest_waiting_;
  prometheus::Family<prometheus::Counter>& rest_cut_;
  prometheus::Counter& rest_cut_slow_head_;
  prometheus::Counter& rest_cut_slow_body_;
  prometheus::Counter& rest_cut_large_head_;
  std::vector<prometheus::Counter*> rejected_;  // by RejectReason
  std::vector<prometheus::Counter*> stages_;    // by RouterStage
  prometheus::Counter& forward_cpu_;
  prometheus::Counter& inline_forwards_;
  prometheus::Histogram& batch_forwards_;
  prometheus::Histogram& batch_rows_;
  const absl::Duration window_;
};

}  // namespace moe::router
