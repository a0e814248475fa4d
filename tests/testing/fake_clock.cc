#include "testing/fake_clock.h"

namespace moe::testing {

absl::Time FakeClock::Now() const {
  absl::MutexLock lock(&mu_);
  return now_;
}

bool FakeClock::AwaitWithDeadline(absl::Mutex* mu,
                                  const absl::Condition& condition,
                                  absl::Time deadline) {
  const bool finite = deadline != absl::InfiniteFuture();
  if (finite) {
    absl::MutexLock lock(&mu_);
    ++waiters_;
  }
  bool result = false;
  for (;;) {
    if (condition.Eval()) {
      result = true;
      break;
    }
    if (Now() >= deadline) break;
    // The condition wakes the wait at once; fake time is looked at again
    // every millisecond of real time (the clock cannot signal `mu`).
    mu->AwaitWithTimeout(condition, absl::Milliseconds(1));
  }
  if (finite) {
    absl::MutexLock lock(&mu_);
    --waiters_;
  }
  return result;
}

void FakeClock::Advance(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  now_ += d;
}

bool FakeClock::WaitForWaiters(int n, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return waiters_ >= n;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

}  // namespace moe::testing
