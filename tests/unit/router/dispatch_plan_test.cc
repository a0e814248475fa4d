#include "router/dispatch_plan.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/layer_config.h"
#include "router/combine.h"

namespace moe::router {
namespace {

RoutingResult RouteAll(const std::vector<float>& probs, int64_t groups,
                       int64_t group_size, int64_t experts, double cf) {
  GateParams p;
  p.num_experts = experts;
  p.policy = SecondExpertPolicy::kAll;
  p.capacity_factor = cf;
  auto r = RouteTop2(probs, groups, group_size, p, {}, {});
  EXPECT_TRUE(r.ok());
  return *r;
}

TEST(DispatchPlanTest, ListsKeptTokensPerExpertInSlotOrder) {
  // Two groups of six tokens, E = 2, C = 4 per group.
  std::vector<float> probs;
  for (int g = 0; g < 2; ++g) {
    for (int t = 0; t < 6; ++t) probs.insert(probs.end(), {0.7f, 0.3f});
  }
  RoutingResult r = RouteAll(probs, 2, 6, 2, 0.5);
  DispatchPlan plan = BuildDispatchPlan(r, 3);
  ASSERT_EQ(plan.num_experts, 2);
  EXPECT_EQ(plan.count(0), 8);
  EXPECT_EQ(plan.count(1), 8);
  EXPECT_EQ(plan.size(), r.counts.kept[0] + r.counts.kept[1]);
  // Expert 0: group 0 tokens 0-3, then group 1 rows 6-9.
  const std::vector<int64_t> rows0(plan.row.begin(), plan.row.begin() + 8);
  EXPECT_EQ(rows0, (std::vector<int64_t>{0, 1, 2, 3, 6, 7, 8, 9}));
  EXPECT_NEAR(plan.weight[0], 0.7f, 1e-6);
  EXPECT_NEAR(plan.weight[8], 0.3f, 1e-6);
  // One segment per expert with entries, carrying the layer, in order.
  ASSERT_EQ(plan.segments.size(), 2u);
  EXPECT_EQ(plan.segments[1].key, (common::ExpertKey{3, 1}));
  EXPECT_EQ(plan.segments[1].offset, 8);
  EXPECT_EQ(plan.segments[1].count, 8);
}

TEST(DispatchPlanTest, DroppedAndUnrequestedChoicesAreAbsent) {
  std::vector<float> probs = {0.9f, 0.1f, 0.9f, 0.1f};
  GateParams p;
  p.num_experts = 2;
  p.policy = SecondExpertPolicy::kNone;
  auto r = RouteTop2(probs, 1, 2, p, {}, {});
  ASSERT_TRUE(r.ok());
  DispatchPlan plan = BuildDispatchPlan(*r, 0);
  EXPECT_EQ(plan.count(0), 2);
  EXPECT_EQ(plan.count(1), 0);
  EXPECT_EQ(plan.segments.size(), 1u);  // no empty segment
}

TEST(DispatchPlanTest, InnerPlanMapsGroupsToOuterExperts) {
  // Inner routing of 2 outer experts x batch 1 x 2 slots, Ei = 2.
  std::vector<float> probs = {0.8f, 0.2f, 0.3f, 0.7f,   // outer 0
                              0.6f, 0.4f, 0.5f, 0.5f};  // outer 1
  GateParams p;
  p.num_experts = 2;
  p.policy = SecondExpertPolicy::kNone;
  auto r = RouteTop2(probs, 2, 2, p, {1.0f, 1.0f, 1.0f, 0.0f}, {});
  ASSERT_TRUE(r.ok());
  const std::vector<int64_t> slot_row = {5, 3, 4, -1};
  const std::vector<float> slot_weight = {0.5f, 0.25f, 1.0f, 0.0f};
  DispatchPlan plan =
      BuildInnerDispatchPlan(*r, 1, 2, slot_row, slot_weight, 0);
  ASSERT_EQ(plan.num_experts, 4);
  EXPECT_EQ(plan.count(0), 1);  // (0, 0): slot 0 -> row 5
  EXPECT_EQ(plan.count(1), 1);  // (0, 1): slot 1 -> row 3
  EXPECT_EQ(plan.count(2), 1);  // (1, 0): slot 2 -> row 4
  EXPECT_EQ(plan.count(3), 0);  // empty slot carries nothing
  ASSERT_EQ(plan.segments.size(), 3u);
  EXPECT_EQ(plan.row[plan.segments[0].offset], 5);
  EXPECT_EQ(plan.row[plan.segments[1].offset], 3);
  EXPECT_EQ(plan.segments[2].key.expert, common::FlatExpertId(1, 0, 2));
  EXPECT_EQ(plan.row[plan.segments[2].offset], 4);
  EXPECT_NEAR(plan.weight[plan.segments[0].offset], 0.5f * 0.8f, 1e-6);
  EXPECT_NEAR(plan.weight[plan.segments[1].offset], 0.25f * 0.7f, 1e-6);
}

// The workers' answers are combined in the order they arrive; a token's y
// must not depend on it (two identical requests give the same bits). A
// fused multiply-add in the loop would break this.
TEST(CombineRowsTest, TheOrderOfTheWorkersAnswersDoesNotChangeY) {
  const int64_t tokens = 64, dim = 48;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> first(tokens * dim), second(tokens * dim);
  std::vector<float> w1(tokens), w2(tokens);
  std::vector<int64_t> targets(tokens);
  for (float& v : first) v = normal(rng);
  for (float& v : second) v = normal(rng);
  for (int64_t t = 0; t < tokens; ++t) {
    w1[t] = std::abs(normal(rng));
    w2[t] = std::abs(normal(rng));
    targets[t] = t;
  }
  std::vector<float> a(tokens * dim, 0.0f), b(tokens * dim, 0.0f);
  CombineRows(first.data(), tokens, targets.data(), w1.data(), dim, a.data(),
              nullptr);
  CombineRows(second.data(), tokens, targets.data(), w2.data(), dim, a.data(),
              nullptr);
  CombineRows(second.data(), tokens, targets.data(), w2.data(), dim, b.data(),
              nullptr);
  CombineRows(first.data(), tokens, targets.data(), w1.data(), dim, b.data(),
              nullptr);
  EXPECT_EQ(a, b);
  // And each product is rounded on its own before the add, whichever
  // version of the loop this CPU runs (the AVX-512 one here, on AVX-512
  // machines): the same bits as a scalar multiply, then add.
  std::vector<float> expected(tokens * dim, 0.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t k = 0; k < dim; ++k) {
      volatile float p1 = w1[t] * first[t * dim + k];
      volatile float p2 = w2[t] * second[t * dim + k];
      volatile float sum = 0.0f + p1;
      expected[t * dim + k] = sum + p2;
    }
  }
  EXPECT_EQ(a, expected);
}

// y may start uninitialised (the engine's combine): the first write to a
// row gives the bits adding to a zeroed row gives, -0 products included,
// whichever answer comes first; rows nobody writes keep their flag clear.
TEST(CombineRowsTest, AnUninitialisedYGetsTheBitsOfAZeroedOne) {
  const int64_t tokens = 40, dim = 33;  // not a multiple of 16: the tail too
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> first(tokens * dim), second(tokens * dim);
  std::vector<float> w1(tokens), w2(tokens);
  for (float& v : first) v = normal(rng);
  for (float& v : second) v = normal(rng);
  for (int64_t t = 0; t < tokens; ++t) {
    w1[t] = std::abs(normal(rng));
    w2[t] = std::abs(normal(rng));
  }
  // Negative zeros among the products, and weights of zero.
  for (int64_t k = 0; k < dim; k += 3) first[k] = -0.0f;
  w2[5] = 0.0f;
  second[5 * dim + 1] = -1.0f;
  // Tokens 0..29 get a first answer, 10..34 a second; 35..39 none.
  std::vector<int64_t> t1(30), t2(25);
  for (int64_t j = 0; j < 30; ++j) t1[j] = j;
  for (int64_t j = 0; j < 25; ++j) t2[j] = 10 + j;
  for (const bool first_arrives_first : {true, false}) {
    SCOPED_TRACE(first_arrives_first);
    std::vector<float> zeroed(tokens * dim, 0.0f);
    std::vector<float> lazy(tokens * dim, std::nanf(""));
    std::vector<uint8_t> written(tokens, 0);
    auto add_first = [&](float* y, uint8_t* flags) {
      CombineRows(first.data(), 30, t1.data(), w1.data(), dim, y, flags);
    };
    auto add_second = [&](float* y, uint8_t* flags) {
      CombineRows(second.data() + 10 * dim, 25, t2.data(), w2.data() + 10, dim,
                  y, flags);
    };
    if (first_arrives_first) {
      add_first(zeroed.data(), nullptr);
      add_second(zeroed.data(), nullptr);
      add_first(lazy.data(), written.data());
      add_second(lazy.data(), written.data());
    } else {
      add_second(zeroed.data(), nullptr);
      add_first(zeroed.data(), nullptr);
      add_second(lazy.data(), written.data());
      add_first(lazy.data(), written.data());
    }
    for (int64_t t = 0; t < tokens; ++t) {
      EXPECT_EQ(written[t], t < 35 ? 1 : 0) << t;
      if (t >= 35) continue;
      for (int64_t k = 0; k < dim; ++k) {
        const float a = zeroed[t * dim + k], b = lazy[t * dim + k];
        ASSERT_EQ(std::memcmp(&a, &b, sizeof(float)), 0)
            << "token " << t << " lane " << k << ": " << a << " vs " << b;
      }
    }
    EXPECT_FALSE(std::signbit(lazy[0])) << "a -0 product must give +0";
  }
}

}  // namespace
}  // namespace moe::router
