// Parity of the in-process engine with the reference vectors: every golden
// file, output within 1e-5, losses within 1e-5 in train mode, routing tensors
// (indices, positions, masks, capacity) exactly equal, and the drop counts of
// INDEX.json.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "common/torch/torch_convert.h"
#include "router/engine/layer_engine.h"
#include "testing/golden.h"
#include "testing/reference.h"

namespace moe {
namespace {

using testing::GoldenIndexField;

class GoldenParityTest : public ::testing::TestWithParam<std::string> {};

int64_t IndexInt(const std::string& name, const std::string& key) {
  int64_t v = -1;
  EXPECT_TRUE(absl::SimpleAtoi(GoldenIndexField(name, key), &v))
      << name << " " << key;
  return v;
}

void ExpectCounts(const std::string& name, const std::string& prefix,
                  const router::RoutingResult& r) {
  const router::RoutingCounts& c = r.counts;
  EXPECT_EQ(c.dropped[0], IndexInt(name, prefix + "n_dropped_first"));
  EXPECT_EQ(c.dropped[1], IndexInt(name, prefix + "n_dropped_second"));
  EXPECT_EQ(c.second_skipped,
            IndexInt(name, prefix + "n_second_not_requested"));
  EXPECT_EQ(c.kept[0] + c.kept[1],
            IndexInt(name, prefix + "n_assignments_kept"));
  EXPECT_EQ(r.capacity, IndexInt(name, prefix + "expert_capacity"));
}

TEST_P(GoldenParityTest, EngineMatchesReference) {
  const std::string name = GetParam();
  const std::string path = testing::GoldenPath(name);
  auto golden = testing::ReadAllTensors(path);

  testing::Reference reference(path);

  router::RoutingOptions options;
  auto mode = router::ParseMode(testing::GoldenMode(name));
  ASSERT_TRUE(mode.ok());
  options.mode = *mode;
  options.seed = 7;
  if (golden.count("input.probs")) {
    options.second_choice_uniforms =
        common::FromTorch(golden.at("input.probs")).value();
  }
  const at::Tensor x = golden.at("input.x");
  const router::ForwardResult r = reference.Forward(x, options);
  const router::ForwardResult* result = &r;

  EXPECT_LE(testing::MaxAbsDiff(result->y, golden.at("output.y")), 1e-5);
  if (options.mode == router::Mode::kTrain) {
    const router::AuxLosses& l = result->losses;
    auto scalar = [&](const char* k) { return golden.at(k).item<double>(); };
    EXPECT_NEAR(l.balance_loss, scalar("output.balance_loss"), 1e-5);
    EXPECT_NEAR(l.router_z_loss, scalar("output.router_z_loss"), 1e-5);
    EXPECT_NEAR(l.weighted_balance_loss, scalar("output.weighted_balance_loss"),
                1e-5);
    EXPECT_NEAR(l.weighted_router_z_loss,
                scalar("output.weighted_router_z_loss"), 1e-5);
    EXPECT_NEAR(l.total_aux_loss, scalar("output.total_aux_loss"), 1e-5);
  }

  std::map<std::string, at::Tensor> trace;
  for (auto& [k, v] : router::ForwardTrace(*result, x.size(0), x.size(1))) {
    trace[k] = v;
  }
  const bool two_level = result->inner.has_value();
  const std::vector<std::string> levels =
      two_level ? std::vector<std::string>{"outer.", "inner."}
                : std::vector<std::string>{""};
  for (const std::string& level : levels) {
    for (const char* exact :
         {"gate_indices", "positions", "dropped_mask", "routed_mask",
          "expert_capacity", "first_choice_kept_count"}) {
      const std::string key = level + exact;
      ASSERT_TRUE(golden.count("expected." + key)) << key;
      ASSERT_TRUE(trace.count("trace." + key)) << key;
      EXPECT_TRUE(
          at::equal(trace.at("trace." + key), golden.at("expected." + key)))
          << name << ": " << key << " differs";
    }
    for (const char* close :
         {"gates", "gates_normalized", "raw_gates", "gate_logits"}) {
      const std::string key = level + close;
      ASSERT_TRUE(trace.count("trace." + key)) << key;
      EXPECT_LE(testing::MaxAbsDiff(trace.at("trace." + key),
                                    golden.at("expected." + key)),
                1e-6)
          << name << ": " << key;
    }
  }
  if (two_level) {
    EXPECT_TRUE(at::equal(trace.at("trace.outer.slot_token"),
                          golden.at("expected.outer.slot_token")));
    EXPECT_TRUE(at::equal(trace.at("trace.inner.importance"),
                          golden.at("expected.inner.importance")));
    ExpectCounts(name, "outer.", result->routing);
    ExpectCounts(name, "inner.", result->inner->routing);
  } else {
    ExpectCounts(name, "", result->routing);
    // Every kept assignment is one plan entry: nothing else reaches experts.
    const auto& c = result->routing.counts;
    EXPECT_EQ(result->plan.size(), c.kept[0] + c.kept[1]);
  }
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenParityTest,
                         ::testing::ValuesIn(testing::GoldenCases()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace moe
