#include "router/capacity.h"

#include <algorithm>
#include <cmath>

namespace moe::router {

int64_t ExpertCapacity(int64_t group_size, double capacity_factor,
                       int64_t num_experts) {
  const double raw = (static_cast<double>(group_size) * capacity_factor) /
                     static_cast<double>(num_experts);
  // Clamp before converting so that huge factors cannot overflow int64.
  const double truncated =
      std::trunc(std::min(raw, static_cast<double>(group_size)));
  const int64_t capacity =
      std::min(group_size, static_cast<int64_t>(truncated));
  return std::max(capacity, kMinExpertCapacity);
}

}  // namespace moe::router
