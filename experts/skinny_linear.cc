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
  if constexpr (R * T == 16) {
    // The 16 sums at once: a tree of shuffles and adds folds the 16
    // accumulators into one vector (when k is small, e.g. 64, one
    // horizontal reduction per accumulator cost more than the products).
    // Lane L of the result holds the sum of accumulator kLane[L].
    const __m512* v = &acc[0][0];
    __m512 w[8], x[4], yv[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {  // 512 -> 256 bits: v[i] | v[i + 8]
      w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44),
                           _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {  // 256 -> 128 bits
      x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88),
                           _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {  // 128 -> 64 bits
      yv[i] = _mm512_add_ps(_mm512_shuffle_ps(x[i], x[i + 2], 0x44),
                            _mm512_shuffle_ps(x[i], x[i + 2], 0xEE));
    }
    const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(yv[0], yv[1], 0x88),
                                   _mm512_shuffle_ps(yv[0], yv[1], 0xDD));
    static constexpr int kLane[16] = {0, 2, 1, 3, 8,  10, 9,  11,
                                      4, 6, 5, 7, 12, 14, 13, 15};
    alignas(64) float sums[16];
    _mm512_store_ps(sums, z);
#pragma GCC unroll 16
    for (int l = 0; l < 16; ++l) {
      const int r = kLane[l] / T, t = kLane[l] % T;
      y[t * ld_y + r] = (bias == nullptr ? 0.0f : bias[r]) + sums[l];
    }
    return;
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

// exp(x) for x <= 0 (clamped below at -100, where it is 0 in float32):
// x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' expf polynomial, then
// scaled by 2^n.
__attribute__((target("avx512f"))) __m512 ExpNonPositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-100.0f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// (gelu(g) * v) * m, lane by lane.
__attribute__((target("avx512f"))) __m512 GegluLanes(__m512 g, __m512 v,
                                                     __m512 m) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 z = _mm512_mul_ps(g, _mm512_set1_ps(0.70710678118654752f));
  const __m512 a = _mm512_abs_ps(z);
  const __m512 t =
      _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, one));
  __m512 poly = _mm512_set1_ps(1.061405429f);
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  const __m512 e =
      ExpNonPositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z)));
  // erf(|z|) = 1 - poly * t * e^(-z^2), then z's sign.
  const __m512 erf_abs = _mm512_fnmadd_ps(_mm512_mul_ps(poly, t), e, one);
  const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(erf_abs),
      _mm512_and_si512(_mm512_castps_si512(z),
                       _mm512_set1_epi32(static_cast<int>(0x80000000u)))));
  const __m512 gelu = _mm512_mul_ps(_mm512_mul_ps(g, _mm512_set1_ps(0.5f)),
                                    _mm512_add_ps(one, erf));
  return _mm512_mul_ps(_mm512_mul_ps(gelu, v), m);
}

__attribute__((target("avx512f"))) void GegluActivateAvx512(const float* value,
                                                            float* gate,
                                                            const float* mult,
                                                            int64_t rows,
                                                            int64_t h) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* v = value + t * h;
    float* g = gate + t * h;
    int64_t j = 0;
    for (; j + 16 <= h; j += 16) {
      _mm512_storeu_ps(
          g + j, GegluLanes(_mm512_loadu_ps(g + j), _mm512_loadu_ps(v + j),
                            _mm512_loadu_ps(mult + j)));
    }
    if (j < h) {
      const __mmask16 m = static_cast<__mmask16>((1u << (h - j)) - 1);
      _mm512_mask_storeu_ps(g + j, m,
                            GegluLanes(_mm512_maskz_loadu_ps(m, g + j),
                                       _mm512_maskz_loadu_ps(m, v + j),
                                       _mm512_maskz_loadu_ps(m, mult + j)));
    }
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

void GegluActivate(const float* value, float* gate, const float* mult,
                   int64_t rows, int64_t h) {
  if (rows <= 0 || h <= 0) return;
  GegluActivateAvx512(value, gate, mult, rows, h);
}

void SkinnyGeglu(const SkinnyExpert& e, const float* x, int64_t rows,
                 float* scratch, float* out) {
  if (rows <= 0) return;
  const int64_t h = e.hidden, d = e.dim;
  // The value and the gate halves as two contiguous [rows, h] blocks; W1's
  // value rows then its gate rows: one pass over W1 in memory order.
  float* value = scratch;
  float* gate = scratch + rows * h;
  SkinnyLinear(x, rows, d, e.w1, e.b1, h, value, h);
  SkinnyLinear(x, rows, d, e.w1 + h * d, e.b1 + h, h, gate, h);
  GegluActivate(value, gate, e.mult, rows, h);
  SkinnyLinear(gate, rows, h, e.w2, e.b2, d, out, d);
}

}  // namespace moe::experts
