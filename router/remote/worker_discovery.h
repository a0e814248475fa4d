// WorkerDiscovery: workers found by a name that resolves to many addresses
// (a StatefulSet's headless Service: an A record per pod), re-resolved every
// `refresh`. A new address becomes a worker of the pool (an empty one is a
// normal state: the balancer gives it experts); an address that left the
// name is retired (kGone) once it has been missing for `gone_after`, and
// revived if it comes back. Nothing changes while the name does not
// resolve (logged).
//
// Thread-safety: Start() runs Refresh() on a thread of its own until the
// object is destroyed.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "router/remote/worker_pool.h"

namespace moe::router {

struct WorkerDiscoveryOptions {
  absl::Duration refresh = absl::Seconds(5);
  absl::Duration gone_after = absl::Seconds(30);
  // The addresses of the name ("IP:PORT"), e.g. common::ResolveAll.
  std::function<absl::StatusOr<std::vector<std::string>>()> resolve;
  // The transport of a new address.
  std::function<std::unique_ptr<WorkerTransport>(const std::string&)>
      make_transport;
  // Called with a new worker's index and address (its metrics).
  std::function<void(int, const std::string&)> added;
};

class WorkerDiscovery {
 public:
  // `pool` must outlive this object; the pool's workers so far are taken
  // as found under their addresses.
  WorkerDiscovery(WorkerPool* pool, WorkerDiscoveryOptions options);
  ~WorkerDiscovery();

  void Start();
  // One pass: resolve, add, retire, revive.
  void Refresh();

 private:
  WorkerPool* const pool_;
  const WorkerDiscoveryOptions options_;
  std::map<std::string, int> known_;  // address -> worker
  std::map<int, absl::Time> missing_since_;
  bool failing_ = false;  // the last resolve failed (logged once)
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace moe::router
