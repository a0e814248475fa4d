// Clock: the time source of everything that waits with a deadline (the
// router's batcher, backend and worker probes), so that unit tests can drive
// time by hand (tests/testing/fake_clock.h) instead of sleeping.
#pragma once

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moe::common {

class Clock {
 public:
  virtual ~Clock() = default;

  // The process-wide real clock (absl::Now).
  static Clock* Real();

  virtual absl::Time Now() const = 0;

  // With `mu` held: waits until `condition` holds or Now() reaches
  // `deadline`; returns whether the condition holds.
  virtual bool AwaitWithDeadline(absl::Mutex* mu,
                                 const absl::Condition& condition,
                                 absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// CPU time the calling thread has run so far (CLOCK_THREAD_CPUTIME_ID): the
// difference of two readings is its work in between, without the time it
// waited or stood preempted.
absl::Duration ThreadCpuTime();

}  // namespace moe::common
