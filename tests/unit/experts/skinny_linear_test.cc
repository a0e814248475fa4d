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

// The activation against the formula in double (std::erf) over the range
// where GELU bends, far into both tails (e^(-x^2) underflows; gelu(-50) is
// 0 and gelu(50) is 50), at zero, and for every remainder of the 16 lanes:
// within the erf approximation's 1.5e-7 (scaled by |g v m|) plus float32
// rounding; lanes past h untouched.
TEST(GegluActivateTest, MatchesTheErfFormula) {
  if (!SkinnyLinearAvailable()) {
    GTEST_SKIP() << "the kernel is off here (no AVX-512F, or MOE_NO_SKINNY=1)";
  }
  std::mt19937 rng(7);
  for (int64_t h : {1, 15, 16, 17, 40}) {
    const int64_t rows = 3;
    std::vector<float> gate = Random(rows * h + 1, rng);
    for (int64_t j = 0; j < rows * h; ++j) gate[j] *= 4;
    const float specials[] = {0.0f, -0.0f, 50.0f, -50.0f, 9.5f, -9.5f, 1e-20f};
    for (int64_t j = 0; j < rows * h && j < 7; ++j) gate[j] = specials[j];
    const std::vector<float> value = Random(rows * h, rng);
    const std::vector<float> mult = Random(h, rng);
    const std::vector<float> before = gate;
    GegluActivate(value.data(), gate.data(), mult.data(), rows, h);
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t j = 0; j < h; ++j) {
        const double g = before[t * h + j], v = value[t * h + j], m = mult[j];
        const double want =
            g * 0.5 * (1 + std::erf(g / std::sqrt(2.0))) * v * m;
        ASSERT_NEAR(gate[t * h + j], want,
                    2e-7 * std::abs(g * v * m) + 2e-6 * std::abs(want) + 1e-30)
            << "h " << h << " at " << t << "," << j << " g " << g;
      }
    }
    EXPECT_EQ(gate[rows * h], before[rows * h]) << "wrote past h, h " << h;
  }
}

}  // namespace
}  // namespace moe::experts
