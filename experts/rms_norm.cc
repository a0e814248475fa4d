#include "experts/rms_norm.h"

#include <ATen/ATen.h>

#include <cmath>

namespace moe::experts {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& gamma) {
  // F.normalize(x, dim=-1, eps=1e-12) * gamma * dim ** 0.5
  const double scale = std::sqrt(static_cast<double>(x.size(-1)));
  at::Tensor norm =
      at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
  return x.div(norm).mul_(gamma).mul_(scale);
}

}  // namespace moe::experts
