// FakeClock: a common::Clock whose time moves only when the test says.
// Waits with a deadline end when their condition holds or when Advance()
// carries the fake time past the deadline; tests never sleep for them.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace moe::testing {

class FakeClock : public common::Clock {
 public:
  FakeClock() = default;

  absl::Time Now() const override;
  bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& condition,
                         absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  void Advance(absl::Duration d);

  // Waits (real time, at most `timeout`) until `n` threads wait on this
  // clock with a finite deadline; false on timeout.
  bool WaitForWaiters(int n, absl::Duration timeout = absl::Seconds(10));

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::UnixEpoch() + absl::Hours(24);
  int waiters_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moe::testing
