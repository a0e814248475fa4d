#include "experts/skinny_linear.h"

#include <dlfcn.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace moe::experts {
namespace {

// Weight rows and token rows per register block: 4 x 4 accumulators, four
// weight vectors and one token vector live at once (25 of 32 registers).
constexpr int kRowBlock = 4;
constexpr int kTokenBlock = 4;
// Token rows per pass over W (x of the README expert: 256 KB for W1, 700 KB
// for W2, within a 1 MB L2).
constexpr int64_t kTokenChunk = 128;

// R weight rows (w, row stride k) against T token rows (x, row stride k):
// y[t * ld_y + r] = bias[r] + dot(w_r, x_t).
template <int R, int T>
__attribute__((target("avx512f"))) void Block(const float* w, int64_t k,
                                              const float* x, const float* bias,
                                              float* y, int64_t ld_y) {
  __m512 acc[R][T];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    // The next block's rows, one block ahead: the hardware prefetcher alone
    // fell behind once each weight vector feeds several rows' products (4
    // rows: 460-505 -> 333-372 us per README expert, BENCHMARKS.md).
    // Prefetches past the end of w are harmless (they never fault).
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (R + r) * k + i),
                   _MM_HINT_T0);
    }
    __m512 xv[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_ps(x + t * k + i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_loadu_ps(w + r * k + i);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t)
        acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  if (i < k) {
    // The last k - i (< 16) elements; masked loads read nothing past them.
    const __mmask16 m = static_cast<__mmask16>((1u << (k - i)) - 1);
    __m512 xv[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + t * k + i);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w + r * k + i);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t)
        acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const float b = bias == nullptr ? 0.0f : bias[r];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      y[t * ld_y + r] = b + _mm512_reduce_add_ps(acc[r][t]);
    }
  }
}

template <int R>
void TokenBlocks(const float* x, int64_t rows, int64_t k, const float* w,
                 const float* bias, float* y, int64_t ld_y) {
  // The R weight rows stay in L1 while each block of token rows passes.
  int64_t t = 0;
  for (; t + kTokenBlock <= rows; t += kTokenBlock) {
    Block<R, kTokenBlock>(w, k, x + t * k, bias, y + t * ld_y, ld_y);
  }
  switch (rows - t) {
    case 3:
      Block<R, 3>(w, k, x + t * k, bias, y + t * ld_y, ld_y);
      break;
    case 2:
      Block<R, 2>(w, k, x + t * k, bias, y + t * ld_y, ld_y);
      break;
    case 1:
      Block<R, 1>(w, k, x + t * k, bias, y + t * ld_y, ld_y);
      break;
    default:
      break;
  }
}

}  // namespace

int BlasThreads() {
  using Getter = int (*)();
  static const Getter get =
      reinterpret_cast<Getter>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get == nullptr ? 0 : get();
}

bool SkinnyLinearAvailable() {
  static const bool available = [] {
    const char* off = std::getenv("MOE_NO_SKINNY");
    if (off != nullptr && std::strcmp(off, "1") == 0) return false;
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return available;
}

void SkinnyLinear(const float* x, int64_t rows, int64_t k, const float* w,
                  const float* bias, int64_t n, float* y, int64_t ld_y) {
  if (rows <= 0 || n <= 0) return;
  // Up to kTokenChunk token rows per pass over W, so that a pass's rows stay
  // in L2 however many there are (W is read once per chunk).
  for (int64_t t = 0; t < rows; t += kTokenChunk) {
    const int64_t chunk = std::min(kTokenChunk, rows - t);
    const float* xc = x + t * k;
    float* yc = y + t * ld_y;
    // One pass over W, kRowBlock rows at a time, in memory order.
    int64_t j = 0;
    for (; j + kRowBlock <= n; j += kRowBlock) {
      TokenBlocks<kRowBlock>(xc, chunk, k, w + j * k,
                             bias == nullptr ? nullptr : bias + j, yc + j,
                             ld_y);
    }
    for (; j < n; ++j) {
      TokenBlocks<1>(xc, chunk, k, w + j * k,
                     bias == nullptr ? nullptr : bias + j, yc + j, ld_y);
    }
  }
}

}  // namespace moe::experts
