// The moe.v1.Router service: checks a request, runs it (ForwardRunner over a
// RemoteExpertBackend) on the router's own WorkQueue (never on gRPC's
// threads), and answers with the output, losses, statistics and, on
// request, the routing trace. Forward reads its own bytes, so a message
// that is not a ForwardRequest gets INVALID_ARGUMENT saying so. Until every
// expert has had a worker the router answers UNAVAILABLE, naming the
// experts without one. Overload answers RESOURCE_EXHAUSTED at once: too
// many tokens queued, too long a queue, or a deadline the queue and the
// work would miss (AdmissionController); so does a full queue.
// Concurrent forwards may share worker calls (options.batch_window). With
// options.tokens, a call without a known "authorization: Bearer <token>"
// is UNAUTHENTICATED; GetModelInfo without a token answers without the
// worker list (addresses are for operators).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "common/clock.h"
#include "common/token_set.h"
#include "common/work_queue.h"
#include "moe/v1/router.grpc.pb.h"
#include "router/service/admission.h"
#include "router/service/forward_runner.h"
#include "router/service/remote_expert_backend.h"
#include "router/service/router_metrics.h"
#include "router/service/worker_batcher.h"
#include "router/service/worker_pool.h"

namespace moe::router {

struct RouterServiceOptions {
  int threads = 2;
  size_t max_queued = 64;
  absl::Duration worker_timeout = absl::Seconds(30);
  ExpertFailurePolicy on_failure = ExpertFailurePolicy::kDrop;
  moe::v1::DType wire_dtype = moe::v1::FLOAT32;
  // Dynamic batching of worker calls (WorkerBatcher); zero turns it off.
  absl::Duration batch_window = absl::ZeroDuration();
  int64_t batch_max_rows = 16384;
  common::Clock* clock = common::Clock::Real();
  // Bearer tokens Forward and GetModelInfo require (not health); none when
  // null. Must outlive the service.
  common::TokenSet* tokens = nullptr;
  // Admission by work (AdmissionController): queued tokens, queue time,
  // deadlines that cannot be met.
  int64_t max_queued_tokens = 262144;
  absl::Duration max_queue_time = absl::Seconds(2);
  // One log line per request (failed ones are always logged).
  bool log_requests = false;
};

class RouterService final
    : public moe::v1::Router::WithRawCallbackMethod_Forward<
          moe::v1::Router::WithCallbackMethod_GetModelInfo<
              moe::v1::Router::Service>> {
 public:
  // `runner`, `pool` and `metrics` (may be null) must outlive the service.
  RouterService(const ForwardRunner* runner, WorkerPool* pool,
                const RouterServiceOptions& options,
                RouterMetrics* metrics = nullptr);
  ~RouterService() override;

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;

  grpc::ServerUnaryReactor* GetModelInfo(
      grpc::CallbackServerContext* context,
      const moe::v1::GetModelInfoRequest* request,
      moe::v1::ModelInfo* response) override;

  // Waits for the forwards already accepted (they answer their calls) and
  // their worker calls. Call after the server stopped taking calls and
  // before it is destroyed; the destructor does it too.
  void Drain();

  // Reported in ModelInfo so that tools can find /metrics.
  void set_metrics_port(int port) { metrics_port_ = port; }

  // What GetModelInfo answers (`with_workers`: the worker list too).
  moe::v1::ModelInfo ModelInfo(bool with_workers = true) const;

 private:
  class ForwardCall;

  // Parses and admits a request: the forward's state, or the error to
  // answer at once.
  absl::Status Admit(const grpc::ByteBuffer& bytes, ForwardCall* call) const;
  absl::Status RunForward(ForwardCall* call) const;
  // kAccepted when the service needs no token.
  common::TokenSet::Verdict Authenticate(
      const grpc::CallbackServerContext& context) const;

  const ForwardRunner* runner_;
  WorkerPool* pool_;
  const RouterServiceOptions options_;
  RouterMetrics* metrics_;
  std::atomic<int64_t> inflight_{0};
  std::atomic<int> metrics_port_{0};
  mutable AdmissionController admission_;
  std::unique_ptr<WorkerBatcher> batcher_;
  std::unique_ptr<common::WorkQueue> queue_;
};

}  // namespace moe::router
