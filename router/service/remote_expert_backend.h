// RemoteExpertBackend: runs a forward's expert work on the workers, one
// ticket per worker per attempt, all in flight at once, through the router's
// WorkerBatcher (which may share a worker call among concurrent forwards).
// Built per request: it carries the request's deadline, cancellation and
// failure policy.
//
// One Run() is four steps: Assign (each segment to the least-loaded healthy
// worker hosting it), Submit (the tickets to the batcher), Await (each call
// as it finishes: its outputs combined into y at once, its segments queued
// for a retry on another replica when it failed), and, for what no worker
// could run before the deadline, the failure policy: kDrop reports the
// experts as lost (their outputs stay out of y), kFail returns UNAVAILABLE.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "router/engine/expert_backend.h"
#include "router/service/forward_waiter.h"
#include "router/service/worker_batcher.h"
#include "router/service/worker_pool.h"

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
};

class RemoteExpertBackend : public ExpertBackend {
 public:
  // `pool`, `batcher` and `waiter` must outlive the backend. `gating` (may
  // be null) is ended when the forward hands its first tickets over.
  RemoteExpertBackend(WorkerPool* pool, WorkerBatcher* batcher,
                      std::shared_ptr<ForwardWaiter> waiter,
                      const RemoteCallOptions& options,
                      WorkerBatcher::Gating* gating = nullptr);

  absl::Status Run(const ExpertWork& work, BackendReport* report) override;

 private:
  // Where a segment stands.
  struct Attempt {
    std::set<int> tried;  // workers that failed it
    absl::Status last_error;
    bool deadline = false;  // the last failure was a missed deadline
  };
  struct Pending {
    std::shared_ptr<BatchTicket> ticket;
    std::vector<size_t> segments;  // indices into work.segments
  };

  // Each pending segment to a worker; the ones no worker hosts go to
  // `failed`.
  std::vector<Pending> Assign(const ExpertWork& work,
                              const std::vector<size_t>& pending,
                              std::vector<Attempt>& attempts,
                              std::vector<size_t>& failed);
  void Submit(const ExpertWork& work, std::vector<Pending>& calls,
              absl::Time now);
  // Waits for the calls: combines what arrives, collects segments to retry.
  // Cancelled when the client went away.
  absl::Status Await(const ExpertWork& work, std::vector<Pending>& calls,
                     std::vector<Attempt>& attempts, std::vector<size_t>& retry,
                     std::vector<size_t>& failed, BackendReport* report);
  absl::Status ApplyFailurePolicy(const ExpertWork& work,
                                  const std::vector<size_t>& failed,
                                  const std::vector<Attempt>& attempts,
                                  BackendReport* report) const;

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
