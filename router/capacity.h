// Expert capacity per group (docs/numerics.md §5.1):
//   C = max(kMinExpertCapacity, min(n, floor(n * capacity_factor / E)))
// with the product and quotient computed in double and truncated, as Python's
// int() does in the reference.
#pragma once

#include <cstdint>

namespace moe::router {

inline constexpr int64_t kMinExpertCapacity = 4;

// REQUIRES: group_size >= 1, capacity_factor > 0, num_experts >= 1.
int64_t ExpertCapacity(int64_t group_size, double capacity_factor,
                       int64_t num_experts);

}  // namespace moe::router
