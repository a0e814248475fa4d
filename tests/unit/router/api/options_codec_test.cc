#include "router/api/options_codec.h"

#include <gtest/gtest.h>

#include "common/random_input.h"

namespace moe::router {
namespace {

TEST(OptionsCodecTest, RoundTripsEveryOption) {
  RoutingOptions o;
  o.mode = Mode::kTrain;
  o.policy = SecondExpertPolicy::kThreshold;
  o.threshold = 0.35f;
  o.capacity_factor = 1.5;
  o.seed = 1234567890123ull;
  common::HostTensor u = common::RandomNormalTensor({2, 3}, 1);
  o.second_choice_uniforms = u;
  auto back = RoutingOptionsFromProto(RoutingOptionsToProto(o), 1 << 20);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->mode, Mode::kTrain);
  EXPECT_EQ(back->policy, SecondExpertPolicy::kThreshold);
  EXPECT_EQ(back->threshold, 0.35f);
  EXPECT_EQ(back->capacity_factor, 1.5);
  EXPECT_EQ(back->seed, 1234567890123ull);
  ASSERT_TRUE(back->second_choice_uniforms.has_value());
  EXPECT_EQ(back->second_choice_uniforms->shape, u.shape);
  EXPECT_EQ(back->second_choice_uniforms->data, u.data);
  for (SecondExpertPolicy p :
       {SecondExpertPolicy::kRandom, SecondExpertPolicy::kAll,
        SecondExpertPolicy::kNone, SecondExpertPolicy::kThreshold}) {
    RoutingOptions q;
    q.policy = p;
    EXPECT_EQ(RoutingOptionsFromProto(RoutingOptionsToProto(q), 10)->policy, p);
  }
  // Unset stays unset; unspecified enums are the defaults.
  auto empty = RoutingOptionsFromProto(moe::v1::RoutingOptions(), 10);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->mode, Mode::kEval);
  EXPECT_EQ(empty->policy, SecondExpertPolicy::kRandom);
  EXPECT_FALSE(empty->threshold.has_value());
  EXPECT_FALSE(empty->seed.has_value());
  EXPECT_FALSE(empty->second_choice_uniforms.has_value());
}

TEST(OptionsCodecTest, UnknownValuesAndOversizedUniformsAreNamed) {
  moe::v1::RoutingOptions p;
  p.set_mode(static_cast<moe::v1::Mode>(7));
  EXPECT_NE(RoutingOptionsFromProto(p, 10).status().message().find(
                "options.mode: unknown value 7"),
            std::string::npos);
  p = {};
  p.set_policy(static_cast<moe::v1::SecondExpertPolicy>(42));
  EXPECT_NE(RoutingOptionsFromProto(p, 10).status().message().find(
                "options.policy: unknown value 42"),
            std::string::npos);
  RoutingOptions o;
  o.second_choice_uniforms = common::RandomNormalTensor({2, 8}, 1);
  auto big = RoutingOptionsFromProto(RoutingOptionsToProto(o), 10);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  // Bounds are not the codec's business: ValidateRoutingOptions checks them.
  p = {};
  p.set_threshold(-1);
  auto negative = RoutingOptionsFromProto(p, 10);
  ASSERT_TRUE(negative.ok());
  EXPECT_NE(ValidateRoutingOptions(*negative, 1, 1)
                .message()
                .find("options.threshold"),
            std::string::npos);
}

}  // namespace
}  // namespace moe::router
