// Plain data shared by the host side of the GPU backend and its kernels
// (geglu_kernels.cu): the per-problem descriptors the kernels read from
// device memory. Element types are the project's common::DType. Addresses are
// device addresses held as integers, so that the host-side planner (gpu_plan.h)
// builds and tests them without the CUDA runtime.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace moe::experts::gpu {

// One expert's parameters on the device, in the compute dtype (docs/
// numerics.md, "Expert"): w1 [2h, d] (rows 0..h-1 value, h..2h-1 gate), b1
// [2h], mult_bias [h], w2 [d, h] with rows HiddenStride(h) apart, b2 [d].
struct ExpertDevicePtrs {
  uint64_t w1 = 0, b1 = 0, mult_bias = 0, w2 = 0, b2 = 0;
  int64_t hidden = 0;
};

// The row stride, in elements, of every [*, h] array the backend lays out
// (W2 on the device, v) and half that of u: h rounded up to 8 elements, so
// that each row starts on 16 bytes in float32 and bfloat16 alike. cuBLAS's
// vectorised (and Hopper's TMA) kernels need 16-byte-aligned leading
// dimensions; bfloat16 rows of an odd h, such as the README
// configuration's 1365, would otherwise be 2-byte aligned. The padding is
// never read: GEMMs and kernels reduce over h elements only.
constexpr int64_t HiddenStride(int64_t h) { return (h + 7) / 8 * 8; }

// The most rows a problem may have for a pass to take the small-rows path
// (geglu_kernels.h: a warp per weight row, every row of the problem at
// once, for decode calls bound by reading the weights).
inline constexpr int kMaxSmallRows = 8;

// The GEGLU between the two projections, for one problem (one expert's
// rows of a pass): v[r, j] = gelu(u[r, h + j] + b1[h + j]) *
// (u[r, j] + b1[j]) * mult_bias[j] for r < rows, j < h; u is [rows, 2h]
// with rows 2 * stride apart and v [rows, h] with rows stride apart
// (stride = HiddenStride(h)), both in the compute dtype.
struct GegluProblem {
  uint64_t u = 0, v = 0, b1 = 0, mult_bias = 0;
  int64_t rows = 0;
  int64_t hidden = 0;
  int64_t stride = 0;
};

// The epilogue of one problem: out[r, c] = float(z[r, c]) + float(b2[c])
// for r < rows, c < dim; z is [rows, dim] in the compute dtype and out the
// float32 rows of the call's token block where the problem's rows belong.
struct EpilogueProblem {
  uint64_t z = 0, out = 0, b2 = 0;
  int64_t rows = 0;
};

}  // namespace moe::experts::gpu
