// RemoteExpertBackend: runs a forward's expert work on the workers, one
// request per worker per attempt, all in flight at once, through the
// router's WorkerBatcher (which may share a worker call among concurrent
// forwards). Built per request: it carries the request's deadline,
// cancellation and failure policy.
//
// One Run() is a FanOut (remote_expert_backend.cc) that repeats, until every
// segment is combined or the worker deadline passes: Assign (each pending
// segment to the least-loaded healthy worker hosting it, one not tried for
// it yet), Submit (one request per worker to the batcher), Await (each call
// as it finishes: its outputs combined into y at once, its segments pending
// again when it failed). What no worker could run is left to the failure
// policy: kDrop reports the experts as lost (their outputs stay out of y),
// kFail returns UNAVAILABLE. Whether a failed call takes its worker down is
// the pool's decision (WorkerPool::CallFinished), not the backend's.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "router/engine/expert_backend.h"
#include "router/remote/forward_waiter.h"
#include "router/remote/worker_batcher.h"
#include "router/remote/worker_pool.h"

namespace moe::router {

enum class ExpertFailurePolicy { kDrop, kFail };

// "drop" / "fail".
const char* ExpertFailurePolicyName(ExpertFailurePolicy policy);
absl::StatusOr<ExpertFailurePolicy> ParseExpertFailurePolicy(
    absl::string_view name);

struct RemoteCallOptions {
  absl::Time deadline = absl::InfiniteFuture();  // the client's
  absl::Duration worker_timeout = absl::Seconds(30);
  ExpertFailurePolicy on_failure = ExpertFailurePolicy::kDrop;
  common::Clock* clock = common::Clock::Real();
  // The forward's request ID: its worker calls carry it (x-request-id).
  std::string request_id;
  // A replicated expert's small segment (too few rows to split) goes to a
  // copy whose open batch already runs that expert, unless a copy is idle
  // (WorkerPool::Choose); false: to the least busy copy.
  bool join_open_batches = true;
  // The forward's span as a traceparent when it is recorded (its worker
  // calls get spans of their own, children of it); "" when not.
  std::string traceparent;
};

class RemoteExpertBackend : public ExpertBackend {
 public:
  // `pool`, `batcher` and `waiter` must outlive the backend. `gating` (may
  // be null) is ended when the forward hands its first requests over.
  RemoteExpertBackend(WorkerPool* pool, WorkerBatcher* batcher,
                      std::shared_ptr<ForwardWaiter> waiter,
                      const RemoteCallOptions& options,
                      WorkerBatcher::Gating* gating = nullptr);

  absl::Status Run(const ExpertWork& work, BackendReport* report) override;

 private:
  WorkerPool* pool_;
  WorkerBatcher* batcher_;
  std::shared_ptr<ForwardWaiter> waiter_;
  RemoteCallOptions options_;
  WorkerBatcher::Gating* gating_;
  // The router answers before the client's deadline: the worker calls end
  // a reserve earlier.
  absl::Time worker_deadline_;
};

}  // namespace moe::router
