// The st-moe-pytorch Expert: a GEGLU feed-forward with a multiplicative bias
// (docs/numerics.md §9.1):
//   u = x·W1ᵀ + b1;  a, g = u[:, :h], u[:, h:];
//   v = gelu(g) ⊙ a ⊙ mult_bias   (exact, erf-based gelu);
//   out = v·W2ᵀ + b2
// May throw c10::Error; callers at a boundary wrap it with common::TorchCall.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/torch/model_weights.h"
#include "experts/skinny_linear.h"

namespace moe::experts {

// How the two projections run. kAuto: the skinny kernel
// (experts/skinny_linear.h: one pass over each weight matrix) for float32
// blocks of at most kSkinnyMaxRows rows, and for every float32 block when
// the BLAS runs on one thread (a worker of moe-up), on a CPU that has it;
// otherwise LibTorch's GEMMs. kGemm and kSkinny force one (kSkinny falls back
// to the GEMMs where the kernel cannot run: not float32, or no AVX-512); for
// tests and benchmarks.
enum class GegluPath { kAuto, kGemm, kSkinny };

// x: [T, d] on the weights' device, of their dtype (float32, or bfloat16
// for bfloat16 compute). Writes [T, d] into `out`, which must be a
// contiguous [T, d] tensor of that dtype (it may be a row slice of a larger
// buffer). `hidden` is scratch of at least [T, 2h] elements; it is
// resized when smaller. The skinny path runs wholly without LibTorch
// (SkinnyGeglu: its own GELU, experts/skinny_linear.h); the GEMM path runs
// GELU and the products through LibTorch. The two agree to float32
// rounding (the order of the sums, and GELU's erf within 1.5e-7).
void GegluForwardInto(const common::ExpertWeights& w, const at::Tensor& x,
                      at::Tensor& hidden, at::Tensor out,
                      GegluPath path = GegluPath::kAuto);

// The raw arrays of float32, contiguous, CPU weights (for SkinnyGeglu).
SkinnyExpert SkinnyWeights(const common::ExpertWeights& w);

// Convenience form that allocates.
at::Tensor GegluForward(const common::ExpertWeights& w, const at::Tensor& x);

}  // namespace moe::experts
