// The combine step, the one implementation every backend uses:
//   y[targets[j]] += weights[j] * out[j]      for j in [0, count)
// (docs/numerics.md, "Combine"). Dropped choices have no entry and add
// nothing.
#pragma once

#include <cstdint>

namespace moe::router {

// out: [count, dim] float32 expert outputs; y: [T, dim] float32; targets and
// weights: `count` entries. written: null when y starts zeroed; else [T]
// flags for a y that starts uninitialised: a row not written yet is set to
// 0 + weights[j] * out[j] (the bits adding to a zeroed row gives) and
// flagged, so that the caller zeroes only the rows nobody wrote instead of
// all of y first.
// REQUIRES: every target in [0, T).
void CombineRows(const float* out, int64_t count, const int64_t* targets,
                 const float* weights, int64_t dim, float* y, uint8_t* written);

}  // namespace moe::router
