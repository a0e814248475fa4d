// RemoteExpertBackend: runs a forward's expert work on the workers, one
// ticket per worker per attempt, all in flight at once, through the router's
// WorkerBatcher (which may share a worker call among concurrent forwards).
// Built per request: it carries the request's deadline and cancellation.
//
// Failure handling (DESIGN.md section 5): experts whose worker fails (or
// misses its deadline) are retried on another healthy replica while the
// deadline allows; what is still missing then follows the failure policy:
// kDrop lists them as unavailable (their outputs stay zero) and kFail returns
// UNAVAILABLE.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "router/engine/expert_backend.h"
#include "router/service/worker_batcher.h"
#include "router/service/worker_pool.h"

namespace moe::router {

enum class ExpertFailurePolicy { kDrop, kFail };

// Cancels the worker waits of one request when its client goes away.
class CallCancellation {
 public:
  // Runs every registered callback, and every later one at once.
  void Cancel();
  bool cancelled() const;
  // Registers `fn` to run on cancellation; returns an id for Unregister, or
  // -1 (and runs nothing) when already cancelled.
  int Register(std::function<void()> fn);
  void Unregister(int id);

 private:
  mutable std::mutex mu_;
  bool cancelled_ = false;
  int next_id_ = 0;
  std::map<int, std::function<void()>> callbacks_;
};

struct RemoteCallOptions {
  absl::Time deadline = absl::InfiniteFuture();  // the client's
  absl::Duration worker_timeout = absl::Seconds(30);
  ExpertFailurePolicy on_failure = ExpertFailurePolicy::kDrop;
};

class RemoteExpertBackend : public ExpertBackend {
 public:
  // `pool`, `batcher` and `cancellation` must outlive the backend. `gating`
  // (may be null) is ended when the forward hands its first tickets over.
  RemoteExpertBackend(WorkerPool* pool, WorkerBatcher* batcher,
                      CallCancellation* cancellation,
                      const RemoteCallOptions& options,
                      WorkerBatcher::Gating* gating = nullptr)
      : pool_(pool),
        batcher_(batcher),
        cancellation_(cancellation),
        options_(options),
        gating_(gating) {}

  absl::Status RunExperts(const at::Tensor& tokens,
                          absl::Span<const experts::ExpertSegment> segments,
                          at::Tensor* out,
                          std::vector<int64_t>* unavailable) override;

  // Fused: each worker call's outputs are added into target.y straight from
  // the received bytes as soon as that call finishes.
  absl::Status RunAndCombine(const at::Tensor& tokens,
                             absl::Span<const experts::ExpertSegment> segments,
                             const CombineTarget& target,
                             std::vector<int64_t>* unavailable,
                             int64_t* combine_us) override;

  // Where the last call waited: for its batches to be sent (batch_wait: the
  // batching window), then for the workers (rpc_wait). Building the requests
  // is counted by the batcher, placing or combining the outputs by the
  // caller (combine_us).
  absl::Duration batch_wait() const { return batch_wait_; }
  absl::Duration rpc_wait() const { return rpc_wait_; }
  // Why each unavailable expert of the last call failed: "deadline" when its
  // last worker call missed its deadline, else "expert_unavailable".
  const std::map<int64_t, std::string>& failure_reasons() const {
    return failure_reasons_;
  }

 private:
  // Sends the rows, retries and applies the failure policy; `sink` takes the
  // outputs of each successful call.
  absl::Status Run(const at::Tensor& tokens,
                   absl::Span<const experts::ExpertSegment> segments,
                   std::vector<int64_t>* unavailable,
                   const std::function<void(const BatchTicket&)>& sink);

  WorkerPool* pool_;
  WorkerBatcher* batcher_;
  CallCancellation* cancellation_;
  RemoteCallOptions options_;
  WorkerBatcher::Gating* gating_;
  absl::Duration batch_wait_;
  absl::Duration rpc_wait_;
  absl::Duration sink_time_;  // placing or combining outputs
  std::map<int64_t, std::string> failure_reasons_;
};

}  // namespace moe::router
