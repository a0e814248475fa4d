// WorkerPool: the router's view of its expert workers. It keeps one channel
// per worker, learns each worker's experts with GetShardInfo (at start and
// again whenever a worker comes back), probes every worker periodically, and
// picks, for an expert, a healthy worker hosting it (the least loaded one
// when replicas exist).
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/model_config.h"
#include "moe/v1/expert.grpc.pb.h"

namespace moe::router {

struct WorkerPoolOptions {
  absl::Duration probe_interval = absl::Seconds(1);
  absl::Duration probe_timeout = absl::Seconds(2);
  int max_message_bytes = 256 << 20;
};

struct WorkerSnapshot {
  std::string address;
  bool up = false;
  std::vector<int64_t> experts;
  std::string device;
  int64_t inflight = 0;
};

class WorkerPool {
 public:
  // `config` is the router's model: workers whose model differs (dim, expert
  // count, hidden size) are refused with a logged error.
  WorkerPool(std::vector<std::string> addresses,
             const common::ModelConfig& config,
             const WorkerPoolOptions& options);
  ~WorkerPool();

  // Called (from the probing thread or a failing call) whenever a worker's
  // state is decided, up or down. Set before Start().
  void SetStateObserver(std::function<void(int worker, bool up)> observer) {
    observer_ = std::move(observer);
  }

  // Starts the probing thread (probes every worker at once, then every
  // probe_interval).
  void Start();

  int size() const { return static_cast<int>(workers_.size()); }
  const std::string& address(int worker) const;
  moe::v1::ExpertWorker::Stub* stub(int worker) const;
  // The same channel for calls with pre-serialized messages.
  grpc::GenericStub* generic_stub(int worker) const;

  // A healthy worker hosting `expert`, not in `exclude`, with the fewest
  // in-flight calls; -1 if none.
  int Choose(int64_t expert, const std::set<int>& exclude) const;

  // Experts (0..total-1) that no healthy worker hosts.
  std::vector<int64_t> UncoveredExperts() const;

  // Called on a failed call: the worker is considered down until a probe
  // succeeds again.
  void MarkDown(int worker, const std::string& why);

  void AddInflight(int worker, int delta);
  // Calls to `worker` in flight from this router.
  int64_t inflight(int worker) const { return workers_[worker]->inflight; }

  std::vector<WorkerSnapshot> Snapshot() const;

 private:
  struct Worker {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<moe::v1::ExpertWorker::Stub> stub;
    std::unique_ptr<grpc::GenericStub> generic_stub;
    bool up = false;               // guarded by mu_
    std::vector<int64_t> experts;  // guarded by mu_
    std::string device;            // guarded by mu_
    std::atomic<int64_t> inflight{0};
  };

  void ProbeLoop();
  void Probe(int worker);

  common::ModelConfig config_;
  WorkerPoolOptions options_;
  std::vector<std::unique_ptr<Worker>> workers_;
  mutable std::mutex mu_;
  absl::Notification stop_;
  std::thread prober_;
  std::function<void(int, bool)> observer_;
};

}  // namespace moe::router
