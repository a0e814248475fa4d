#include "router/service/admission.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace moe::router {
namespace {

// Weights of the newest sample in the drain-time average: it rises fast
// and falls slowly, so that the promise to accepted requests holds while
// the machine slows down (a flood of refused requests costs CPU too).
constexpr double kRisingWeight = 0.5;
constexpr double kFallingWeight = 0.1;

std::string Ms(absl::Duration d) {
  return absl::StrCat(absl::ToInt64Milliseconds(d), " ms");
}

}  // namespace

AdmissionController::AdmissionController(const AdmissionOptions& options)
    : options_(options) {}

int AdmissionController::SizeClass(int64_t tokens) {
  int c = 0;
  while (c + 1 < kSizeClasses && tokens >= (int64_t{4} << (2 * c))) ++c;
  return c;
}

double AdmissionController::DrainLocked(int c) const {
  for (int k = c; k < kSizeClasses; ++k) {
    if (drain_by_class_[k] > 0) return drain_by_class_[k];
  }
  return 0;
}

absl::Duration AdmissionController::WorkLocked(int64_t tokens) const {
  return absl::Seconds(tokens * DrainLocked(SizeClass(tokens)));
}

absl::Duration AdmissionController::RunningWorkLocked() const {
  double seconds = 0;
  for (int c = 0; c < kSizeClasses; ++c) {
    seconds += running_by_class_[c] * DrainLocked(c);
  }
  return absl::Seconds(seconds);
}

absl::Duration AdmissionController::ExpectedWaitLocked() const {
  double seconds = 0;
  for (int c = 0; c < kSizeClasses; ++c) {
    seconds += (queued_by_class_[c] + running_by_class_[c]) * DrainLocked(c);
  }
  return absl::Seconds(seconds);
}

void AdmissionController::Accumulate(absl::Time now) {
  if (integral_at_ != absl::InfinitePast()) {
    running_integral_ +=
        running_ * std::max(0.0, absl::ToDoubleSeconds(now - integral_at_));
  }
  integral_at_ = now;
}

absl::Duration AdmissionController::ExpectedWait() const {
  absl::ReaderMutexLock lock(&mu_);
  return ExpectedWaitLocked();
}

int64_t AdmissionController::queued_tokens() const {
  absl::ReaderMutexLock lock(&mu_);
  return queued_tokens_;
}

absl::Status AdmissionController::Admit(int64_t tokens, absl::Time deadline,
                                        Ticket* ticket, RejectReason* reason) {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  if (queued_tokens_ > 0 &&
      queued_tokens_ + tokens > options_.max_queued_tokens) {
    *reason = RejectReason::kOverloaded;
    return absl::ResourceExhaustedError(absl::StrCat(
        "router overloaded: ", queued_tokens_, " tokens already queued (",
        "--max_queued_tokens ", options_.max_queued_tokens,
        "); retry later, with backoff, or on another replica"));
  }
  const absl::Duration wait = ExpectedWaitLocked();
  if (wait > options_.max_queue_time) {
    *reason = RejectReason::kOverloaded;
    return absl::ResourceExhaustedError(
        absl::StrCat("router overloaded: a request would wait about ", Ms(wait),
                     " for the work ahead of it (--max_queue_ms ",
                     Ms(options_.max_queue_time),
                     "); retry later, with backoff, or on another replica"));
  }
  const absl::Duration service = WorkLocked(tokens);
  if (now + wait + service > deadline) {
    *reason = RejectReason::kDeadline;
    return absl::ResourceExhaustedError(absl::StrCat(
        "the deadline cannot be met: about ", Ms(wait), " of work ahead and ",
        Ms(service), " of work for ", tokens, " tokens, ",
        Ms(std::max(absl::ZeroDuration(), deadline - now)),
        " left; send a longer deadline or fewer tokens"));
  }
  queued_tokens_ += tokens;
  queued_by_class_[SizeClass(tokens)] += tokens;
  ticket->tokens = tokens;
  ticket->deadline = deadline;
  ticket->admitted = now;
  ticket->started = absl::InfinitePast();
  ticket->finished = false;
  return absl::OkStatus();
}

absl::Status AdmissionController::Start(Ticket* ticket, RejectReason* reason) {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  queued_tokens_ -= ticket->tokens;
  queued_by_class_[SizeClass(ticket->tokens)] -= ticket->tokens;
  const absl::Duration waited = now - ticket->admitted;
  // The forwards running now share the workers with it: it ends, by the
  // estimate, once their work and its own are done.
  const absl::Duration service =
      RunningWorkLocked() + WorkLocked(ticket->tokens);
  // The promise to an accepted request: it ends within --max_queue_ms plus
  // about 1.5x its own work. One that waited past the queue time, or whose
  // wait and service would now pass --max_queue_ms plus its own work (the
  // other half is the estimate's margin), is refused rather than started
  // late.
  const absl::Duration promise =
      options_.max_queue_time + WorkLocked(ticket->tokens);
  if (waited > options_.max_queue_time || waited + service > promise) {
    ticket->finished = true;
    *reason = RejectReason::kOverloaded;
    return absl::ResourceExhaustedError(
        absl::StrCat("router overloaded: the request waited ", Ms(waited),
                     " in the queue and would take about ", Ms(service),
                     " beside the running forwards (--max_queue_ms ",
                     Ms(options_.max_queue_time),
                     "); retry later, with backoff, or on another replica"));
  }
  if (now + service > ticket->deadline) {
    ticket->finished = true;
    *reason = RejectReason::kDeadline;
    return absl::ResourceExhaustedError(
        absl::StrCat("the deadline can no longer be met: about ", Ms(service),
                     " of work for its ", ticket->tokens,
                     " tokens and the running forwards' after ", Ms(waited),
                     " in the queue, ",
                     Ms(std::max(absl::ZeroDuration(), ticket->deadline - now)),
                     " left; send a longer deadline or fewer tokens"));
  }
  Accumulate(now);
  ticket->started = now;
  ticket->running_integral_at_start = running_integral_;
  ++running_;
  running_by_class_[SizeClass(ticket->tokens)] += ticket->tokens;
  return absl::OkStatus();
}

void AdmissionController::Finish(Ticket* ticket, bool ok) {
  if (ticket->finished) return;
  ticket->finished = true;
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  if (ticket->started == absl::InfinitePast()) {  // never started
    queued_tokens_ -= ticket->tokens;
    queued_by_class_[SizeClass(ticket->tokens)] -= ticket->tokens;
    return;
  }
  Accumulate(now);
  --running_;
  const int c = SizeClass(ticket->tokens);
  running_by_class_[c] -= ticket->tokens;
  const double seconds = absl::ToDoubleSeconds(now - ticket->started);
  if (!ok || ticket->tokens <= 0 || seconds <= 0) return;
  // The forwards that ran beside this one, on average (itself included).
  const double beside = std::max(
      1.0, (running_integral_ - ticket->running_integral_at_start) / seconds);
  const double drain = seconds / (ticket->tokens * beside);
  double& average = drain_by_class_[c];
  average = average == 0
                ? drain
                : average + (drain > average ? kRisingWeight : kFallingWeight) *
                                (drain - average);
}

}  // namespace moe::router
