#include "client/cli/metrics_text.h"

#include <gtest/gtest.h>

#include <limits>

namespace moe::cli {
namespace {

TEST(MetricsTextTest, ParsesSamplesAndLabels) {
  auto m = ParseMetricsText(
      "# HELP x help\n# TYPE x counter\n"
      "moe_router_tokens_total 64\n"
      "moe_router_dropped_assignments_total{choice=\"first\",expert=\"1\","
      "reason=\"capacity\"} 15\n"
      "moe_router_dropped_assignments_total{choice=\"second\",expert=\"1\","
      "reason=\"capacity\"} 7\n"
      "h_bucket{le=\"+Inf\"} 3\n");
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(SumSamples(m, "moe_router_tokens_total"), 64);
  EXPECT_EQ(SumSamples(m, "moe_router_dropped_assignments_total",
                       {{"choice", "first"}}),
            15);
  EXPECT_EQ(SumSamples(m, "moe_router_dropped_assignments_total"), 22);
  auto by = SumBy(m, "moe_router_dropped_assignments_total", "choice");
  EXPECT_EQ(by.at("second"), 7);
  EXPECT_EQ(m[3].labels.at("le"), "+Inf");
}

TEST(MetricsTextTest, HistogramQuantileInterpolatesInsideBuckets) {
  const double inf = std::numeric_limits<double>::infinity();
  // 10 observations in (0, 1], 10 in (1, 2].
  std::map<double, double> b = {{1.0, 10}, {2.0, 20}, {inf, 20}};
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.5, b), 1.0);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.75, b), 1.5);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.25, b), 0.5);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.5, {}), 0.0);
  // Everything above the last finite bound: the bound.
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.9, {{1.0, 0}, {inf, 5}}), 1.0);
}

}  // namespace
}  // namespace moe::cli
