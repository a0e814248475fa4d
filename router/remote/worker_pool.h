// WorkerPool: the router's view of its expert workers. It keeps one
// transport per worker, learns each worker's model and experts with
// GetShardInfo (at start and again whenever a worker comes back), probes
// every worker periodically, and picks, for an expert of a layer, a healthy
// worker hosting it (the least loaded one when replicas exist, equals taken
// in turn; a worker that is leaving only when no other hosts it).
//
// Placement changes at run time (docs/placement.md): every probe takes the
// worker's current experts and generation; a call refused because the
// worker no longer hosts an expert (FAILED_PRECONDITION) probes it at once
// (Reprobe) before its work is assigned again.
//
// A worker serving another model (another fingerprint), another dim or
// nothing this model needs is refused: its experts count as having no
// worker, and the reason is logged once when first seen and kept for
// GetModelInfo.
//
// Worker health is decided here and only here: by the probes, and by the
// outcome of every call the batcher reports (CallFinished).
//
// Readiness: the pool becomes ready the first time every expert of every
// layer has a healthy worker, and stays so (later losses fall under the
// failure policy).
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "common/expert_segment.h"
#include "common/expert_set.h"
#include "common/model_spec.h"
#include "router/remote/worker_transport.h"

namespace moe::router {

enum class WorkerState {
  kConnecting,     // not probed successfully yet
  kUp,             // serving this model; its experts are used
  kUnreachable,    // its probe fails
  kWrongModel,     // another fingerprint, dim or layer layout
  kNothingUseful,  // this model, but none of its experts (yet: a new
                   // worker waiting for the balancer)
  kDown,           // a call failed; out until a probe passes
  kGone,           // no longer among the addresses its name resolves to
};

// "connecting", "up", "unreachable", "wrong_model", "nothing_useful", "down",
// "gone".
const char* WorkerStateName(WorkerState state);

struct WorkerPoolOptions {
  // Workers the pool can hold, counting those added later (AddWorker); 0:
  // exactly the ones it starts with.
  int max_workers = 0;
  absl::Duration probe_interval = absl::Seconds(1);
  absl::Duration probe_timeout = absl::Seconds(2);
  common::Clock* clock = common::Clock::Real();
};

struct WorkerSnapshot {
  std::string address;
  WorkerState state = WorkerState::kConnecting;
  std::string reason;  // why it is not up
  std::string fingerprint;
  std::string model_name;
  std::string device;
  std::string compute_dtype;
  common::ExpertSet experts;
  int64_t inflight = 0;
  int64_t generation = 0;  // of its placement
  bool leaving = false;    // stopping once its experts moved away
};

class WorkerPool {
 public:
  // `spec` and `fingerprint` are the router's model.
  WorkerPool(std::vector<std::unique_ptr<WorkerTransport>> transports,
             const common::ModelSpec& spec, std::string fingerprint,
             const WorkerPoolOptions& options);
  ~WorkerPool();

  // Called whenever a worker's state is decided (from the probing thread or
  // a failing call). Set before Start().
  void SetStateObserver(std::function<void(int worker, WorkerState)> observer) {
    observer_ = std::move(observer);
  }

  // Starts the probing thread: every worker at once, then every
  // probe_interval.
  void Start();
  // One probe of every worker, synchronously (what the thread does).
  void ProbeAll();

  // Workers so far (indices are never reused).
  int size() const { return size_.load(std::memory_order_acquire); }
  // A worker found after the start (WorkerDiscovery): its index, probed from
  // the next round on. ResourceExhausted past max_workers.
  absl::StatusOr<int> AddWorker(std::unique_ptr<WorkerTransport> transport);
  // `worker` left the addresses of its name: out of use (kGone) until
  // Revive().
  void Retire(int worker, const std::string& why);
  void Revive(int worker);
  const std::string& address(int worker) const;
  WorkerTransport& transport(int worker) const;

  // A turn for Choose() and Replicas(): one per forward's assignment, so
  // that equals are taken in turn from one forward to the next while one
  // forward's experts stay together (fewer calls).
  uint64_t NextTurn() const { return turn_++; }
  // A healthy worker hosting `key`, not in `exclude`, with the fewest
  // in-flight calls (equals: the first from worker `turn` % size() on;
  // leaving workers last); -1 if none.
  // When a host in `joining` (the workers whose open batch already runs
  // `key`) is eligible and no host is idle, the least busy of those: the
  // expert's rows share one weight read there.
  int Choose(common::ExpertKey key, const std::set<int>& exclude,
             uint64_t turn = 0, absl::Span<const int> joining = {}) const;
  // Every healthy worker hosting `key`, not in `exclude`, fewest in-flight
  // calls first (equals as Choose(); leaving workers only when there is no
  // other).
  std::vector<int> Replicas(common::ExpertKey key, const std::set<int>& exclude,
                            uint64_t turn = 0) const;

  // Probes `worker` now, in the calling thread: after it refused a call
  // for an expert it no longer hosts (FAILED_PRECONDITION), its experts
  // are learned before the work is assigned again.
  void Reprobe(int worker) { Probe(worker); }

  // Experts that no healthy worker hosts.
  common::ExpertSet Uncovered() const;
  // "layer \"a\" experts [0-1]; layer \"b\" experts [3]".
  std::string DescribeUncovered() const;
  bool ready() const { return ready_.load(); }

  // A call to `worker` starts, and ends with `status`. A worker that was
  // unreachable, broken (INTERNAL, UNKNOWN), or slower than the worker
  // timeout (DEADLINE_EXCEEDED with `timeout_binds`: the call's deadline
  // was the worker timeout, not the client's) is down until a probe passes.
  void CallStarted(int worker);
  void CallFinished(int worker, const absl::Status& status, bool timeout_binds);
  // Calls to `worker` in flight.
  int64_t inflight(int worker) const;

  std::vector<WorkerSnapshot> Snapshot() const;

 private:
  struct Worker {
    std::unique_ptr<WorkerTransport> transport;
    std::atomic<int64_t> inflight{0};
  };
  struct View {
    WorkerState state = WorkerState::kConnecting;
    std::string reason;
    std::string fingerprint;
    std::string model_name;
    std::string device;
    std::string compute_dtype;
    common::ExpertSet experts;
    int64_t generation = 0;
    bool leaving = false;
  };

  // A healthy worker hosting an expert, as Choose() and Replicas() rank it:
  // staying before leaving, then fewer calls in flight, then scan order.
  struct Host {
    bool leaving;
    int64_t load;
    int order;  // from worker `turn` on
    int worker;
    bool Before(const Host& o) const {
      return std::tie(leaving, load, order) <
             std::tie(o.leaving, o.load, o.order);
    }
  };
  // Every healthy worker hosting `key`, not in `exclude`, scanned from
  // worker `turn` % size() on.
  void ForEachHost(common::ExpertKey key, const std::set<int>& exclude,
                   uint64_t turn,
                   absl::FunctionRef<void(const Host&)> visit) const
      ABSL_LOCKS_EXCLUDED(mu_);

  void ProbeLoop();
  void Probe(int worker);
  // The state a successful GetShardInfo puts a worker in, and why.
  WorkerState Judge(const moe::v1::ShardInfo& info, std::string* reason) const;
  void SetState(int worker, View view) ABSL_LOCKS_EXCLUDED(mu_);
  void MarkDown(int worker, const absl::Status& why) ABSL_LOCKS_EXCLUDED(mu_);
  common::ExpertSet UncoveredLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const common::ModelSpec spec_;
  const std::string fingerprint_;
  const WorkerPoolOptions options_;
  // Fixed capacity: slots are filled once and never move, so readers index
  // them without a lock below size_.
  int capacity_ = 0;
  std::unique_ptr<std::unique_ptr<Worker>[]> workers_;
  std::atomic<int> size_{0};
  absl::Mutex add_mu_;  // one AddWorker at a time
  mutable absl::Mutex mu_;
  std::vector<View> views_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> ready_{false};
  mutable std::atomic<uint64_t> turn_{0};  // equals taken in turn
  absl::Notification stop_;
  std::thread prober_;
  std::function<void(int, WorkerState)> observer_;
};

}  // namespace moe::router
