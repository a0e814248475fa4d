#include "common/blas_kernels.h"

#include <gtest/gtest.h>

namespace moe::common {
namespace {

TEST(BlasKernelsTest, AsksForTheWidestKernelsOnlyWhereOpenBlasFellBack) {
  // Fell back to Prescott: the widest kernels the CPU runs.
  EXPECT_EQ(BetterOpenBlasCore("Prescott", true, true), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("prescott", true, true), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("Prescott", false, true), "Haswell");
  // A CPU without AVX2 has nothing better than Prescott's SSE3.
  EXPECT_EQ(BetterOpenBlasCore("Prescott", false, false), "");
  // OpenBLAS knew the CPU: its choice stands.
  EXPECT_EQ(BetterOpenBlasCore("SkylakeX", true, true), "");
  EXPECT_EQ(BetterOpenBlasCore("Zen", false, true), "");
  EXPECT_EQ(BetterOpenBlasCore("Haswell", true, true), "");
}

}  // namespace
}  // namespace moe::common
