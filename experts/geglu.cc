#include "experts/geglu.h"

#include <ATen/ATen.h>

#include "common/blas_kernels.h"
#include "experts/skinny_linear.h"

namespace moe::experts {
namespace {

bool UseSkinny(const common::ExpertWeights& w, const at::Tensor& x,
               const at::Tensor& out, GegluPath path) {
  if (path == GegluPath::kGemm) return false;
  if (path == GegluPath::kAuto && x.size(0) > kSkinnyMaxRows &&
      (BlasThreads() != 1 || common::OpenBlasRunsAvx512Kernels())) {
    return false;
  }
  if (!SkinnyLinearAvailable()) return false;
  for (const at::Tensor* t :
       {&x, &out, &w.w1, &w.b1, &w.mult_bias, &w.w2, &w.b2}) {
    if (t->scalar_type() != at::kFloat || !t->is_contiguous() ||
        !t->device().is_cpu()) {
      return false;
    }
  }
  return true;
}

}  // namespace

SkinnyExpert SkinnyWeights(const common::ExpertWeights& w) {
  SkinnyExpert e;
  e.w1 = w.w1.data_ptr<float>();
  e.b1 = w.b1.data_ptr<float>();
  e.mult = w.mult_bias.data_ptr<float>();
  e.w2 = w.w2.data_ptr<float>();
  e.b2 = w.b2.data_ptr<float>();
  e.dim = w.w1.size(1);
  e.hidden = w.mult_bias.numel();
  return e;
}

void GegluForwardInto(const common::ExpertWeights& w, const at::Tensor& x,
                      at::Tensor& hidden, at::Tensor out, GegluPath path) {
  const int64_t tokens = x.size(0);
  const int64_t two_h = w.w1.size(0);
  const int64_t h = two_h / 2;
  if (!hidden.defined() || hidden.numel() < tokens * two_h) {
    // Grown to a power of two rows, so that calls of varying sizes reuse it
    // (or, freed, one of a few block sizes) instead of fragmenting the heap.
    int64_t rows = 1;
    while (rows < tokens) rows *= 2;
    hidden = at::empty({rows * two_h}, x.options());
  }
  if (UseSkinny(w, x, out, path)) {
    SkinnyGeglu(SkinnyWeights(w), x.data_ptr<float>(), tokens,
                hidden.data_ptr<float>(), out.data_ptr<float>());
    return;
  }
  // The value and the gate halves of u = x·W1ᵀ + b1 as two contiguous
  // [T, h] blocks (two GEMMs), not the two column halves of one [T, 2h]:
  // LibTorch's vectorised GELU and products need contiguous operands (on a
  // column half GELU runs about 7x slower), and so does the second GEMM's
  // fastest path. Each element is the same dot product either way.
  at::Tensor value = hidden.narrow(0, 0, tokens * h).view({tokens, h});
  at::Tensor gate = hidden.narrow(0, tokens * h, tokens * h).view({tokens, h});
  at::addmm_out(value, w.b1.narrow(0, 0, h), x, w.w1.narrow(0, 0, h).t());
  at::addmm_out(gate, w.b1.narrow(0, h, h), x, w.w1.narrow(0, h, h).t());
  // Same order as the reference: (gelu(gate) * value) * mult_bias, in place
  // in the gate block (no temporary).
  at::Tensor v = at::gelu_(gate).mul_(value).mul_(w.mult_bias);
  at::addmm_out(out, w.b2, v, w.w2.t());
}

at::Tensor GegluForward(const common::ExpertWeights& w, const at::Tensor& x) {
  at::Tensor out = at::empty({x.size(0), w.w2.size(0)}, x.options());
  at::Tensor hidden;
  GegluForwardInto(w, x, hidden, out);
  return out;
}

}  // namespace moe::experts
