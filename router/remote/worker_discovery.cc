#include "router/remote/worker_discovery.h"

#include <set>

#include "common/logging.h"

namespace moe::router {

WorkerDiscovery::WorkerDiscovery(WorkerPool* pool,
                                 WorkerDiscoveryOptions options)
    : pool_(pool), options_(std::move(options)) {
  for (int i = 0; i < pool_->size(); ++i) known_[pool_->address(i)] = i;
}

WorkerDiscovery::~WorkerDiscovery() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void WorkerDiscovery::Start() {
  thread_ = std::thread([this] {
    do {
      Refresh();
    } while (!stop_.WaitForNotificationWithTimeout(options_.refresh));
  });
}

void WorkerDiscovery::Refresh() {
  absl::StatusOr<std::vector<std::string>> found = options_.resolve();
  if (!found.ok()) {
    if (!failing_) {
      MOE_LOG(WARNING) << "worker discovery: " << found.status().message()
                       << "; keeping the workers known so far";
    }
    failing_ = true;
    return;
  }
  failing_ = false;
  const std::set<std::string> now(found->begin(), found->end());
  for (const std::string& address : now) {
    auto it = known_.find(address);
    if (it != known_.end()) {
      if (missing_since_.erase(it->second) != 0) {
        MOE_LOG(INFO) << "worker " << address << " is back among the addresses";
      }
      pool_->Revive(it->second);
      continue;
    }
    absl::StatusOr<int> index =
        pool_->AddWorker(options_.make_transport(address));
    if (!index.ok()) {
      MOE_LOG(ERROR) << "worker discovery: " << index.status().message();
      continue;
    }
    known_[address] = *index;
    MOE_LOG(INFO) << "worker discovery: new worker " << address;
    if (options_.added) options_.added(*index, address);
  }
  const absl::Time t = absl::Now();
  for (const auto& [address, index] : known_) {
    if (now.count(address) != 0) continue;
    auto [it, first] = missing_since_.emplace(index, t);
    if (first) {
      MOE_LOG(INFO) << "worker " << address
                    << " left the addresses; retired after "
                    << absl::FormatDuration(options_.gone_after);
    } else if (t - it->second >= options_.gone_after) {
      pool_->Retire(index, "no longer among the addresses of its name");
    }
  }
}

}  // namespace moe::router
