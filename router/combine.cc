#include "router/combine.h"

namespace moe::router {

// Never a fused multiply-add here: the workers' outputs arrive in either
// order, and a token's y = w1·o1 + w2·o2 must come out the same bit for bit
// both ways. Two rounded products added to 0 in either order agree;
// fma(w2, o2, w1·o1) and fma(w1, o1, w2·o2) do not (python_client_test once
// caught two identical seeded requests differing by 1.5e-8 when an AVX-512
// clone contracted the loop). With clang the loop is compiled twice, for
// AVX-512 and for the baseline, and picked at load time by the CPU, with
// contraction off in both: the same separately rounded multiply and add, 16
// floats at a time instead of 4. CombineRowsTest checks both orders.
#ifdef __clang__
__attribute__((target_clones("avx512f", "default")))
#endif
void CombineRows(const float* out, int64_t count, const int64_t* targets,
                 const float* weights, int64_t dim, float* y,
                 uint8_t* written) {
#ifdef __clang__
#pragma clang fp contract(off)
#endif
  for (int64_t j = 0; j < count; ++j) {
    const float w = weights[j];
    const float* src = out + j * dim;
    float* dst = y + targets[j] * dim;
    if (written != nullptr && written[targets[j]] == 0) {
      // 0 + p, not p: a product of -0 gives +0, as on a zeroed row.
      for (int64_t k = 0; k < dim; ++k) dst[k] = 0.0f + w * src[k];
      written[targets[j]] = 1;
    } else {
      for (int64_t k = 0; k < dim; ++k) dst[k] += w * src[k];
    }
  }
}

}  // namespace moe::router
