#include "common/expert_set.h"

#include <gtest/gtest.h>

namespace moe::common {
namespace {

ModelSpec TwoLayers() {
  ModelSpec spec;
  spec.name = "m";
  spec.dim = 8;
  LayerConfig a;
  a.dim = 8;
  a.num_experts = 16;
  LayerConfig b = a;
  b.num_experts = 4;
  spec.layers = {{"blocks.0.ff", a}, {"blocks.1.ff", b}};
  return spec;
}

TEST(ExpertSetTest, ParsesEveryFormOfExperts) {
  const ModelSpec spec = TwoLayers();
  auto all = ExpertSet::Parse("all", spec);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->ids(0).size(), 16u);
  EXPECT_EQ(all->ids(1).size(), 4u);
  EXPECT_EQ(*all, ExpertSet::All(spec));
  auto every = ExpertSet::Parse("0-1,3", spec);
  ASSERT_TRUE(every.ok()) << every.status();
  EXPECT_EQ(every->ids(1), (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(every->Describe(spec), "blocks.0.ff:[0-1,3] blocks.1.ff:[0-1,3]");
  auto named = ExpertSet::Parse("blocks.1.ff:2-3; blocks.0.ff:all", spec);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(named->ids(0).size(), 16u);
  EXPECT_EQ(named->ids(1), (std::vector<int64_t>{2, 3}));
  auto only = ExpertSet::Parse("blocks.0.ff:5", spec);
  ASSERT_TRUE(only.ok());
  EXPECT_TRUE(only->ids(1).empty());
  EXPECT_EQ(only->size(), 1);
  // Errors name the layer.
  auto too_big = ExpertSet::Parse("0-7", spec);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("layer \"blocks.1.ff\""),
            std::string::npos)
      << too_big.status();
  auto unknown = ExpertSet::Parse("blocks.9.ff:0", spec);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(ExpertSet::Parse("blocks.0.ff", spec).ok());
}

TEST(ExpertSetTest, ShardsSplitEveryLayerContiguously) {
  const ModelSpec spec = TwoLayers();
  auto s0 = ExpertSet::Shard(0, 3, spec);
  auto s1 = ExpertSet::Shard(1, 3, spec);
  auto s2 = ExpertSet::Shard(2, 3, spec);
  ASSERT_TRUE(s0.ok() && s1.ok() && s2.ok());
  EXPECT_EQ(s0->ids(0), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(s2->ids(0), (std::vector<int64_t>{10, 11, 12, 13, 14, 15}));
  EXPECT_EQ(s0->ids(1), (std::vector<int64_t>{0}));
  EXPECT_EQ(s2->ids(1), (std::vector<int64_t>{2, 3}));
  // Together the shards are the model, each expert once.
  ExpertSet merged(spec.layers.size());
  for (const ExpertSet* s : {&*s0, &*s1, &*s2}) merged.Merge(*s);
  EXPECT_EQ(merged, ExpertSet::All(spec));
  EXPECT_EQ(s0->size() + s1->size() + s2->size(), 20);
  EXPECT_FALSE(ExpertSet::Shard(3, 3, spec).ok());
  EXPECT_FALSE(ExpertSet::Shard(0, 0, spec).ok());
  auto too_many = ExpertSet::Shard(0, 5, spec);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("has only 4 experts"),
            std::string::npos);
}

TEST(ExpertSetTest, KeysAddContainsAndDescriptions) {
  const ModelSpec spec = TwoLayers();
  ExpertSet set = ExpertSet::FromKeys({{1, 3}, {0, 2}, {0, 1}, {0, 2}}, 2);
  EXPECT_EQ(set.keys(), (std::vector<ExpertKey>{{0, 1}, {0, 2}, {1, 3}}));
  EXPECT_TRUE(set.Contains({0, 2}));
  EXPECT_FALSE(set.Contains({1, 2}));
  EXPECT_FALSE(set.Contains({5, 0}));
  EXPECT_FALSE(set.Contains({-1, 0}));
  set.Add({1, 0});
  set.Add({1, 0});  // once
  EXPECT_EQ(set.ids(1), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(set.Describe(spec), "blocks.0.ff:[1-2] blocks.1.ff:[0,3]");
  EXPECT_EQ(set.DescribeMissing(spec),
            "layer \"blocks.0.ff\" experts [1-2]; layer \"blocks.1.ff\" "
            "experts [0,3]");
  EXPECT_EQ(ExpertSet(2).Describe(spec), "none");
  EXPECT_TRUE(ExpertSet(2).empty());
  // Ids by layer are sorted and deduplicated; an unnamed layer has no
  // prefix.
  ModelSpec one = spec;
  one.layers.resize(1);
  one.layers[0].name = "";
  EXPECT_EQ(ExpertSet({{3, 1, 1}}).Describe(one), "[1,3]");
  EXPECT_EQ(ExpertSet({{3, 1}}).DescribeMissing(one), "experts [1,3]");
}

}  // namespace
}  // namespace moe::common
