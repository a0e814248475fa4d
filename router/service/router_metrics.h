// RouterMetrics: what the router records of its work, as an interface the
// service always has (never null): PrometheusRouterMetrics
// (router/service/prometheus_router_metrics.h) behind /metrics, or
// NoRouterMetrics where nothing is wanted. Unit tests may record calls with
// a fake of their own.
//
// Thread-safety: implementations allow every method to be called
// concurrently.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/connection_deadlines.h"
#include "router/engine/layer_engine.h"
#include "router/remote/worker_pool.h"
#include "router/service/reject_reason.h"

namespace moe::router {

// A stage of the router's work on one forward
// (moe_router_stage_seconds_total{stage}).
enum class RouterStage {
  kPre,        // validation, feed-forward before, norm
  kGate,       // logits, softmax, top-2, capacity
  kPlan,       // dispatch plan and gather
  kEncode,     // building and starting worker calls (the batcher)
  kBatchWait,  // a forward's worker batch waiting to leave
  kRpcWait,    // waiting for the workers
  kCombine,    // adding outputs into y, residual, feed-forward after
};

// How a request reached the router (moe_router_requests_total{protocol}).
enum class Protocol {
  kMoeV1,    // moe.v1.Router/Forward
  kOipGrpc,  // the Open Inference Protocol's ModelInfer
  kOipRest,  // its REST infer
};
inline constexpr Protocol kAllProtocols[] = {
    Protocol::kMoeV1, Protocol::kOipGrpc, Protocol::kOipRest};
// "moe.v1", "oip_grpc", "oip_rest".
const char* ProtocolLabel(Protocol protocol);

inline constexpr RouterStage kAllRouterStages[] = {
    RouterStage::kPre,    RouterStage::kGate,      RouterStage::kPlan,
    RouterStage::kEncode, RouterStage::kBatchWait, RouterStage::kRpcWait,
    RouterStage::kCombine};

// "pre", "gate", "plan", "encode", "batch_wait", "rpc_wait", "combine".
const char* RouterStageLabel(RouterStage stage);

class RouterMetrics {
 public:
  virtual ~RouterMetrics() = default;

  // A completed forward of layer `layer` (its index in the model).
  virtual void RecordForward(int layer, const ForwardResult& result) = 0;
  // Every forward request, by protocol and final code.
  virtual void RecordRequest(Protocol protocol, absl::StatusCode code,
                             absl::Duration elapsed) = 0;
  virtual void RecordRejected(RejectReason reason) = 0;
  virtual void AddInflight(int delta) = 0;
  // One finished worker call, shared by `forwards` forwards, `rows` rows.
  virtual void RecordWorkerRpc(int worker, absl::Duration elapsed, int forwards,
                               int64_t rows) = 0;
  // The stages of one forward's timings (all but kEncode, which the
  // batcher reports with RecordStage).
  virtual void RecordStages(const ForwardTimings& timings) = 0;
  virtual void RecordStage(RouterStage stage, absl::Duration elapsed) = 0;
  // CPU time of the thread that ran one forward, while it ran it.
  virtual void RecordForwardCpu(absl::Duration cpu) = 0;
  // A forward that ran on the gRPC thread that received it.
  virtual void RecordInlineForward() = 0;
  virtual void SetWorkerState(int worker, WorkerState state) = 0;
  // A worker found after the start (WorkerDiscovery), with the index the
  // pool gave it (the next one).
  virtual void AddWorker(int /*worker*/, const std::string& /*address*/) {}
  // The REST port (InferenceHttpServer): infer body bytes held, and
  // connections served by a thread of its pool or waiting for one.
  virtual void AddRestBodyBytes(int64_t /*delta*/) {}
  virtual void AddRestConnections(int /*served*/, int /*waiting*/) {}
  // A REST connection closed because its request did not arrive in time,
  // or its head was too large (common::ConnectionDeadlines).
  virtual void RecordRestConnectionCut(
      const common::ConnectionDeadlines::Cut& /*cut*/) {}
};

// Records nothing.
class NoRouterMetrics final : public RouterMetrics {
 public:
  void RecordForward(int, const ForwardResult&) override {}
  void RecordRequest(Protocol, absl::StatusCode, absl::Duration) override {}
  void RecordRejected(RejectReason) override {}
  void AddInflight(int) override {}
  void RecordWorkerRpc(int, absl::Duration, int, int64_t) override {}
  void RecordStages(const ForwardTimings&) override {}
  void RecordStage(RouterStage, absl::Duration) override {}
  void RecordForwardCpu(absl::Duration) override {}
  void RecordInlineForward() override {}
  void SetWorkerState(int, WorkerState) override {}
};

}  // namespace moe::router
