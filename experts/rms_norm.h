// RMSNorm as st-moe-pytorch defines it (docs/numerics.md §9.2):
//   RMSNorm(x) = x / max(‖x‖₂, 1e-12) · gamma · √d
// over the last dimension. May throw c10::Error.
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::experts {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& gamma);

}  // namespace moe::experts
