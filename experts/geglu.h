// The st-moe-pytorch Expert: a GEGLU feed-forward with a multiplicative bias
// (docs/numerics.md §9.1):
//   u = x·W1ᵀ + b1;  a, g = u[:, :h], u[:, h:];
//   v = gelu(g) ⊙ a ⊙ mult_bias   (exact, erf-based gelu);
//   out = v·W2ᵀ + b2
// May throw c10::Error; callers at a boundary wrap it with common::TorchCall.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/torch/model_weights.h"

namespace moe::experts {

// x: [T, d] on the weights' device, of their dtype (float32, or bfloat16
// for bfloat16 compute). Writes [T, d] into `out`, which must be a
// contiguous [T, d] tensor of that dtype (it may be a row slice of a larger
// buffer). `hidden` is scratch of at least [T, 2h] elements; it is
// resized when smaller.
void GegluForwardInto(const common::ExpertWeights& w, const at::Tensor& x,
                      at::Tensor& hidden, at::Tensor out);

// Convenience form that allocates.
at::Tensor GegluForward(const common::ExpertWeights& w, const at::Tensor& x);

}  // namespace moe::experts
