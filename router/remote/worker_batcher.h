// WorkerBatcher: the router's dynamic batching of worker calls.
//
// Every forward is gated, planned and combined on its own (capacity stays per
// request); only its expert rows for a worker travel in a shared RunExperts
// call. A forward hands the batcher one BatchTicket per worker. Tickets for a
// worker that arrive while a batch is open join it; the batch is sent
// - at once when the window is zero (no batching),
// - as soon as its worker has no call of ours in flight and no other forward
//   is still gating: nobody else can join soon and the worker is idle, so a
//   lone request never waits for the window; while the worker is busy the
//   forwards that arrive meanwhile gather into the next batch,
// - when the window since its first ticket has passed, or
// - when it would exceed max_rows (then the newcomer opens the next batch).
// The rows of a batch are grouped by expert (layer, then id), each expert's
// rows from every forward in a row, so the worker runs one GEMM per expert
// for all of them; forwards of different layers share a call.
//
// A ticket's forward waits for it (ForwardWaiter) with its own deadline and
// may give up (Abandon); the batch still serves the others and is cancelled
// only when every forward in it gave up. The batch call's deadline is the
// latest of its tickets'.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/dtype.h"
#include "common/expert_segment.h"
#include "common/tracing.h"
#include "proto/expert_wire.h"
#include "router/remote/forward_waiter.h"
#include "router/remote/worker_pool.h"

namespace moe::router {

struct BatcherOptions {
  // How long an open batch waits for more forwards; zero sends every
  // forward's call at once.
  absl::Duration window = absl::ZeroDuration();
  // Rows above which a batch takes no more forwards (a forward's own rows
  // always go, alone if need be).
  int64_t max_rows = 16384;
  common::DType wire_dtype = common::DType::kFloat32;
  common::Clock* clock = common::Clock::Real();
  // Router time spent building and starting calls.
  std::function<void(absl::Duration)> on_encode;
  // Each finished worker call: its latency, how many forwards shared it and
  // its rows.
  std::function<void(int worker, absl::Duration, int forwards, int64_t rows)>
      on_rpc;
  // Records a span of each call for every traced forward in it (a child of
  // the forward's span; WorkerRequest::traceparent); none when null. Must
  // outlive the batcher.
  const common::Tracer* tracer = nullptr;
};

// What one forward asks of one worker: rows of its gathered block for some
// of the worker's experts.
struct WorkerRequest {
  int worker = -1;
  // [*, dim] float32 rows the segments' offsets index; `owner` keeps them
  // alive until the call no longer needs them.
  const float* rows = nullptr;
  std::shared_ptr<const void> owner;
  int64_t dim = 0;
  std::vector<common::ExpertSegment> segments;
  absl::Time deadline = absl::InfiniteFuture();
  // `deadline` is the worker timeout, not the client's: missing it means
  // the worker is slow (the pool takes it down).
  bool timeout_binds = false;
  // Who waits for the answer, and under which of its ticket numbers
  // (ForwardWaiter::AddTicket).
  std::shared_ptr<ForwardWaiter> waiter;
  int waiter_index = -1;
  // The forward's request ID ("" for none): the call carrying the request
  // sends it to the worker (WorkerTransport::StartRunExperts).
  std::string request_id;
  // The forward's span as a traceparent, when it is recorded ("" when not).
  std::string traceparent;
};

class WorkerBatch;

// One forward's share of one worker call: the handle Submit() returns. The
// batcher alone writes it; the forward reads it once its waiter reported
// the ticket done (ForwardWaiter::MarkDone orders the writes before the
// reads).
class BatchTicket {
 public:
  const WorkerRequest& request() const { return request_; }
  int worker() const { return request_.worker; }
  // When the call carrying the ticket left (InfinitePast until then).
  absl::Time sent_at() const;

  // After done: the call's final status.
  const absl::Status& call_status() const;
  // After done with an OK status: rows [first, first + count) of the
  // outputs of segment `segment` as float32, read in place or converted
  // into *scratch (proto::RunExpertsResponseView::FloatRows).
  const float* OutputRows(size_t segment, int64_t first, int64_t count,
                          std::vector<float>* scratch) const;

 private:
  friend class WorkerBatcher;
  explicit BatchTicket(WorkerRequest request) : request_(std::move(request)) {}

  const WorkerRequest request_;
  // Set by the batcher: at Submit(), and when the call is built (before it
  // starts); final before MarkDone.
  std::shared_ptr<WorkerBatch> batch_;
  std::vector<int64_t> rows_in_batch_;  // segment i's first output row
  std::atomic<int64_t> sent_nanos_{std::numeric_limits<int64_t>::min()};
};

class WorkerBatcher {
 public:
  // `pool` must outlive the batcher.
  WorkerBatcher(WorkerPool* pool, const BatcherOptions& options);
  // Sends what is still open and waits for every call in flight.
  ~WorkerBatcher();

  // Marks a forward that may still submit tickets: open batches wait for it
  // (up to the window). Done() (or the destructor) ends that.
  class Gating {
   public:
    explicit Gating(WorkerBatcher* batcher);
    ~Gating() { Done(); }
    Gating(const Gating&) = delete;
    Gating& operator=(const Gating&) = delete;
    void Done();

   private:
    WorkerBatcher* batcher_;
  };

  // Adds the request to its worker's open batch (or opens one) and sends
  // the batch if it is due. The waiter hears of the ticket once its call
  // ended.
  std::shared_ptr<const BatchTicket> Submit(WorkerRequest request);

  // The ticket's forward stops waiting for it (deadline or cancellation).
  static void Abandon(const BatchTicket& ticket);

  // Forwards in worker `worker`'s open batch (not sent yet).
  int WaitingForwards(int worker) const ABSL_LOCKS_EXCLUDED(mu_);
  // The experts the open batches carry rows of, as (expert, worker) pairs
  // in order: a replicated expert's few rows can join the batch that
  // already runs that expert (RemoteCallOptions::join_open_batches).
  std::vector<std::pair<common::ExpertKey, int>> OpenExperts() const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void FlushLoop();
  // Builds and starts the batch's call (or fails it), outside mu_.
  void Send(const std::shared_ptr<WorkerBatch>& batch) ABSL_LOCKS_EXCLUDED(mu_);
  void Finish(const std::shared_ptr<WorkerBatch>& batch, absl::Status status,
              grpc::ByteBuffer response, absl::Duration elapsed)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The batch's call, its rows grouped by expert; sets each ticket's rows.
  grpc::ByteBuffer Encode(WorkerBatch& batch) const;
  // Ends the spans of the batch's call with its status.
  void EndSpans(WorkerBatch* batch, const absl::Status& status) const;
  void GatingDelta(int delta);
  // Whether an open batch should go now.
  bool DueLocked(const WorkerBatch& batch, absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Only while a batch is open (or at the end): the flusher has nothing to
  // do otherwise, and each wake-up is a context switch that can preempt a
  // forward's thread.
  void WakeFlusherLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stop_ || !open_.empty()) ++epoch_;
  }

  WorkerPool* const pool_;
  const BatcherOptions options_;

  mutable absl::Mutex mu_;
  std::map<int, std::shared_ptr<WorkerBatch>> open_ ABSL_GUARDED_BY(mu_);
  int gating_ ABSL_GUARDED_BY(mu_) = 0;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;    // batches sent, not finished
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;  // bumped when a batch may be due
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread flusher_;
};

}  // namespace moe::router
