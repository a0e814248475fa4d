#include "router/remote/forward_waiter.h"

namespace moe::router {

int ForwardWaiter::AddTicket() {
  absl::MutexLock lock(&mu_);
  done_.push_back(false);
  returned_.push_back(false);
  return static_cast<int>(done_.size()) - 1;
}

void ForwardWaiter::MarkDone(int ticket) {
  absl::MutexLock lock(&mu_);
  done_[ticket] = true;
}

void ForwardWaiter::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
}

bool ForwardWaiter::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

std::vector<int> ForwardWaiter::WaitForDone(const std::vector<int>& tickets,
                                            absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cancelled_) return true;
    for (int t : tickets) {
      if (done_[t] && !returned_[t]) return true;
    }
    return false;
  };
  clock_->AwaitWithDeadline(&mu_, absl::Condition(&ready), deadline);
  std::vector<int> out;
  if (cancelled_) return out;
  for (int t : tickets) {
    if (done_[t] && !returned_[t]) {
      returned_[t] = true;
      out.push_back(t);
    }
  }
  return out;
}

}  // namespace moe::router
