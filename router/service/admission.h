// Admission by work, not by count. A Forward is refused at once, with
// RESOURCE_EXHAUSTED and a message saying what to do, when
//   - the tokens already queued plus its own exceed max_queued_tokens
//     (reason "overloaded"),
//   - the expected wait exceeds max_queue_time ("overloaded"): the time the
//     router needs to finish the work it already holds, queued and running,
//     before this request's own, or
//   - its deadline cannot be met: expected wait plus its own expected
//     service time end after it ("deadline");
// and when a thread picks a forward up, it is refused then if it waited
// longer than max_queue_time, or if its wait and the work of the forwards
// running now and its own would pass max_queue_time plus its own work
// ("overloaded": the aim is that an accepted request ends within
// max_queue_time plus about 1.5x its own work), or if that work would end
// after its deadline ("deadline"). Nothing is started only to miss its
// deadline.
//
// The wait counts the running forwards' tokens as well as the queued ones:
// forwards that run beside each other share the workers and the CPU, so a
// request admitted behind a full set of running forwards finishes only
// after their work too. Counting the queue alone let accepted requests take
// 4x --max_queue_ms at 64 clients.
//
// The estimates come from the forwards that finished: each gives its
// drain time per token, its service time divided by its tokens and by the
// forwards that ran beside it on average (so that sharing the workers is
// counted once), averaged so that it rises fast and falls slowly: the
// inverse of the router's throughput in tokens. The work held then drains in
// (queued + running tokens) x drain time.
//
// A forward has a fixed cost as well as one per token, so the drain time per
// token of a decode step (a few tokens) is many times that of a prefill
// (thousands): one number learned from the first would refuse the second as
// unable to meet any deadline, and refuse every decode step while a prefill
// runs. The estimate is therefore kept per size class (powers of 4 of the
// tokens). A class no forward of which finished yet borrows the estimate of
// the nearest larger class that has one, a lower bound; with none, its work
// counts as nothing: nothing is refused on a guess, as before any forward
// finished at all.
//
// Thread-safe.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "router/service/reject_reason.h"

namespace moe::router {

struct AdmissionOptions {
  int64_t max_queued_tokens = 262144;
  absl::Duration max_queue_time = absl::Seconds(2);
  common::Clock* clock = common::Clock::Real();
};

class AdmissionController {
 public:
  explicit AdmissionController(const AdmissionOptions& options);

  // One admitted forward, from Admit() to Finish().
  struct Ticket {
    int64_t tokens = 0;
    absl::Time deadline = absl::InfiniteFuture();
    absl::Time admitted;
    absl::Time started;  // InfinitePast until Start()
    double running_integral_at_start = 0;
    bool finished = true;  // until Admit()
  };

  // OK with *ticket filled, or ResourceExhausted; *reason is then
  // kOverloaded or kDeadline.
  absl::Status Admit(int64_t tokens, absl::Time deadline, Ticket* ticket,
                     RejectReason* reason);
  // The forward leaves the queue and runs; ResourceExhausted (and the
  // ticket is finished) when it waited longer than max_queue_time
  // (*reason kOverloaded) or would now end after its deadline (kDeadline).
  absl::Status Start(Ticket* ticket, RejectReason* reason);
  // The forward ended (after Start, or instead of it); `ok` forwards teach
  // the estimate.
  void Finish(Ticket* ticket, bool ok);

  // What a forward admitted now would wait, by the estimate: the queued and
  // running work.
  absl::Duration ExpectedWait() const;
  int64_t queued_tokens() const;

  // Size classes: class c holds forwards of [4^c, 4^(c+1)) tokens, the last
  // one everything larger.
  static constexpr int kSizeClasses = 12;
  static int SizeClass(int64_t tokens);

 private:
  absl::Duration ExpectedWaitLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The time `tokens` of work take at the router's throughput.
  absl::Duration WorkLocked(int64_t tokens) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The running forwards' work.
  absl::Duration RunningWorkLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Drain seconds per token for forwards of class c (see above).
  double DrainLocked(int c) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Brings the integral of running_ over time up to `now`.
  void Accumulate(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AdmissionOptions options_;
  mutable absl::Mutex mu_;
  int64_t queued_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  // Per size class: queued and running tokens, and the drain seconds per
  // token averaged over its finished forwards (0 until one finished).
  int64_t queued_by_class_[kSizeClasses] ABSL_GUARDED_BY(mu_) = {};
  int64_t running_by_class_[kSizeClasses] ABSL_GUARDED_BY(mu_) = {};
  double drain_by_class_[kSizeClasses] ABSL_GUARDED_BY(mu_) = {};
  // The integral of running_ over time (forward-seconds), and when it was
  // last brought up to date.
  double running_integral_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time integral_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace moe::router
