#include "router/top2_gating.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace moe::router {
namespace {

GateParams Params(int64_t experts, SecondExpertPolicy policy,
                  float threshold = 0.2f, double cf = 2.0) {
  GateParams p;
  p.num_experts = experts;
  p.policy = policy;
  p.threshold = threshold;
  p.capacity_factor = cf;
  return p;
}

RoutingResult Route(const std::vector<float>& probs, int64_t groups,
                    int64_t group_size, const GateParams& params,
                    const std::vector<float>& importance = {},
                    const std::vector<float>& uniforms = {}) {
  auto r = RouteTop2(probs, groups, group_size, params, importance, uniforms);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

TEST(Top2GatingTest, TiesBreakToTheLowestExpertIndex) {
  RoutingResult r = Route({0.25f, 0.25f, 0.25f, 0.25f}, 1, 1,
                          Params(4, SecondExpertPolicy::kAll));
  EXPECT_EQ(r.expert[0], 0);
  EXPECT_EQ(r.expert[1], 1);
  RoutingResult r2 = Route({0.1f, 0.4f, 0.1f, 0.4f}, 1, 1,
                           Params(4, SecondExpertPolicy::kAll));
  EXPECT_EQ(r2.expert[0], 1);
  EXPECT_EQ(r2.expert[1], 3);
}

TEST(Top2GatingTest, NormalisesTheTopTwoGatesInFloat32) {
  RoutingResult r =
      Route({0.1f, 0.6f, 0.3f}, 1, 1, Params(3, SecondExpertPolicy::kAll));
  const float denom = (0.6f + 0.3f) + 1e-9f;
  EXPECT_EQ(r.gate[0], 0.6f / denom);
  EXPECT_EQ(r.gate[1], 0.3f / denom);
  EXPECT_EQ(r.CombineWeight(0), r.gate[0]);
}

TEST(Top2GatingTest, FirstChoicesClaimSlotsBeforeSecondChoices) {
  // Six tokens, all prefer expert 0 then expert 1; C = 4 (the minimum).
  std::vector<float> probs;
  for (int t = 0; t < 6; ++t) probs.insert(probs.end(), {0.7f, 0.3f});
  RoutingResult r =
      Route(probs, 1, 6, Params(2, SecondExpertPolicy::kAll, 0.2f, 0.5));
  ASSERT_EQ(r.capacity, 4);
  for (int t = 0; t < 6; ++t) {
    EXPECT_EQ(r.position[r.Index(0, t, 0)], t);
    EXPECT_EQ(r.kept[r.Index(0, t, 0)], t < 4) << t;
    // K[1] = 0, so second choices start at slot 0 of expert 1.
    EXPECT_EQ(r.position[r.Index(0, t, 1)], t);
  }
  EXPECT_EQ(r.first_kept_count[0], 4);
  EXPECT_EQ(r.first_kept_count[1], 0);
  EXPECT_EQ(r.counts.dropped[0], 2);
  EXPECT_EQ(r.counts.dropped[1], 2);
  EXPECT_EQ(r.counts.dropped_tokens, 2);  // t4, t5 lost both choices
  EXPECT_EQ(r.counts.kept_by_expert[0][0], 4);
  EXPECT_EQ(r.counts.dropped_by_expert[1][1], 2);
  // Not renormalised: the kept second choice keeps its small weight.
  EXPECT_NEAR(r.CombineWeight(r.Index(0, 0, 1)), 0.3f, 1e-6);
}

TEST(Top2GatingTest, SecondChoiceSlotsStartAfterKeptFirstChoices) {
  // E = 2, C = 4. Tokens 0-2 prefer expert 1 (kept first choices K[1] = 3);
  // tokens 3-5 prefer expert 0 and ask for expert 1 second: slots 3, 4, 5,
  // so only token 3's second choice fits.
  std::vector<float> probs = {0.2f, 0.8f, 0.2f, 0.8f, 0.2f, 0.8f,
                              0.7f, 0.3f, 0.7f, 0.3f, 0.7f, 0.3f};
  RoutingResult r =
      Route(probs, 1, 6, Params(2, SecondExpertPolicy::kAll, 0.2f, 0.5));
  EXPECT_EQ(r.first_kept_count[1], 3);
  EXPECT_EQ(r.position[r.Index(0, 3, 1)], 3);
  EXPECT_TRUE(r.kept[r.Index(0, 3, 1)]);
  EXPECT_EQ(r.position[r.Index(0, 4, 1)], 4);
  EXPECT_FALSE(r.kept[r.Index(0, 4, 1)]);
  EXPECT_EQ(r.position[r.Index(0, 5, 1)], 5);
  // Second choices of tokens 0-2 go to expert 0 after its 3 kept firsts.
  EXPECT_EQ(r.position[r.Index(0, 0, 1)], 3);
  EXPECT_TRUE(r.kept[r.Index(0, 0, 1)]);
  EXPECT_FALSE(r.kept[r.Index(0, 1, 1)]);
}

TEST(Top2GatingTest, GroupsRouteIndependently) {
  std::vector<float> probs;
  for (int t = 0; t < 10; ++t) probs.insert(probs.end(), {0.9f, 0.1f});
  RoutingResult r =
      Route(probs, 2, 5, Params(2, SecondExpertPolicy::kNone, 0.2f, 0.5));
  // Each group of 5 has its own 4 slots.
  EXPECT_EQ(r.position[r.Index(1, 0, 0)], 0);
  EXPECT_EQ(r.counts.kept[0], 8);
  EXPECT_EQ(r.counts.dropped[0], 2);
}

TEST(Top2GatingTest, PolicyAllNoneThreshold) {
  // ĝ2 of the tokens: 0.1, 0.3, 0.5.
  std::vector<float> probs = {0.9f, 0.1f, 0.7f, 0.3f, 0.5f, 0.5f};
  RoutingResult all = Route(probs, 1, 3, Params(2, SecondExpertPolicy::kAll));
  RoutingResult none = Route(probs, 1, 3, Params(2, SecondExpertPolicy::kNone));
  RoutingResult thr =
      Route(probs, 1, 3, Params(2, SecondExpertPolicy::kThreshold, 0.3f));
  for (int t = 0; t < 3; ++t) {
    EXPECT_TRUE(all.requested[all.Index(0, t, 0)]);
    EXPECT_TRUE(all.requested[all.Index(0, t, 1)]);
    EXPECT_TRUE(none.requested[none.Index(0, t, 0)]);
    EXPECT_FALSE(none.requested[none.Index(0, t, 1)]);
    EXPECT_EQ(none.position[none.Index(0, t, 1)], 0);
  }
  EXPECT_EQ(none.counts.second_skipped, 3);
  EXPECT_EQ(all.counts.second_skipped, 0);
  // Threshold keeps ĝ2 > 0.3 strictly: only the third token (0.3 is not >).
  EXPECT_FALSE(thr.requested[thr.Index(0, 0, 1)]);
  EXPECT_FALSE(thr.requested[thr.Index(0, 1, 1)]);
  EXPECT_TRUE(thr.requested[thr.Index(0, 2, 1)]);
  EXPECT_EQ(thr.counts.second_skipped, 2);
}

TEST(Top2GatingTest, RandomPolicyComparesTheDrawWithGateOverThreshold) {
  // ĝ2 = 0.1, threshold 0.2: requested iff u < 0.5.
  std::vector<float> probs = {0.9f, 0.1f, 0.9f, 0.1f};
  RoutingResult r = Route(probs, 1, 2, Params(2, SecondExpertPolicy::kRandom),
                          {}, {0.49f, 0.51f});
  EXPECT_TRUE(r.requested[r.Index(0, 0, 1)]);
  EXPECT_FALSE(r.requested[r.Index(0, 1, 1)]);
  // A threshold at or below eps routes every second choice ("all").
  RoutingResult all =
      Route(probs, 1, 2, Params(2, SecondExpertPolicy::kRandom, 0.0f), {},
            {0.999f, 0.999f});
  EXPECT_EQ(all.counts.requested[1], 2);
}

TEST(Top2GatingTest, RandomKeepRateMatchesExpectation) {
  // Over many seeded tokens the fraction of requested second choices equals
  // E[min(1, ĝ2 / threshold)].
  const int64_t tokens = 200000, experts = 8;
  const float threshold = 0.2f;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> probs(tokens * experts), uniforms(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    float sum = 0;
    for (int64_t e = 0; e < experts; ++e) {
      probs[t * experts + e] = std::exp(normal(rng));
      sum += probs[t * experts + e];
    }
    for (int64_t e = 0; e < experts; ++e) probs[t * experts + e] /= sum;
    uniforms[t] = uniform(rng);
  }
  RoutingResult r = Route(
      probs, 1, tokens, Params(experts, SecondExpertPolicy::kRandom, threshold),
      {}, uniforms);
  double expected = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    expected += std::min(1.0, double{r.gate[t * 2 + 1]} / threshold);
  }
  expected /= tokens;
  const double observed = static_cast<double>(r.counts.requested[1]) / tokens;
  // Bernoulli mean: standard error <= 0.5 / sqrt(200000) = 0.0011.
  EXPECT_NEAR(observed, expected, 0.006);
  EXPECT_GT(expected, 0.2);
  EXPECT_LT(expected, 0.95);
  EXPECT_EQ(r.counts.requested[1] + r.counts.second_skipped, tokens);
}

TEST(Top2GatingTest, ImportanceControlsWhichChoicesAreRequested) {
  // Inner routing of three slots: importance 1, 0.5 and 0 (empty).
  std::vector<float> probs = {0.7f, 0.3f, 0.6f, 0.4f, 0.5f, 0.5f};
  RoutingResult r = Route(probs, 1, 3, Params(2, SecondExpertPolicy::kAll),
                          {1.0f, 0.5f, 0.0f});
  // Slot 0: normal top-2.
  EXPECT_TRUE(r.requested[r.Index(0, 0, 0)]);
  EXPECT_EQ(r.expert[r.Index(0, 0, 1)], 1);
  // Slot 1: no first choice; the second choice is the top expert, ĝ2 ~ 1.
  EXPECT_FALSE(r.requested[r.Index(0, 1, 0)]);
  EXPECT_EQ(r.gate[r.Index(0, 1, 0)], 0.0f);
  EXPECT_EQ(r.expert[r.Index(0, 1, 1)], 0);
  EXPECT_NEAR(r.gate[r.Index(0, 1, 1)], 1.0f, 1e-6);
  EXPECT_TRUE(r.requested[r.Index(0, 1, 1)]);
  // Slot 2: nothing requested, not counted as a token.
  EXPECT_FALSE(r.requested[r.Index(0, 2, 0)]);
  EXPECT_FALSE(r.requested[r.Index(0, 2, 1)]);
  EXPECT_EQ(r.counts.tokens, 2);
  // Slot 1's second choice lands after slot 0's kept first choice on expert 0.
  EXPECT_EQ(r.position[r.Index(0, 1, 1)], 1);
}

TEST(Top2GatingTest, RejectsBadArguments) {
  EXPECT_FALSE(RouteTop2(std::vector<float>{1.0f}, 1, 1,
                         Params(1, SecondExpertPolicy::kAll), {}, {})
                   .ok());
  auto no_draws = RouteTop2(std::vector<float>{0.5f, 0.5f}, 1, 1,
                            Params(2, SecondExpertPolicy::kRandom), {}, {});
  ASSERT_FALSE(no_draws.ok());
  EXPECT_NE(no_draws.status().message().find("uniform draws"),
            std::string::npos);
  EXPECT_FALSE(RouteTop2(std::vector<float>{0.5f, 0.5f, 0.5f}, 1, 1,
                         Params(2, SecondExpertPolicy::kAll), {}, {})
                   .ok());
}

}  // namespace
}  // namespace moe::router
