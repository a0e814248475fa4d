// The combine step, the one implementation every backend uses:
//   y[targets[j]] += weights[j] * out[j]      for j in [0, count)
// (docs/numerics.md, "Combine"). Dropped choices have no entry and add
// nothing.
#pragma once

#include <cstdint>

namespace moe::router {

// out: [count, dim] float32 expert outputs; y: [T, dim] float32; targets and
// weights: `count` entries.
// REQUIRES: every target in [0, T).
void CombineRows(const float* out, int64_t count, const int64_t* targets,
                 const float* weights, int64_t dim, float* y);

}  // namespace moe::router
