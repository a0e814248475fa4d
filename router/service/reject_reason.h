// Why the router refused a request before routing it. The Prometheus label
// of moe_router_rejected_requests_total{reason} is derived from it, nothing
// else.
#pragma once

namespace moe::router {

enum class RejectReason {
  kQueueFull,        // the router's queue of forwards is full
  kTooManyTokens,    // over max_tokens_per_request
  kOverloaded,       // too many tokens queued, or too long a queue
  kDeadline,         // its deadline cannot be met
  kUnauthenticated,  // no token, or an unknown one
  kNotReady,         // some expert has never had a worker
};

inline constexpr RejectReason kAllRejectReasons[] = {
    RejectReason::kQueueFull,       RejectReason::kTooManyTokens,
    RejectReason::kOverloaded,      RejectReason::kDeadline,
    RejectReason::kUnauthenticated, RejectReason::kNotReady};

// "queue_full", "too_many_tokens", "overloaded", "deadline",
// "unauthenticated", "not_ready".
inline const char* RejectReasonLabel(RejectReason reason) {
  switch (reason) {
    case RejectReason::kQueueFull:
      return "queue_full";
    case RejectReason::kTooManyTokens:
      return "too_many_tokens";
    case RejectReason::kOverloaded:
      return "overloaded";
    case RejectReason::kDeadline:
      return "deadline";
    case RejectReason::kUnauthenticated:
      return "unauthenticated";
    case RejectReason::kNotReady:
      return "not_ready";
  }
  return "unknown";
}

}  // namespace moe::router
