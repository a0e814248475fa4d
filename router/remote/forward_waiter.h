// ForwardWaiter: what one forward waits for while its expert work is out:
// its batch tickets finishing, its client going away, its deadline.
// The batcher marks tickets done; the router service cancels; the remote
// backend waits.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace moe::router {

class ForwardWaiter {
 public:
  explicit ForwardWaiter(common::Clock* clock = common::Clock::Real())
      : clock_(clock) {}

  // A new ticket, not done; returns its index.
  int AddTicket();
  // The ticket's call finished (its results are final).
  void MarkDone(int ticket);
  // The client went away: every wait returns at once, now and later.
  void Cancel();
  bool cancelled() const;

  // Waits until one of `tickets` that no earlier call returned is done,
  // cancellation, or `deadline`. Returns those done tickets (empty when
  // cancelled or at the deadline).
  std::vector<int> WaitForDone(const std::vector<int>& tickets,
                               absl::Time deadline);

 private:
  common::Clock* const clock_;
  mutable absl::Mutex mu_;
  std::vector<bool> done_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> returned_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace moe::router
