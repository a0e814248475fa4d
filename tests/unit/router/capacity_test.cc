#include "router/capacity.h"

#include <gtest/gtest.h>

namespace moe::router {
namespace {

TEST(CapacityTest, FewerTokensThanTheMinimumStillGetFourSlots) {
  EXPECT_EQ(ExpertCapacity(1, 2.0, 16), 4);  // C > n: nothing is ever dropped
  EXPECT_EQ(ExpertCapacity(3, 1.25, 4), 4);
}

TEST(CapacityTest, TinyCapacityFactorFallsBackToTheMinimum) {
  EXPECT_EQ(ExpertCapacity(32, 0.25, 4), 4);  // int(2.0) = 2 -> 4 (golden B1)
  EXPECT_EQ(ExpertCapacity(12, 1.25, 4), 4);  // int(3.75) = 3 -> 4 (golden C)
}

TEST(CapacityTest, CapacityIsCappedAtTheGroupSize) {
  EXPECT_EQ(ExpertCapacity(12, 4.0, 4), 12);  // golden A: C == n
  EXPECT_EQ(ExpertCapacity(8, 8.0, 2), 8);    // n * cf / E = 32 > n
  EXPECT_EQ(ExpertCapacity(10, 1e300, 2), 10);
}

TEST(CapacityTest, TruncatesLikePythonInt) {
  EXPECT_EQ(ExpertCapacity(64, 0.75, 4), 12);     // golden B2
  EXPECT_EQ(ExpertCapacity(100, 1.25, 8), 15);    // 15.625
  EXPECT_EQ(ExpertCapacity(1024, 2.0, 16), 128);  // README configuration
  EXPECT_EQ(ExpertCapacity(256, 2.0, 16), 32);
  EXPECT_EQ(ExpertCapacity(1024, 1.25, 16), 80);
}

}  // namespace
}  // namespace moe::router
