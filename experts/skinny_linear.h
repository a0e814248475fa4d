// SkinnyLinear: y = x·Wᵀ + b for a few rows of x, at the speed of reading W
// once. A GEMM library packs W into blocks before multiplying, which for a
// handful of rows costs more than the products (it reads W, writes a packed
// copy and reads that again): OpenBLAS reads an expert's 8.4 MB of float32
// weights at about 6.5 GB/s for 1 to 8 rows on a core that streams 18 GB/s.
// This kernel walks W once, four rows at a time, and keeps up to four token
// rows per pass in registers (AVX-512; float32 products and sums, each dot
// product accumulated in 16 lanes and then added up, then the bias added).
//
// Token rows are taken 128 at a time, so that they stay in L2 while W
// passes; W is read once per 128 rows.
//
// It needs AVX-512F (SkinnyLinearAvailable()); callers fall back to their
// GEMM where it is missing. Results agree with a GEMM to float32 rounding
// (the order of the additions differs), not bit for bit.
//
// Pure numerics on raw pointers: no LibTorch, no allocation, thread-safe.
//
// Example:
//   if (SkinnyLinearAvailable() && rows <= kSkinnyMaxRows)
//     SkinnyLinear(x, rows, k, w, b, n, y, n);
#pragma once

#include <cstdint>

namespace moe::experts {

// Up to this many rows the skinny kernel beats LibTorch's GEMM (OpenBLAS) on
// the README expert shapes, on one thread and on two (from 32 rows OpenBLAS
// splits a GEMM over two threads and wins there). BENCHMARKS.md, "skinny
// path", has the per-expert times against rows for both.
inline constexpr int64_t kSkinnyMaxRows = 31;

// Threads the BLAS under LibTorch runs one GEMM on, where it says (OpenBLAS:
// openblas_get_num_threads, found at run time); 0 when unknown. With one
// thread the kernel beats OpenBLAS's AVX2 GEMM at every size measured (1 to
// 2048 rows: x1.3 at 512 and 2048 rows), so callers use it for every block
// then, unless OpenBLAS runs its AVX-512 kernels
// (common::OpenBlasRunsAvx512Kernels): those beat the kernel on one thread
// from 64-128 rows (x1.6 at 512 and 2048 rows; BENCHMARKS.md).
int BlasThreads();

// Whether this CPU runs the kernel (AVX-512F), decided once per process;
// MOE_NO_SKINNY=1 in the environment turns it off (every block then goes
// through the GEMMs, as before the kernel; for comparisons).
bool SkinnyLinearAvailable();

// For t < rows, j < n: y[t * ld_y + j] = bias[j] + sum_i w[j * k + i] *
// x[t * k + i]. `w` is [n, k] row-major (a Linear's weight), `x` [rows, k]
// contiguous, `bias` n values or null for none.
// REQUIRES: SkinnyLinearAvailable(); rows, k, n >= 0; ld_y >= n; y does not
// overlap x, w or bias.
void SkinnyLinear(const float* x, int64_t rows, int64_t k, const float* w,
                  const float* bias, int64_t n, float* y, int64_t ld_y);

// For t < rows, j < h: gate[t * h + j] = (gelu(gate[t * h + j]) *
// value[t * h + j]) * mult[j], the GEGLU activation in the reference's order
// (docs/numerics.md §9.1). gelu is the exact, erf-based one: x * 0.5 * (1 +
// erf(x / sqrt(2))), with erf from Abramowitz and Stegun 7.1.26 (absolute
// error <= 1.5e-7, the formula LibTorch's vectorised CPU erf uses) and exp
// by range reduction and a degree-6 polynomial (within 2 ulp).
// REQUIRES: SkinnyLinearAvailable().
void GegluActivate(const float* value, float* gate, const float* mult,
                   int64_t rows, int64_t h);

// One GEGLU expert's float32 weights as raw arrays (row-major, as in the
// checkpoint): w1 [2h, dim] (the value rows, then the gate rows), b1 [2h],
// mult [h], w2 [dim, h], b2 [dim].
struct SkinnyExpert {
  const float* w1 = nullptr;
  const float* b1 = nullptr;
  const float* mult = nullptr;
  const float* w2 = nullptr;
  const float* b2 = nullptr;
  int64_t dim = 0;
  int64_t hidden = 0;
};

// The whole expert on `rows` rows of x ([rows, dim]) into out ([rows, dim]),
// without LibTorch: the two halves of x·W1ᵀ + b1 into `scratch` (at least
// rows * 2 * hidden floats), GegluActivate, then ·W2ᵀ + b2.
// REQUIRES: SkinnyLinearAvailable(); out does not overlap x or scratch.
void SkinnyGeglu(const SkinnyExpert& e, const float* x, int64_t rows,
                 float* scratch, float* out);

}  // namespace moe::experts
