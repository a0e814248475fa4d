// One GEGLU expert's parameters on the host as plain float32 arrays, and
// the plain C++ reference of its forward (docs/numerics.md, "Expert"):
//   y = W2·((gelu(W1[h:2h]·x + b1[h:2h]) * (W1[0:h]·x + b1[0:h])) * m) + b2
// with GELU by erf. The reference accumulates in double; it is what
// moe-gpu-check holds the GPU backend to on a machine without LibTorch, and
// ReferenceExpertTest (tests/unit/experts/gpu_host_test.cc) holds it to the
// CPU experts.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::experts::gpu {

struct HostExpert {
  int64_t dim = 0;
  int64_t hidden = 0;
  std::vector<float> w1;         // [2h, d]
  std::vector<float> b1;         // [2h]
  std::vector<float> mult_bias;  // [h]
  std::vector<float> w2;         // [d, h]
  std::vector<float> b2;         // [d]
};

// True when every array has the size dim and hidden call for.
bool WellFormed(const HostExpert& e);

// y[rows, d] = the expert on x[rows, d] (both row-major float32).
void ReferenceForward(const HostExpert& e, const float* x, int64_t rows,
                      float* y);

}  // namespace moe::experts::gpu
