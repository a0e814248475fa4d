// Why an expert assignment that the gate chose was not computed. The
// Prometheus label of moe_router_dropped_assignments_total{reason} is
// derived from it, nothing else.
#pragma once

namespace moe::router {

enum class DropReason {
  kCapacity,           // past the expert's capacity (the routing's own drop)
  kExpertUnavailable,  // no worker could run it (drop policy)
  kDeadline,           // its worker call missed the request's deadline
};

inline constexpr DropReason kAllDropReasons[] = {DropReason::kCapacity,
                                                 DropReason::kExpertUnavailable,
                                                 DropReason::kDeadline};

// "capacity", "expert_unavailable", "deadline".
inline const char* DropReasonLabel(DropReason reason) {
  switch (reason) {
    case DropReason::kCapacity:
      return "capacity";
    case DropReason::kExpertUnavailable:
      return "expert_unavailable";
    case DropReason::kDeadline:
      return "deadline";
  }
  return "unknown";
}

}  // namespace moe::router
