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
//
// Each request is admitted once, in this order: token, parse, the runner's
// checks (ForwardRunner::Admit), readiness, the admission controller, the
// queue. Every refusal is counted by reason in the metrics.
//
// Serve() is that path for any edge: moe.v1 Forward here, the Open
// Inference Protocol's ModelInfer (router/service/inference_service.h)
// translates its request into a ForwardRequest and its answer back, and
// runs the same admission, queue, forward, logs and metrics.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/dtype.h"
#include "common/token_set.h"
#include "common/tracing.h"
#include "common/work_queue.h"
#include "moe/v1/router.grpc.pb.h"
#include "router/api/forward_runner.h"
#include "router/remote/remote_expert_backend.h"
#include "router/remote/worker_batcher.h"
#include "router/remote/worker_pool.h"
#include "router/service/admission.h"
#include "router/service/layer_statistics.h"
#include "router/service/router_metrics.h"

namespace moe::router {

struct RouterServiceOptions {
  int threads = 2;
  size_t max_queued = 64;
  absl::Duration worker_timeout = absl::Seconds(30);
  ExpertFailurePolicy on_failure = ExpertFailurePolicy::kDrop;
  common::DType wire_dtype = common::DType::kFloat32;
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
  // A forward of at most this many tokens that arrives while no forward is
  // queued or running runs on the gRPC thread that received it, one at a
  // time, instead of being handed to a forward thread (0: never, the
  // default). Saves a hand-off and about 130 us of router CPU on a decode
  // step, but blocks one of gRPC's callback threads while the workers
  // compute, which gRPC advises against; off until its behaviour at
  // shutdown is understood (docs/operations.md).
  int64_t inline_max_tokens = 0;
  // A replicated expert's few rows join a worker batch that already runs
  // that expert rather than go to another copy, unless a copy is idle
  // (RemoteCallOptions::join_open_batches).
  bool join_open_batches = true;
  // Spans of the forwards it serves (Forward, ModelInfer, REST infer), as
  // the tracer samples them (common/tracing.h); none when null. Must
  // outlive the service.
  const common::Tracer* tracer = nullptr;

  // InvalidArgument naming the option as its flag spells it.
  absl::Status Validate() const;
  // "on_expert_failure=drop, wire float32, batch window 20ms, 8 forward
  // threads, tokens required": for the start-up log line.
  std::string Describe() const;
};

class RouterService final
    : public moe::v1::Router::WithRawCallbackMethod_Forward<
          moe::v1::Router::WithCallbackMethod_GetModelInfo<
              moe::v1::Router::Service>> {
 public:
  // `runner`, `pool` and `metrics` must outlive the service (a
  // NoRouterMetrics where nothing is recorded). InvalidArgument when the
  // options fail Validate().
  static absl::StatusOr<std::unique_ptr<RouterService>> Create(
      const ForwardRunner* runner, WorkerPool* pool,
      const RouterServiceOptions& options, RouterMetrics* metrics);
  ~RouterService() override;

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;

  grpc::ServerUnaryReactor* GetModelInfo(
      grpc::CallbackServerContext* context,
      const moe::v1::GetModelInfoRequest* request,
      moe::v1::ModelInfo* response) override;

  // One forward from an edge of the service: its request and response, and
  // where its outcome goes. The edge owns it until done runs.
  class Job {
   public:
    // `method` names the RPC in logs ("Forward", "ModelInfer"). Once the
    // forward ran, `answer` puts `response` into the edge's own answer (its
    // error becomes the call's, counted and logged); then `done` is called,
    // once, with the call's status (also for a refusal). The request ID is
    // the call's "x-request-id" when usable (common/request_id.h), else
    // `body_id` (the request's own ID field, OIP's `id`) when usable, else a
    // new one; the answer carries it in its own "x-request-id" (initial
    // metadata, added here).
    Job(grpc::CallbackServerContext* context, absl::Time start,
        const char* method, Protocol protocol,
        std::function<absl::Status()> answer,
        std::function<void(absl::Status)> done, absl::string_view body_id = {});
    // The same for an edge without a gRPC call (HTTP): its deadline, its
    // peer for the logs, its request ID (the edge answers with it), the
    // caller's traceparent header (may be empty), and whether its client
    // went away.
    Job(absl::Time start, absl::Time deadline, std::string peer,
        std::string request_id, std::string traceparent, const char* method,
        Protocol protocol, std::function<bool()> cancelled,
        std::function<absl::Status()> answer,
        std::function<void(absl::Status)> done);
    // The same for one message of a stream, `stream` its call: the
    // stream's deadline, peer and traceparent; the request ID is
    // `body_id` when usable (each message names itself), else the
    // stream's "x-request-id" when usable, else a new one, and is not
    // added to the stream's metadata (sent once, before the first
    // answer): the edge's answer carries it. `cancelled`: whether the
    // stream is.
    Job(const grpc::CallbackServerContext& stream, absl::Time start,
        const char* method, Protocol protocol, std::function<bool()> cancelled,
        std::function<absl::Status()> answer,
        std::function<void(absl::Status)> done, absl::string_view body_id);
    // The client went away: the forward stops waiting for its workers.
    void Cancel() { waiter_->Cancel(); }
    // The request asks for less time than its transport gives (the Open
    // Inference Protocol's `timeout`): its deadline is at most `timeout`
    // after its start. Before Serve.
    void LimitTime(absl::Duration timeout) {
      deadline_ = std::min(deadline_, start_ + timeout);
    }
    absl::Time deadline() const { return deadline_; }
    const std::string& request_id() const { return request_id_; }

    moe::v1::ForwardRequest request;
    moe::v1::ForwardResponse response;

   private:
    friend class RouterService;
    const std::function<bool()> cancelled_;
    const std::shared_ptr<ForwardWaiter> waiter_;
    const absl::Time start_;
    absl::Time deadline_;
    const std::string peer_;
    const std::string request_id_;
    const std::string traceparent_;
    const char* const method_;
    const Protocol protocol_;
    const std::function<absl::Status()> answer_;
    const std::function<void(absl::Status)> done_;
    AdmittedForward admitted_;  // once Admit() passed
    ForwardTimings timings_;    // once the forward ran (ran_)
    bool ran_ = false;
    AdmissionController::Ticket ticket_;
    std::optional<common::Span> span_;  // when the tracer records it
  };

  // OK when the caller may use Forward, ModelInfer and the metadata calls;
  // UNAUTHENTICATED (counted) without a token this router accepts.
  absl::Status Authorize(const grpc::CallbackServerContext& context) const;
  // The same for the value of an "authorization" header (empty: none).
  absl::Status Authorize(absl::string_view authorization) const;
  // The token check of a call from its headers alone, before gRPC reads
  // its message (TokenGate): for Forward and ModelInfer at `path`, the
  // calls whose messages are large, UNAUTHENTICATED without a token this
  // router accepts, counted and logged as their handlers count a refusal;
  // OK for any other path (its handler decides). The log line and the
  // refusal name the call by its "x-request-id" header when usable, else
  // its "traceparent"'s trace ID, else a new ID.
  absl::Status AuthorizeHeaders(absl::string_view path,
                                absl::string_view authorization,
                                absl::string_view request_id = {},
                                absl::string_view traceparent = {}) const;
  // Serves `job`: refused at once with `edge_status` when that is not OK
  // (the edge's own checks), else admitted, run inline or on a forward
  // thread, logged and counted; job's done runs once, on some thread.
  void Serve(Job* job, absl::Status edge_status = absl::OkStatus());

  const ForwardRunner& runner() const { return *runner_; }
  common::Clock* clock() const { return options_.clock; }
  const WorkerPool& pool() const { return *pool_; }

  // Waits until every expert of every layer has a healthy worker (the
  // pool's probes run meanwhile), logging what is missing every 5 s. OK
  // once ready; UNAVAILABLE naming the experts without a worker after
  // `timeout` (none when zero); CANCELLED when `interrupted` (asked every
  // 50 ms, say whether a shutdown signal came) returns true.
  absl::Status AwaitReady(absl::Duration timeout,
                          const std::function<bool()>& interrupted) const;

  // Waits for the forwards already accepted (they answer their calls) and
  // their worker calls. Call after the server stopped taking calls and
  // before it is destroyed; the destructor does it too.
  void Drain();

  // Reported in ModelInfo so that tools can find /metrics.
  void set_metrics_port(int port) { metrics_port_ = port; }

  // "model \"m\" sha256:..., 4 layer(s), dim 512, on 2 workers [a,b],
  // on_expert_failure=drop, ..., /metrics on port 9464": the start-up line.
  std::string Describe() const;

  // What GetModelInfo answers (`with_workers`: the worker list too).
  moe::v1::ModelInfo ModelInfo(bool with_workers = true) const;

  // Each layer's requests and forwards since the start (the Open Inference
  // Protocol's statistics extension): every request that named a known
  // layer, answered or refused, once it is done.
  const LayerStatistics& statistics() const { return statistics_; }

 private:
  class ForwardCall;

  RouterService(const ForwardRunner* runner, WorkerPool* pool,
                const RouterServiceOptions& options, RouterMetrics* metrics);
  // Everything that can refuse a parsed request before it is queued:
  // the runner's checks, readiness, the admission controller.
  absl::Status Admit(Job* job) const;
  absl::Status RunForward(Job* job) const;
  // Whether a forward of `tokens` runs on the calling gRPC thread (see
  // inline_max_tokens); if so the caller clears inline_running_ after it.
  bool RunInline(int64_t tokens);
  // Ends the job with `status`: admission, log, metrics, then its done.
  void Finish(Job* job, absl::Status status);
  // Counts the job's outcome in statistics_ (a job of a known layer).
  void RecordStatistics(const Job& job, bool ok, absl::Time now,
                        absl::Duration took, absl::Duration answering);
  // Ends job's span with the call's outcome and hands it to the tracer.
  void EndSpan(Job* job, const absl::Status& status);
  // kAccepted when the service needs no token.
  common::TokenSet::Verdict Authenticate(
      const grpc::CallbackServerContext& context) const;
  // OK for kAccepted, else UNAUTHENTICATED (counted).
  absl::Status Refused(common::TokenSet::Verdict verdict) const;

  const ForwardRunner* runner_;
  WorkerPool* pool_;
  const RouterServiceOptions options_;
  RouterMetrics& metrics_;
  std::atomic<int64_t> inflight_{0};
  std::atomic<int> metrics_port_{0};
  std::atomic<bool> inline_running_{false};
  mutable AdmissionController admission_;
  LayerStatistics statistics_;
  std::unique_ptr<WorkerBatcher> batcher_;
  std::unique_ptr<common::WorkQueue> queue_;
};

}  // namespace moe::router
