#include "common/allocator.h"

#include <gtest/gtest.h>

namespace moe::common {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int kWindowSamples = kQuietWindowMs / kReleaseIntervalMs;
constexpr int64_t kBaseline = 100 * kMiB;  // code, stacks, ...

// A policy that released once, with 20 MiB in use.
HeapReleasePolicy Started() {
  HeapReleasePolicy policy;
  EXPECT_TRUE(policy.Sample(20 * kMiB, 500 * kMiB));  // learns the baseline
  policy.Released(20 * kMiB, kBaseline + 20 * kMiB);
  return policy;
}

// Steady traffic whose buffers come and go keeps its working set: what is
// resident but free was in use moments ago.
TEST(HeapReleasePolicyTest, SteadyTrafficKeepsItsWorkingSet) {
  HeapReleasePolicy policy = Started();
  for (int i = 0; i < 100; ++i) {
    const int64_t in_use = (i % 3 == 0 ? 300 : 20) * kMiB;
    EXPECT_FALSE(policy.Sample(in_use, kBaseline + 310 * kMiB)) << i;
  }
}

// After a burst the free pages go back once in-use memory held still for
// the window, not before; and once released, not again and again.
TEST(HeapReleasePolicyTest, ABurstsMemoryGoesBackAfterTheWindowOnce) {
  HeapReleasePolicy policy = Started();
  EXPECT_FALSE(policy.Sample(800 * kMiB, kBaseline + 810 * kMiB));
  int samples = 0;
  while (!policy.Sample(20 * kMiB, kBaseline + 810 * kMiB)) {
    ++samples;
    ASSERT_LT(samples, 100);
  }
  EXPECT_EQ(samples, kWindowSamples - 1);
  policy.Released(20 * kMiB, kBaseline + 22 * kMiB);
  for (int i = 0; i < 3 * kWindowSamples; ++i) {
    EXPECT_FALSE(policy.Sample(20 * kMiB, kBaseline + 22 * kMiB)) << i;
  }
}

TEST(HeapReleasePolicyTest, LittleFreeMemoryIsKept) {
  HeapReleasePolicy policy = Started();
  const int64_t kept = kBaseline + 20 * kMiB + kKeptFreeBytes;
  for (int i = 0; i < 3 * kWindowSamples; ++i) {
    EXPECT_FALSE(policy.Sample(20 * kMiB, kept));
  }
  EXPECT_TRUE(policy.Sample(20 * kMiB, kept + kMiB));
}

}  // namespace
}  // namespace moe::common
