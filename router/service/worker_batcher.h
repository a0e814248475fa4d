// WorkerBatcher: the router's dynamic batching of worker calls.
//
// Every forward is gated, planned and combined on its own (capacity stays per
// request); only its expert rows for a worker travel in a shared RunExperts
// call. A forward hands the batcher one Ticket per worker. Tickets for a
// worker that arrive while a batch is open join it; the batch is sent
// - at once when --batch_window_us is 0 (no batching),
// - as soon as its worker has no call of ours in flight and no other forward
//   is still gating: nobody else can join soon and the worker is idle, so a
//   lone request never waits for the window; while the worker is busy the
//   forwards that arrive meanwhile gather into the next batch,
// - when the window since its first ticket has passed, or
// - when it would exceed max_rows (then the newcomer opens the next batch).
// The rows of a batch are grouped by expert, each expert's rows from every
// forward in a row, so the worker runs one GEMM per expert for all of them.
//
// A ticket's forward waits for it with its own deadline and may give up
// (deadline, cancellation: Abandon); the batch still serves the others and
// is cancelled only when every forward in it gave up. The batch call's
// deadline is the latest of its tickets'.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <ATen/core/Tensor.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "proto/expert_wire.h"
#include "router/service/worker_pool.h"

namespace moe::router {

struct BatcherOptions {
  // How long an open batch waits for more forwards; zero sends every
  // forward's call at once.
  absl::Duration window = absl::ZeroDuration();
  // Rows above which a batch takes no more forwards (a forward's own rows
  // always go, alone if need be).
  int64_t max_rows = 16384;
  moe::v1::DType wire_dtype = moe::v1::FLOAT32;
  // Router time spent building requests (gather into wire bytes).
  std::function<void(absl::Duration)> on_encode;
  // Each finished worker call: its latency, how many forwards shared it and
  // its rows.
  std::function<void(int worker, absl::Duration, int forwards, int64_t rows)>
      on_rpc;
};

// Rows [offset, offset + count) of a ticket's `src` go to `expert`.
struct BatchPiece {
  int64_t expert = 0;
  int64_t offset = 0;
  int64_t count = 0;
};

// Wakes the forward that waits for its tickets.
struct TicketWaiter {
  std::mutex mu;
  std::condition_variable cv;
  bool cancelled = false;
};

struct WorkerBatch;

// One forward's share of one worker call.
struct BatchTicket {
  // Set by the forward before Submit().
  int worker = -1;
  at::Tensor src;  // [rows, d] float32, contiguous, CPU
  std::vector<BatchPiece> pieces;
  absl::Time deadline = absl::InfiniteFuture();
  bool timeout_binds = false;  // `deadline` is the worker timeout, not the
                               // client's
  std::shared_ptr<TicketWaiter> waiter;

  // Set by the batcher. `batch` at Submit(); the rest before `done`, which
  // is guarded by waiter->mu. Once done, batch->status and batch->outputs
  // are final; piece i's output rows start at rows_in_batch[i].
  std::shared_ptr<WorkerBatch> batch;
  std::vector<int64_t> rows_in_batch;
  absl::Time sent;
  bool done = false;
};

struct WorkerBatch {
  int worker = -1;
  absl::Time close_at;
  int64_t rows = 0;
  std::vector<std::shared_ptr<BatchTicket>> tickets;  // cleared when done
  std::atomic<int> live{0};                           // tickets not abandoned
  grpc::ClientContext context;
  // Serialized RunExpertsRequest/Response (proto/expert_wire.h): the rows
  // go out from the forwards' tensors and come back read in place.
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
  grpc::Status status;
  // The response's outputs, parsed when the call succeeded; malformed
  // outputs turn `status` into INTERNAL.
  std::optional<proto::WireTensorView> outputs;
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

  // Adds the ticket to its worker's open batch (or opens one) and sends the
  // batch if it is due.
  void Submit(const std::shared_ptr<BatchTicket>& ticket);

  // The ticket's forward stops waiting for it (deadline or cancellation).
  static void Abandon(BatchTicket& ticket);

 private:
  void FlushLoop();
  // Builds and starts the batch's call (or fails it), outside mu_.
  void Send(const std::shared_ptr<WorkerBatch>& batch);
  void Finish(const std::shared_ptr<WorkerBatch>& batch, grpc::Status status,
              absl::Duration elapsed);
  void GatingDelta(int delta);
  // Whether an open batch should go now; with mu_ held.
  bool DueLocked(const WorkerBatch& batch, absl::Time now) const;

  WorkerPool* pool_;
  BatcherOptions options_;

  std::mutex mu_;
  std::condition_variable wake_;                      // the flush thread
  std::condition_variable drained_;                   // the destructor
  std::map<int, std::shared_ptr<WorkerBatch>> open_;  // by worker
  int gating_ = 0;
  int inflight_ = 0;  // batches sent and not finished
  bool stop_ = false;
  std::thread flusher_;
};

}  // namespace moe::router
