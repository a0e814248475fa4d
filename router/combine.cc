#include "router/combine.h"

namespace moe::router {

// Compiled twice, for AVX-512 and for the baseline, and picked at load time
// by the CPU (the baseline vectorises to 4 floats, AVX-512 to 16).
__attribute__((target_clones("avx512f", "default"))) void CombineRows(
    const float* out, int64_t count, const int64_t* targets,
    const float* weights, int64_t dim, float* y) {
  for (int64_t j = 0; j < count; ++j) {
    const float w = weights[j];
    const float* src = out + j * dim;
    float* dst = y + targets[j] * dim;
    for (int64_t k = 0; k < dim; ++k) dst[k] += w * src[k];
  }
}

}  // namespace moe::router
