#include "common/layer_config.h"

#include <gtest/gtest.h>

namespace moe::common {
namespace {

TEST(LayerConfigTest, ParsesGoldenStyleConfig) {
  auto c = ParseLayerConfig(
      R"({"dim": 16, "num_experts": 4, "hidden_mult": 4, "threshold_train":
          1e-09, "threshold_eval": 0.2, "capacity_factor_train": 1.25,
          "capacity_factor_eval": 4.0, "balance_loss_coef": 0.01,
          "router_z_loss_coef": 0.001, "mode": "eval", "eps": 1e-09,
          "top_n": 2, "kind": "moe"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, LayerKind::kMoe);
  EXPECT_EQ(c->dim, 16);
  EXPECT_EQ(c->num_experts, 4);
  EXPECT_EQ(c->expert_hidden(), 42);
  EXPECT_DOUBLE_EQ(c->threshold_eval, 0.2);
  EXPECT_DOUBLE_EQ(c->capacity_factor_eval, 4.0);
  EXPECT_FALSE(c->hierarchical());
}

TEST(LayerConfigTest, DefaultsFollowStMoe) {
  auto c = ParseLayerConfig(R"({"dim": 512, "num_experts": 16})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->expert_hidden(), 1365);
  EXPECT_DOUBLE_EQ(c->threshold_train, 0.2);
  EXPECT_DOUBLE_EQ(c->capacity_factor_train, 1.25);
  EXPECT_DOUBLE_EQ(c->capacity_factor_eval, 2.0);
  EXPECT_DOUBLE_EQ(c->balance_loss_coef, 1e-2);
  EXPECT_DOUBLE_EQ(c->router_z_loss_coef, 1e-3);
}

TEST(LayerConfigTest, HierarchicalPairAndRoundTrip) {
  auto c = ParseLayerConfig(
      R"({"kind": "hierarchical_moe", "dim": 16, "num_experts": [2, 3]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->hierarchical());
  EXPECT_EQ(c->total_experts(), 6);
  auto again = ParseLayerConfig(c->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->num_experts_inner, 3);
  EXPECT_EQ(again->kind, LayerKind::kHierarchicalMoe);
}

TEST(LayerConfigTest, F1a7959LossCoefSpelling) {
  auto c =
      ParseLayerConfig(R"({"dim": 8, "num_experts": 2, "loss_coef": 0.5})");
  ASSERT_TRUE(c.ok());
  EXPECT_DOUBLE_EQ(c->balance_loss_coef, 0.5);
}

struct BadConfig {
  const char* json;
  const char* message;
};

TEST(LayerConfigTest, BadConfigsNameTheKey) {
  const BadConfig cases[] = {
      {"[]", "not a JSON object"},
      {R"({"num_experts": 4})", "\"dim\" is missing"},
      {R"({"dim": "16", "num_experts": 4})", "\"dim\" must be an integer"},
      {R"({"dim": 0, "num_experts": 4})", "\"dim\" must be in"},
      {R"({"dim": 16})", "\"num_experts\" is missing"},
      {R"({"dim": 16, "num_experts": 1})", "at least 2 experts"},
      {R"({"dim": 16, "num_experts": [2]})", "pair of integers"},
      {R"({"kind": "hierarchical_moe", "dim": 16, "num_experts": 4})",
       "must be a pair"},
      {R"({"kind": "moe", "dim": 16, "num_experts": [2, 2]})",
       "must be an integer for kind"},
      {R"({"kind": "hierarchical_moe", "dim": 16, "num_experts": [2, 1]})",
       "inner count"},
      {R"({"kind": "transformer", "dim": 16, "num_experts": 4})",
       "\"kind\" is \"transformer\""},
      {R"({"dim": 16, "num_experts": 4, "threshold_eval": -1})",
       "threshold_eval: -1 is not a finite number >= 0"},
      {R"({"dim": 16, "num_experts": 4, "capacity_factor_eval": 0})",
       "capacity_factor_eval: 0 is not a finite number > 0"},
      {R"({"dim": 16, "num_experts": 4, "capacity_factor_train": "a"})",
       "\"capacity_factor_train\" must be a number"},
      {R"({"dim": 16, "num_experts": 4, "top_n": 3})", "top-2"},
      {R"({"dim": 16, "num_experts": 4, "mode": "serve"})", "\"mode\""},
      {R"({"dim": 16, "num_experts": 4, "hidden_mult": 0})", "hidden_mult"},
  };
  for (const BadConfig& c : cases) {
    auto parsed = ParseLayerConfig(c.json);
    ASSERT_FALSE(parsed.ok()) << c.json;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.message), std::string::npos)
        << c.json << " -> " << parsed.status();
  }
}

}  // namespace
}  // namespace moe::common
