#include "experts/geglu.h"

#include <ATen/ATen.h>

namespace moe::experts {

void GegluForwardInto(const common::ExpertWeights& w, const at::Tensor& x,
                      at::Tensor& hidden, at::Tensor out) {
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
  at::Tensor u = hidden.narrow(0, 0, tokens * two_h).view({tokens, two_h});
  at::addmm_out(u, w.b1, x, w.w1.t());
  at::Tensor value = u.narrow(1, 0, h);
  at::Tensor gate = u.narrow(1, h, h);
  // Same order as the reference: (gelu(gate) * value) * mult_bias, in place
  // in the gate half of `hidden` (no temporary).
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
