#include "experts/cuda/host_expert.h"

#include <cmath>

namespace moe::experts::gpu {

bool WellFormed(const HostExpert& e) {
  const size_t d = static_cast<size_t>(e.dim);
  const size_t h = static_cast<size_t>(e.hidden);
  return e.dim > 0 && e.hidden > 0 && e.w1.size() == 2 * h * d &&
         e.b1.size() == 2 * h && e.mult_bias.size() == h &&
         e.w2.size() == d * h && e.b2.size() == d;
}

void ReferenceForward(const HostExpert& e, const float* x, int64_t rows,
                      float* y) {
  const int64_t d = e.dim;
  const int64_t h = e.hidden;
  std::vector<double> v(static_cast<size_t>(h));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    for (int64_t j = 0; j < h; ++j) {
      double value = e.b1[j];
      double gate = e.b1[h + j];
      const float* wv = e.w1.data() + j * d;
      const float* wg = e.w1.data() + (h + j) * d;
      for (int64_t c = 0; c < d; ++c) {
        value += static_cast<double>(wv[c]) * xr[c];
        gate += static_cast<double>(wg[c]) * xr[c];
      }
      const double gelu = 0.5 * gate * (1.0 + std::erf(gate / std::sqrt(2.0)));
      v[j] = gelu * value * e.mult_bias[j];
    }
    for (int64_t c = 0; c < d; ++c) {
      double acc = e.b2[c];
      const float* w = e.w2.data() + c * h;
      for (int64_t j = 0; j < h; ++j) acc += static_cast<double>(w[j]) * v[j];
      y[r * d + c] = static_cast<float>(acc);
    }
  }
}

}  // namespace moe::experts::gpu
