#include "common/flags_util.h"

#include <gtest/gtest.h>

namespace moe::common {
namespace {

TEST(FlagsUtilTest, ParsesIdLists) {
  auto ids = ParseIdList("0-3,8, 5", 16);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{0, 1, 2, 3, 5, 8}));
  EXPECT_FALSE(ParseIdList("", 16).ok());
  EXPECT_FALSE(ParseIdList("3-1", 16).ok());
  EXPECT_FALSE(ParseIdList("a", 16).ok());
  EXPECT_FALSE(ParseIdList("1-2-3", 16).ok());
  auto out = ParseIdList("15-16", 16);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("outside the valid ids 0..15"),
            std::string::npos);
}

TEST(FlagsUtilTest, ShardsSplitExpertsContiguously) {
  EXPECT_EQ(*ShardExperts(0, 3, 16), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(*ShardExperts(2, 3, 16),
            (std::vector<int64_t>{10, 11, 12, 13, 14, 15}));
  EXPECT_FALSE(ShardExperts(3, 3, 16).ok());
  EXPECT_FALSE(ShardExperts(0, 17, 16).ok());
  EXPECT_EQ(*OrdinalFromHostname("moe-expert-12"), 12);
  EXPECT_EQ(*OrdinalFromHostname("moe-expert-3.moe-expert.ns.svc"), 3);
  EXPECT_FALSE(OrdinalFromHostname("router").ok());
  auto names = ExpandTemplate("moe-expert-{i}.moe-expert:50052", 2);
  ASSERT_TRUE(names.ok());
  EXPECT_EQ((*names)[1], "moe-expert-1.moe-expert:50052");
  EXPECT_FALSE(ExpandTemplate("moe-expert:50052", 2).ok());
}

TEST(FlagsUtilTest, DashedFlagNamesBecomeUnderscores) {
  char a0[] = "prog", a1[] = "--input-tensor=a-b", a2[] = "--", a3[] = "--x-y";
  char* argv[] = {a0, a1, a2, a3};
  auto args = NormalizeFlagDashes(4, argv);
  EXPECT_EQ(args[1], "--input_tensor=a-b");  // values keep their dashes
  EXPECT_EQ(args[3], "--x-y");               // after "--": untouched
}

}  // namespace
}  // namespace moe::common
