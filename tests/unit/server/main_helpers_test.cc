#include "server/main_helpers.h"

#include <gtest/gtest.h>

#include "client/cli/command_line.h"
#include "common/id_ranges.h"

namespace moe::server {
namespace {

common::ModelSpec TwoLayers() {
  common::ModelSpec spec;
  spec.name = "m";
  spec.dim = 8;
  common::LayerConfig a;
  a.dim = 8;
  a.num_experts = 16;
  common::LayerConfig b = a;
  b.num_experts = 4;
  spec.layers = {{"blocks.0.ff", a}, {"blocks.1.ff", b}};
  return spec;
}

TEST(IdRangesTest, ParsesAndFoldsIdLists) {
  auto ids = common::ParseIdRanges("0-3,8, 5", 16);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{0, 1, 2, 3, 5, 8}));
  EXPECT_EQ(common::FoldIdRanges(*ids), "0-3,5,8");
  EXPECT_FALSE(common::ParseIdRanges("", 16).ok());
  EXPECT_FALSE(common::ParseIdRanges("3-1", 16).ok());
  EXPECT_FALSE(common::ParseIdRanges("a", 16).ok());
  EXPECT_FALSE(common::ParseIdRanges("1-2-3", 16).ok());
  auto out = common::ParseIdRanges("15-16", 16);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("outside the valid ids 0..15"),
            std::string::npos);
}

TEST(MainHelpersTest, ExpertSelectionCoversLayers) {
  const common::ModelSpec spec = TwoLayers();
  auto all = ParseExpertSelection("all", spec);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ((*all)[0].size(), 16u);
  EXPECT_EQ((*all)[1].size(), 4u);
  auto every = ParseExpertSelection("0-1,3", spec);
  ASSERT_TRUE(every.ok()) << every.status();
  EXPECT_EQ((*every)[1], (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(DescribeSelection(*every, spec),
            "blocks.0.ff:[0-1,3] blocks.1.ff:[0-1,3]");
  auto named = ParseExpertSelection("blocks.1.ff:2-3; blocks.0.ff:all", spec);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ((*named)[0].size(), 16u);
  EXPECT_EQ((*named)[1], (std::vector<int64_t>{2, 3}));
  auto only = ParseExpertSelection("blocks.0.ff:5", spec);
  ASSERT_TRUE(only.ok());
  EXPECT_TRUE((*only)[1].empty());
  // Errors name the layer.
  auto too_big = ParseExpertSelection("0-7", spec);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("layer \"blocks.1.ff\""),
            std::string::npos)
      << too_big.status();
  auto unknown = ParseExpertSelection("blocks.9.ff:0", spec);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
}

TEST(MainHelpersTest, ShardsSplitEveryLayerContiguously) {
  const common::ModelSpec spec = TwoLayers();
  auto s0 = ShardSelection(0, 3, spec);
  auto s2 = ShardSelection(2, 3, spec);
  ASSERT_TRUE(s0.ok() && s2.ok());
  EXPECT_EQ((*s0)[0], (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ((*s2)[0], (std::vector<int64_t>{10, 11, 12, 13, 14, 15}));
  EXPECT_EQ((*s0)[1], (std::vector<int64_t>{0}));
  EXPECT_EQ((*s2)[1], (std::vector<int64_t>{2, 3}));
  EXPECT_FALSE(ShardSelection(3, 3, spec).ok());
  auto too_many = ShardSelection(0, 5, spec);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("has only 4 experts"),
            std::string::npos);
  EXPECT_EQ(*OrdinalFromHostname("moe-expert-12"), 12);
  EXPECT_EQ(*OrdinalFromHostname("moe-expert-3.moe-expert.ns.svc"), 3);
  EXPECT_FALSE(OrdinalFromHostname("router").ok());
  auto names = ExpandTemplate("moe-expert-{i}.moe-expert:50052", 2);
  ASSERT_TRUE(names.ok());
  EXPECT_EQ((*names)[1], "moe-expert-1.moe-expert:50052");
  EXPECT_FALSE(ExpandTemplate("moe-expert:50052", 2).ok());
  EXPECT_EQ(*ParseWireDType("bfloat16"), moe::v1::BFLOAT16);
  EXPECT_FALSE(ParseWireDType("int8").ok());
}

TEST(CommandLineTest, DashedFlagNamesBecomeUnderscores) {
  char a0[] = "prog", a1[] = "--input-tensor=a-b", a2[] = "--", a3[] = "--x-y";
  char* argv[] = {a0, a1, a2, a3};
  auto args = cli::NormalizeFlagDashes(4, argv);
  EXPECT_EQ(args[1], "--input_tensor=a-b");  // values keep their dashes
  EXPECT_EQ(args[3], "--x-y");               // after "--": untouched
  EXPECT_NE(cli::VersionText("prog").find("prog 0.1.0 (git "),
            std::string::npos);
}

}  // namespace
}  // namespace moe::server
