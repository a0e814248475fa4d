// Prometheus metrics of live servers: valid exposition format (promtool), and
// counters that agree with the responses and with the golden drop counts.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "client/cli/metrics_text.h"
#include "client/router_client.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"
#include "testing/scrape.h"

namespace moe {
namespace {

using cli::MetricSample;
using Sample = cli::MetricSample;

// /metrics at `address`, which must answer.
std::string Scrape(const std::string& address) {
  const std::optional<std::string> text = testing::ScrapeText(address);
  EXPECT_TRUE(text) << "no 200 answer from " << address << "/metrics";
  return text.value_or("");
}

std::vector<Sample> Parse(const std::string& text) {
  return cli::ParseMetricsText(text);
}

double Sum(const std::vector<Sample>& samples, const std::string& name,
           const std::map<std::string, std::string>& match = {}) {
  return cli::SumSamples(samples, name, match);
}

void ExpectPromtoolAccepts(const std::string& text, const std::string& what) {
  const std::string path = testing::TempDir() + "/" + what + ".prom";
  std::ofstream(path) << text;
  std::string log;
  EXPECT_EQ(testing::RunProcess(
                {"/bin/sh", "-c", "promtool check metrics < " + path}, &log),
            0)
      << what << ":\n"
      << log;
}

int64_t IndexInt(const std::string& name, const std::string& key) {
  int64_t v = -1;
  EXPECT_TRUE(absl::SimpleAtoi(testing::GoldenIndexField(name, key), &v));
  return v;
}

class MetricsAgreeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MetricsAgreeTest, CountersEqualResponsesAndGoldenCounts) {
  const std::string name = GetParam();
  testing::Deployment d(testing::GoldenPath(name), {"0-1", "2-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto golden = testing::ReadAllTensors(testing::GoldenPath(name));
  const at::Tensor x = golden.at("input.x");
  moe::v1::ForwardRequest request;
  *request.mutable_x() = testing::WireTensor(x);
  auto client = client::RouterClient::Create(d.router_address());
  auto response = client->Forward(request);
  ASSERT_TRUE(response.ok()) << response.status();

  const std::string router_text = Scrape(d.router_metrics_address());
  ExpectPromtoolAccepts(router_text, name + "-router");
  const std::vector<Sample> m = Parse(router_text);
  const auto& stats = response->stats().routing();
  const double dropped_first =
      Sum(m, "moe_router_dropped_assignments_total",
          {{"choice", "first"}, {"reason", "capacity"}});
  const double dropped_second =
      Sum(m, "moe_router_dropped_assignments_total",
          {{"choice", "second"}, {"reason", "capacity"}});
  EXPECT_EQ(dropped_first, stats.dropped_first());
  EXPECT_EQ(dropped_second, stats.dropped_second());
  EXPECT_EQ(dropped_first, IndexInt(name, "n_dropped_first"));
  EXPECT_EQ(dropped_second, IndexInt(name, "n_dropped_second"));
  const double kept = Sum(m, "moe_router_expert_assignments_total");
  EXPECT_EQ(kept, stats.kept_first() + stats.kept_second());
  EXPECT_EQ(kept, IndexInt(name, "n_assignments_kept"));
  for (int e = 0; e < 4; ++e) {
    EXPECT_EQ(Sum(m, "moe_router_expert_assignments_total",
                  {{"expert", std::to_string(e)}}),
              response->stats().kept_per_expert(e));
  }
  EXPECT_EQ(Sum(m, "moe_router_tokens_total"), x.size(0) * x.size(1));
  EXPECT_EQ(Sum(m, "moe_router_dropped_tokens_total"), stats.dropped_tokens());
  EXPECT_EQ(Sum(m, "moe_router_second_choice_skipped_total"),
            stats.second_skipped());
  EXPECT_EQ(Sum(m, "moe_router_expert_capacity_tokens"),
            IndexInt(name, "expert_capacity"));
  EXPECT_EQ(Sum(m, "moe_router_requests_total", {{"code", "OK"}}), 1);
  EXPECT_EQ(Sum(m, "moe_router_capacity_utilization_count"), 1);
  EXPECT_EQ(Sum(m, "moe_router_worker_up"), 2);
  EXPECT_EQ(Sum(m, "moe_build_info"), 1);
  EXPECT_EQ(Sum(m, "moe_grpc_server_handled_total",
                {{"method", "/moe.v1.Router/Forward"}, {"code", "OK"}}),
            1);
  EXPECT_GT(Sum(m, "moe_router_load_balancedness"), 0);
  // The forward's thread worked (gating at least), and not longer than the
  // request took.
  const double forward_cpu = Sum(m, "moe_router_forward_cpu_seconds_total");
  EXPECT_GT(forward_cpu, 0);
  EXPECT_LE(forward_cpu, Sum(m, "moe_router_request_duration_seconds_sum"));

  double worker_tokens = 0;
  for (int w = 0; w < 2; ++w) {
    const std::string text = Scrape(d.worker_metrics_address(w));
    ExpectPromtoolAccepts(text, name + "-worker" + std::to_string(w));
    const std::vector<Sample> wm = Parse(text);
    worker_tokens += Sum(wm, "moe_expert_tokens_total");
    EXPECT_EQ(Sum(wm, "moe_expert_ready"), 1);
    EXPECT_EQ(Sum(wm, "moe_expert_batch_tokens_count"), 1);  // one RPC each
    EXPECT_EQ(Sum(wm, "moe_expert_call_duration_seconds_count",
                  {{"stage", "compute"}}),
              1);
    // A CPU worker has no copies and no device memory.
    EXPECT_EQ(
        Sum(wm, "moe_expert_call_duration_seconds_count", {{"stage", "copy"}}),
        0);
    EXPECT_EQ(Sum(wm, "moe_expert_device_memory_bytes"), 0);
    // Nor GPU passes, though both series are there from the start.
    for (const char* path : {"small_rows", "gemm"}) {
      EXPECT_NE(text.find(std::string("moe_expert_gpu_passes_total{path=\"") +
                          path + "\"} 0"),
                std::string::npos)
          << path;
    }
    EXPECT_EQ(Sum(wm, "moe_build_info", {{"device", "cpu"}}), 1);
  }
  EXPECT_EQ(worker_tokens, kept);
}

INSTANTIATE_TEST_SUITE_P(GoldenDrops, MetricsAgreeTest,
                         ::testing::Values("B1_moe_eval_drop_mincap",
                                           "B2_moe_eval_drop_cap12"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(MetricsTest, UnavailableExpertsAreCountedWithTheirReason) {
  const std::string name = "A_moe_eval_nodrop";
  testing::Deployment d(testing::GoldenPath(name), {"0-1", "2-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  d.worker(1).Signal(SIGKILL);
  d.worker(1).Wait(absl::Seconds(10));
  moe::v1::ForwardRequest request;
  *request.mutable_x() = testing::WireTensor(
      testing::ReadAllTensors(testing::GoldenPath(name)).at("input.x"));
  request.mutable_options()->set_policy(moe::v1::ALL);
  auto response =
      client::RouterClient::Create(d.router_address())->Forward(request);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_TRUE(response->degraded());
  ASSERT_TRUE(d.WaitWorkerState(1, false, absl::Seconds(10)).ok());
  const std::vector<Sample> m = Parse(Scrape(d.router_metrics_address()));
  EXPECT_EQ(Sum(m, "moe_router_dropped_assignments_total",
                {{"reason", "expert_unavailable"}}),
            response->stats().dropped_expert_unavailable());
  EXPECT_GT(response->stats().dropped_expert_unavailable(), 0);
  EXPECT_EQ(Sum(m, "moe_router_dropped_assignments_total",
                {{"reason", "expert_unavailable"}, {"expert", "0"}}),
            0);
  EXPECT_EQ(Sum(m, "moe_router_worker_up"), 1);
}

}  // namespace
}  // namespace moe
