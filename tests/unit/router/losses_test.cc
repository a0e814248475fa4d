#include "router/losses.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace moe::router {
namespace {

RoutingResult Route(const std::vector<float>& probs, int64_t groups,
                    int64_t group_size, int64_t experts,
                    const std::vector<float>& importance = {}) {
  GateParams p;
  p.num_experts = experts;
  p.policy = SecondExpertPolicy::kAll;
  auto r = RouteTop2(probs, groups, group_size, p, importance, {});
  EXPECT_TRUE(r.ok());
  return *r;
}

TEST(LossesTest, UniformRoutingHasBalanceLossOne) {
  std::vector<float> probs = {0.6f, 0.4f, 0.4f, 0.6f};
  RoutingResult r = Route(probs, 1, 2, 2);
  // f = [0.5, 0.5], P = [0.5, 0.5]: E^2 * mean(f * P) = 4 * 0.25 = 1.
  EXPECT_NEAR(BalanceLoss(probs, r, {}), 1.0, 1e-7);
}

TEST(LossesTest, CollapsedRoutingIsPenalised) {
  std::vector<float> probs = {0.9f, 0.1f, 0.9f, 0.1f};
  RoutingResult r = Route(probs, 1, 2, 2);
  // f = [1, 0], P = [0.9, 0.1]: 4 * (0.9 / 2) = 1.8.
  EXPECT_NEAR(BalanceLoss(probs, r, {}), 1.8, 1e-6);
}

TEST(LossesTest, BalanceDensityCountsFirstChoicesBeforeCapacity) {
  // Eight tokens all prefer expert 0; C = 4 drops four first choices, but
  // the density still counts all eight (f1a7959 / Mesh TF, not HEAD).
  std::vector<float> probs;
  for (int t = 0; t < 8; ++t) probs.insert(probs.end(), {0.75f, 0.25f});
  GateParams p;
  p.num_experts = 2;
  p.policy = SecondExpertPolicy::kNone;
  p.capacity_factor = 0.5;
  auto r = RouteTop2(probs, 1, 8, p, {}, {});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->counts.dropped[0], 4);
  EXPECT_NEAR(BalanceLoss(probs, *r, {}), 4 * (1.0 * 0.75) / 2, 1e-6);
}

TEST(LossesTest, ImportanceRestrictsTheInnerBalanceLossToFirstChoiceSlots) {
  std::vector<float> probs = {0.6f, 0.4f, 0.1f, 0.9f, 0.5f, 0.5f, 0.5f, 0.5f};
  RoutingResult r = Route(probs, 1, 4, 2, {1.0f, 0.5f, 0.0f, 0.0f});
  // Only slot 0 counts, but the divisor is all 4 slots:
  // f = [1/4, 0], P = [0.6/4, 0.4/4] -> 4 * mean([0.0375, 0]) = 0.075.
  EXPECT_NEAR(BalanceLoss(probs, r, {1.0f, 0.5f, 0.0f, 0.0f}), 0.075, 1e-6);
}

TEST(LossesTest, RouterZLossIsMeanSquaredLogSumExp) {
  std::vector<float> logits = {0, 0, 0, 0, 1, 2, 3, 4};
  const double lse0 = std::log(4.0);
  const double lse1 =
      std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + std::exp(4.0));
  EXPECT_NEAR(RouterZLoss(logits, 4, {}), (lse0 * lse0 + lse1 * lse1) / 2,
              1e-9);
  // Masked: only importance-1 tokens, divided by their count.
  EXPECT_NEAR(RouterZLoss(logits, 4, {0.5f, 1.0f}), lse1 * lse1, 1e-9);
  EXPECT_NEAR(RouterZLoss(logits, 4, {0.0f, 0.0f}), 0.0, 1e-12);
}

TEST(LossesTest, WeighingAppliesCoefficientsAndSums) {
  AuxLosses l;
  l.balance_loss = 2.0;
  l.router_z_loss = 3.0;
  WeighLosses(0.01, 0.001, &l);
  EXPECT_DOUBLE_EQ(l.weighted_balance_loss, 0.02);
  EXPECT_DOUBLE_EQ(l.weighted_router_z_loss, 0.003);
  EXPECT_DOUBLE_EQ(l.total_aux_loss, 0.023);
}

}  // namespace
}  // namespace moe::router
