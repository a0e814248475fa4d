// The moe.v1.ExpertWorker service: runs the experts of one ExpertShard for
// routers. Handlers only check and queue; the expert math runs on the
// service's own WorkQueue, never on gRPC's threads. A full queue answers
// RESOURCE_EXHAUSTED. RunExperts reads its bytes itself
// (proto/expert_wire.h): tokens in place, outputs written straight into the
// response, and a message that is not a RunExpertsRequest is an
// INVALID_ARGUMENT saying so.
//
// The experts served are an ExpertPlacement's (experts/service/placement.h):
// SetExperts changes them at run time for the holder of the admin token
// (loading runs on a thread of its own, never on gRPC's); a call for an
// expert the worker does not host is FAILED_PRECONDITION, which the router
// takes as "ask a replica", not as the worker failing.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "common/model_spec.h"
#include "common/token_set.h"
#include "common/tracing.h"
#include "common/work_queue.h"
#include "experts/expert_shard.h"
#include "experts/service/expert_metrics.h"
#include "experts/service/placement.h"
#include "moe/v1/expert.grpc.pb.h"
#include "proto/expert_wire.h"

namespace moe::experts {

struct ExpertServiceOptions {
  int compute_threads = 1;  // OpenBLAS already parallelises GEMMs.
  size_t max_queued = 64;   // calls waiting beyond the running ones
  int64_t max_tokens_per_call = 1 << 17;  // token rows of one call
  // A call whose request is at most this many bytes runs on the gRPC
  // thread that received it when the compute threads are idle (one such
  // call at a time): a decode-sized call saves the hand-off to a compute
  // thread and back. 0: every call is handed off.
  int64_t inline_max_request_bytes = 0;
  // Bearer tokens SetExperts requires (--admin_token_file); none: every
  // SetExperts is refused. Not owned.
  common::TokenSet* admin_tokens = nullptr;
  // Log every RunExperts call (peer, the forwards' request IDs, time,
  // bytes); failures are logged whatever this says (at most 10 a second).
  bool log_requests = false;
  // Records the RunExperts calls of traced forwards (common/tracing.h):
  // the router sends each call's span as its traceparent, and the other
  // forwards a batched call serves as moe-trace-link values. None when
  // null; must outlive the service.
  const common::Tracer* tracer = nullptr;

  // InvalidArgument naming the option (as the flag spells it) when
  // compute_threads or max_tokens_per_call is below 1.
  absl::Status Validate() const;
};

// What the worker serves: the model and its identity.
struct ServedModel {
  common::ModelSpec spec;
  std::string fingerprint;
};

class ExpertService final
    : public moe::v1::ExpertWorker::WithRawCallbackMethod_RunExperts<
          moe::v1::ExpertWorker::WithCallbackMethod_GetShardInfo<
              moe::v1::ExpertWorker::WithCallbackMethod_SetExperts<
                  moe::v1::ExpertWorker::Service>>> {
 public:
  // Serves `placement`'s experts. `placement` and `metrics` must outlive
  // the service. InvalidArgument for options that fail Validate(), or
  // experts that do not fit the model (another dim, a layer the model does
  // not have).
  static absl::StatusOr<std::unique_ptr<ExpertService>> Create(
      ExpertPlacement* placement, ServedModel model,
      const ExpertServiceOptions& options, ExpertMetrics* metrics);
  // Serves `shard`'s experts, fixed (SetExperts refused).
  static absl::StatusOr<std::unique_ptr<ExpertService>> Create(
      const ExpertShard* shard, ServedModel model,
      const ExpertServiceOptions& options, ExpertMetrics* metrics);
  ~ExpertService() override;

  // Waits for the calls already accepted to finish. Call after the server
  // stopped taking calls and before it is destroyed; the destructor does it
  // too.
  void Drain() {
    // A call running on a gRPC thread ends first (it borrows a thread of
    // queue_).
    while (inline_running_.load()) absl::SleepFor(absl::Milliseconds(1));
    queue_.reset();
    admin_queue_.reset();
  }

  // The worker was asked to stop and waits for its experts to move
  // (ShardInfo.leaving).
  void SetLeaving() { leaving_.store(true); }

  grpc::ServerUnaryReactor* RunExperts(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

  grpc::ServerUnaryReactor* GetShardInfo(
      grpc::CallbackServerContext* context,
      const moe::v1::GetShardInfoRequest* request,
      moe::v1::ShardInfo* response) override;

  grpc::ServerUnaryReactor* SetExperts(
      grpc::CallbackServerContext* context,
      const moe::v1::SetExpertsRequest* request,
      moe::v1::ShardInfo* response) override;

  // The reply of GetShardInfo (with the experts' load when asked).
  moe::v1::ShardInfo shard_info(bool include_load = false) const;

 private:
  ExpertService(ExpertPlacement* placement,
                std::unique_ptr<ExpertPlacement> owned, ServedModel model,
                const ExpertServiceOptions& options, ExpertMetrics* metrics);
  // What a call was and where its time went, for its span.
  struct CallFacts {
    int64_t rows = 0;
    int64_t segments = 0;
    ExpertMetrics::CallStages stages;
    // When the request was parsed, the experts had run and the answer was
    // written (a run that went through): Run's `started` plus the steady
    // clock's stage lengths, so each phase span is as long as its stage.
    absl::Time parsed, ran, serialized;
  };
  // `started`: the wall clock when the call reached its compute thread.
  absl::Status Run(const grpc::ByteBuffer& request, grpc::ByteBuffer* response,
                   absl::Time started, CallFacts* facts) const;
  // Ends a RunExperts call's span with its outcome.
  void EndSpan(common::Span span, const grpc::CallbackServerContext& context,
               const absl::Status& status, const CallFacts& facts,
               absl::Time started, bool ran_inline) const;
  // SetExperts after its token was accepted; `who` names the caller.
  absl::Status ChangeExperts(const moe::v1::SetExpertsRequest& request,
                             const std::string& who);
  // Tokens expert `key` ran here (load_ index).
  size_t LoadIndex(common::ExpertKey key) const {
    return static_cast<size_t>(layer_offsets_[key.layer] + key.expert);
  }
  // The call's rows through the shard in parts of at most
  // shard_->max_rows_per_run() rows, the results written to `out` (the
  // response's [rows, dim] of its output dtype): a call's working memory
  // beyond its request and response is one part's.
  absl::Status RunInParts(const ExpertShard& shard,
                          const proto::RunExpertsRequestView& call, void* out,
                          RunStats* stats) const;

  std::unique_ptr<ExpertPlacement> owned_placement_;  // Create(shard, ...)
  ExpertPlacement* const placement_;
  const ServedModel model_;
  const ExpertServiceOptions options_;
  ExpertMetrics& metrics_;
  std::vector<int64_t> layer_offsets_;  // into load_, by layer
  std::unique_ptr<std::atomic<int64_t>[]> load_;
  std::atomic<bool> leaving_{false};
  std::atomic<bool> inline_running_{false};  // a call on a gRPC thread
  std::unique_ptr<common::WorkQueue> queue_;
  std::unique_ptr<common::WorkQueue> admin_queue_;  // SetExperts' loading
};

}  // namespace moe::experts
