// What an operator meets, with real processes on 127.0.0.1: a busy port is
// an error naming it; a router without workers is NOT_SERVING and answers
// UNAVAILABLE naming the experts without one; a worker of another dim is
// refused with that reason, logged once and shown in ModelInfo; health has
// per-service names and moe-client says when it talks to a worker; overload
// is refused at once and counted, never queued into degraded answers.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/cli/metrics_text.h"
#include "client/router_client.h"
#include "common/torch/demo_model.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"

namespace moe {
namespace {

using testing::Deployment;
using ::testing::HasSubstr;
using testing::Process;
using testing::Request;

const std::string kModel = "A_moe_eval_nodrop";  // 4 experts, dim 16

at::Tensor Input() {
  return testing::ReadAllTensors(testing::GoldenPath(kModel)).at("input.x");
}

client::ClientOptions Once(absl::Duration timeout = absl::Seconds(10)) {
  client::ClientOptions o;
  o.timeout = timeout;
  o.max_attempts = 1;
  return o;
}

int Occurrences(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos;
       at = text.find(what, at + 1)) {
    ++n;
  }
  return n;
}

double Metric(const std::string& address, const std::string& name,
              const std::map<std::string, std::string>& labels) {
  std::vector<std::string> hp = absl::StrSplit(address, ':');
  httplib::Client http(hp[0], std::stoi(hp[1]));
  auto res = http.Get("/metrics");
  return res ? cli::SumSamples(cli::ParseMetricsText(res->body), name, labels)
             : -1;
}

TEST(OperationsTest, ABusyPortIsAnErrorNamingIt) {
  Deployment d(testing::GoldenPath(kModel), {"0-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  const std::string port = std::to_string(d.worker_port(0));
  for (const std::string& binary : {"moe-expert", "moe-router"}) {
    std::vector<std::string> argv = {
        testing::BinaryPath(binary),
        "--checkpoint=" + testing::GoldenPath(kModel), "--host=127.0.0.1",
        "--port=" + port, "--metrics_port=-1"};
    if (binary == "moe-router") argv.push_back("--workers=127.0.0.1:" + port);
    auto second = testing::StartProcess(
        argv, testing::TempDir() + "/busy-" + binary + ".log");
    ASSERT_NE(second, nullptr);
    EXPECT_NE(second->Wait(absl::Seconds(60)), 0) << binary;
    EXPECT_THAT(second->Log(), HasSubstr("cannot listen on 127.0.0.1:" + port))
        << binary;
    EXPECT_THAT(second->Log(), HasSubstr("already in use")) << binary;
  }
  EXPECT_TRUE(d.worker(0).running());
}

TEST(OperationsTest, ARouterWithoutWorkersIsNotReadyAndSaysWhy) {
  const std::string port_file = testing::TempDir() + "/lonely.port";
  // Port 1 on loopback: nothing listens there.
  auto router = testing::StartProcess(
      {testing::BinaryPath("moe-router"),
       "--checkpoint=" + testing::GoldenPath(kModel), "--host=127.0.0.1",
       "--port=0", "--port_file=" + port_file, "--metrics_port=-1",
       "--workers=127.0.0.1:1", "--probe_interval_ms=100"},
      port_file + ".log");
  ASSERT_NE(router, nullptr);
  auto port =
      testing::WaitForPortFile(port_file, absl::Seconds(60), router.get());
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string address = "127.0.0.1:" + std::to_string(*port);
  auto health = client::CheckHealth(address, absl::Seconds(5), "moe.v1.Router");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  auto r = client::RouterClient::Create(address, Once())
               ->Forward(Request(Input(), moe::v1::RoutingOptions()));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("not ready: no worker yet for experts"));
  auto info = client::RouterClient::Create(address, Once())->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->ready());
  ASSERT_EQ(info->workers_size(), 1);
  EXPECT_EQ(info->workers(0).state(), "unreachable");
  EXPECT_FALSE(info->workers(0).reason().empty());
}

TEST(OperationsTest, AWorkerOfAnotherDimIsRefusedWithItsReasonOnce) {
  common::LayerConfig config = common::DefaultDemoConfig();
  config.dim = 8;
  config.num_experts = 4;
  const std::string other = testing::TempDir() + "/dim8.safetensors";
  ASSERT_TRUE(common::WriteDemoCheckpoint(other, config, 1, 3).ok());
  Deployment d(testing::GoldenPath(kModel), {"0-3", "0-3"});
  d.SetWorkerCheckpoint(1, other);
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto client = client::RouterClient::Create(d.router_address(), Once());
  const std::string wrong = "127.0.0.1:" + std::to_string(d.worker_port(1));
  moe::v1::WorkerInfo refused;
  for (int i = 0; i < 100 && refused.state() != "wrong_model"; ++i) {
    auto info = client->GetModelInfo();
    ASSERT_TRUE(info.ok());
    for (const auto& w : info->workers()) {
      if (w.address() == wrong) refused = w;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(refused.state(), "wrong_model");
  EXPECT_THAT(refused.reason(), HasSubstr("dim 8; the router's is 16"));
  // Probed again and again (every 100 ms): still one line about it. The
  // worker counts the probes it answered.
  auto probes = [&] {
    return Metric(d.worker_metrics_address(1), "moe_grpc_server_handled_total",
                  {{"method", "/moe.v1.ExpertWorker/GetShardInfo"}});
  };
  const double seen = probes();
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (probes() < seen + 5 && absl::Now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(probes(), seen + 5) << "the router stopped probing the worker";
  EXPECT_EQ(Occurrences(d.router().Log(), "dim 8; the router's is 16"), 1)
      << d.router().Log();
  // It never answers for the model.
  auto r = client->Forward(Request(Input(), moe::v1::RoutingOptions()));
  EXPECT_TRUE(r.ok()) << r.status();
}

TEST(OperationsTest, HealthNamesItsServiceAndTheClientKnowsAWorker) {
  Deployment d(testing::GoldenPath(kModel), {"0-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  const std::string worker = "127.0.0.1:" + std::to_string(d.worker_port(0));
  auto as_worker =
      client::CheckHealth(worker, absl::Seconds(5), "moe.v1.ExpertWorker");
  ASSERT_TRUE(as_worker.ok());
  EXPECT_EQ(*as_worker, grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(client::CheckHealth(worker, absl::Seconds(5), "moe.v1.Router")
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  std::string out;
  EXPECT_NE(testing::RunProcess({testing::BinaryPath("moe-client"), "health",
                                 "--target=" + worker},
                                &out),
            0);
  EXPECT_THAT(out, HasSubstr("is an expert worker (moe.v1.ExpertWorker), not "
                             "a router"));
}

// Many clients with a short deadline against small queue bounds: what
// cannot be served in time is refused at once and counted; every accepted
// request is whole (no deadline drops) and within the queue bound plus its
// own work.
TEST(OperationsTest, OverloadIsRefusedAtOnceNotDegraded) {
  common::LayerConfig config = common::DefaultDemoConfig();  // dim 512
  const std::string path = testing::TempDir() + "/overload.safetensors";
  ASSERT_TRUE(common::WriteDemoCheckpoint(path, config, 1, 0).ok());
  Deployment d(path, {"0-7", "8-15"},
               {"--max_queue_ms=400", "--threads=2", "--max_queued=256"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const at::Tensor x = at::randn({2, 512, 512}, gen);
  moe::v1::RoutingOptions options;
  options.set_policy(moe::v1::ALL);
  const moe::v1::ForwardRequest request = Request(x, options);
  // Warm-up: the estimate needs finished forwards.
  auto client = client::RouterClient::Create(d.router_address(), Once());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client->Forward(request).ok());

  constexpr absl::Duration kDeadline = absl::Seconds(2);
  std::atomic<int> ok{0}, refused{0}, degraded{0}, other{0}, slow_refusal{0};
  std::mutex mu;
  std::vector<double> accepted_ms;
  std::string first_other;
  const absl::Time limit = absl::Now() + absl::Seconds(8);
  std::vector<std::thread> load;
  for (int t = 0; t < 16; ++t) {
    load.emplace_back([&] {
      auto c =
          client::RouterClient::Create(d.router_address(), Once(kDeadline));
      while (absl::Now() < limit) {
        const absl::Time start = absl::Now();
        auto r = c->Forward(request);
        const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
        std::lock_guard<std::mutex> lock(mu);
        if (r.ok() && !r->degraded()) {
          ++ok;
          accepted_ms.push_back(ms);
        } else if (r.ok()) {
          ++degraded;
        } else if (absl::IsResourceExhausted(r.status())) {
          ++refused;
          if (ms > 100) ++slow_refusal;
          // A refused caller backs off, as a well-behaved one does.
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        } else {
          ++other;
          if (first_other.empty()) first_other = r.status().ToString();
        }
      }
    });
  }
  for (std::thread& t : load) t.join();
  std::sort(accepted_ms.begin(), accepted_ms.end());
  const double p50 =
      accepted_ms.empty() ? 0 : accepted_ms[accepted_ms.size() / 2];
  const double p99 =
      accepted_ms.empty() ? 0 : accepted_ms[accepted_ms.size() * 99 / 100];
  const double counted =
      Metric(d.router_metrics_address(), "moe_router_rejected_requests_total",
             {{"reason", "overloaded"}}) +
      Metric(d.router_metrics_address(), "moe_router_rejected_requests_total",
             {{"reason", "deadline"}});
  std::printf("%s\n", d.PeakRss().c_str());
  std::printf(
      "overload: %d OK (p50 %.0f ms, p99 %.0f ms), %d refused (%d "
      "after > 100 ms), %d degraded, %d other; %.0f counted\n",
      ok.load(), p50, p99, refused.load(), slow_refusal.load(), degraded.load(),
      other.load(), counted);
  EXPECT_GT(ok.load(), 0);
  EXPECT_GT(refused.load(), 0) << "16 clients did not overload 2 threads";
  EXPECT_EQ(degraded.load(), 0);
  EXPECT_EQ(other.load(), 0) << first_other;
  EXPECT_EQ(counted, refused.load());
  EXPECT_LT(p99, absl::ToDoubleMilliseconds(kDeadline));
}

}  // namespace
}  // namespace moe
