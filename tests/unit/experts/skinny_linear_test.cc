#include "experts/skinny_linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace moe::experts {
namespace {

std::vector<float> Random(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& f : v) f = normal(rng);
  return v;
}

// Every (rows, k, n) of the kernel's blocking: token rows 1 to 9 (full
// blocks of four and each remainder) and past one and two chunks of 128, k
// below, at and past multiples of 16 (the masked tail), n with and without a
// remainder of the four-row blocks; results against double sums, into a y wider
// than n (ld_y) whose padding must stay untouched.
TEST(SkinnyLinearTest, MatchesDoubleSumsForEveryBlockingRemainder) {
  if (!SkinnyLinearAvailable()) {
    GTEST_SKIP() << "the kernel is off here (no AVX-512F on this CPU, or "
                    "MOE_NO_SKINNY=1): GegluForwardInto uses the GEMMs, "
                    "which GegluTest covers";
  }
  std::mt19937 rng(7);
  for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 131, 260}) {
    for (int64_t k : {1, 15, 16, 17, 33, 512}) {
      for (int64_t n : {1, 3, 4, 5, 9}) {
        const std::vector<float> x = Random(rows * k, rng);
        const std::vector<float> w = Random(n * k, rng);
        const std::vector<float> b = Random(n, rng);
        const int64_t ld_y = n + 2;
        std::vector<float> y(rows * ld_y, -99.0f);
        SkinnyLinear(x.data(), rows, k, w.data(), b.data(), n, y.data(), ld_y);
        for (int64_t t = 0; t < rows; ++t) {
          for (int64_t j = 0; j < ld_y; ++j) {
            const float got = y[t * ld_y + j];
            if (j >= n) {
              ASSERT_EQ(got, -99.0f) << "padding written at " << t << "," << j;
              continue;
            }
            double want = b[j], scale = std::abs(b[j]);
            for (int64_t i = 0; i < k; ++i) {
              want += double{w[j * k + i]} * x[t * k + i];
              scale += std::abs(double{w[j * k + i]} * x[t * k + i]);
            }
            ASSERT_NEAR(got, want, 1e-6 * scale + 1e-7)
                << "rows " << rows << " k " << k << " n " << n << " at " << t
                << "," << j;
          }
        }
      }
    }
  }
}

TEST(SkinnyLinearTest, NoBiasAndEmptyShapes) {
  if (!SkinnyLinearAvailable()) {
    GTEST_SKIP() << "the kernel is off here (no AVX-512F, or MOE_NO_SKINNY=1)";
  }
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};            // [2, 3]
  const std::vector<float> w = {1, 0, -1, 0.5f, 0.5f, 0.5f};  // [2, 3]
  std::vector<float> y(4, 0);
  SkinnyLinear(x.data(), 2, 3, w.data(), nullptr, 2, y.data(), 2);
  EXPECT_EQ(y, (std::vector<float>{-2, 3, -2, 7.5f}));
  // Zero rows or outputs write nothing; k = 0 gives the bias.
  std::vector<float> z = {42};
  SkinnyLinear(x.data(), 0, 3, w.data(), nullptr, 1, z.data(), 1);
  SkinnyLinear(x.data(), 1, 3, w.data(), nullptr, 0, z.data(), 1);
  EXPECT_EQ(z[0], 42);
  const float bias = 1.5f;
  SkinnyLinear(x.data(), 1, 0, w.data(), &bias, 1, z.data(), 1);
  EXPECT_EQ(z[0], 1.5f);
}

}  // namespace
}  // namespace moe::experts
