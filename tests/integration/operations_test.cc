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

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/router_client.h"
#include "common/torch/demo_model.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"
#include "testing/scrape.h"

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

// The router's own times of the forwards it answered OK, in ms, from the
// `--log_requests` lines of `log` after offset `from` (sorted).
std::vector<double> RouterOkMs(const std::string& log, size_t from) {
  std::vector<double> ms;
  for (absl::string_view line :
       absl::StrSplit(absl::string_view(log).substr(from), '\n')) {
    const size_t at = line.find(": OK in ");
    if (!absl::StrContains(line, "moe-router: Forward ") ||
        at == absl::string_view::npos) {
      continue;
    }
    absl::string_view took = line.substr(at + 8);
    took = took.substr(0, took.find(' '));
    absl::Duration d;
    if (absl::ParseDuration(took, &d)) {
      ms.push_back(absl::ToDoubleMilliseconds(d));
    }
  }
  std::sort(ms.begin(), ms.end());
  return ms;
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
    return testing::ScrapeSum(
        d.worker_metrics_address(1), "moe_grpc_server_handled_total",
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

// A forward goes by one request ID: the caller's x-request-id (C++ and
// REST clients alike) or, when it sends none or an unusable one, one the
// router makes; the answer carries it, the router's log line names the
// call by it, so do the lines of the workers its worker calls reach, and the
// client's error ends with it.
TEST(OperationsTest, EveryForwardGoesByItsRequestIdInAnswersLogsAndErrors) {
  auto http_port = testing::FreeLoopbackPort();
  ASSERT_TRUE(http_port.ok());
  Deployment d(testing::GoldenPath(kModel), {"0-3"},
               {"--log_requests", absl::StrCat("--http_port=", *http_port)});
  d.SetWorkerFlags({"--log_requests"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartRouter().ok());
  auto client = client::RouterClient::Create(d.router_address(), Once());
  moe::v1::ForwardRequest request = Request(Input(), {});
  auto ok = client->Forward(request, "trace-42");
  ASSERT_TRUE(ok.ok()) << ok.status();
  request.set_layer("no.such.layer");
  auto chosen = client->Forward(request, "trace-43");
  ASSERT_EQ(chosen.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::EndsWith(chosen.status().message(), " [request trace-43]"))
      << chosen.status();
  auto made = client->Forward(request);
  ASSERT_FALSE(made.ok());
  const std::string message(made.status().message());
  const size_t at = message.rfind(" [request ");
  ASSERT_NE(at, std::string::npos) << message;
  const std::string made_id = message.substr(at + 10, 16);
  EXPECT_EQ(message.size(), at + 10 + 16 + 1) << message;
  auto unsent = client->Forward(request, "two words");
  EXPECT_EQ(unsent.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unsent.status().message(), HasSubstr("request ID"));

  // A caller's ID the router cannot use is replaced, and the answer says by
  // what.
  auto stub = moe::v1::Router::NewStub(grpc::CreateChannel(
      d.router_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.AddMetadata("x-request-id", "semi;colon");
  moe::v1::ForwardResponse response;
  ASSERT_TRUE(stub->Forward(&context, Request(Input(), {}), &response).ok());
  auto echoed = context.GetServerInitialMetadata().find("x-request-id");
  ASSERT_NE(echoed, context.GetServerInitialMetadata().end());
  const std::string replaced(echoed->second.data(), echoed->second.size());
  EXPECT_EQ(replaced.size(), 16u) << replaced;

  httplib::Client http("127.0.0.1", *http_port);
  auto rest = http.Post("/v2/models/" + kModel + "/infer",
                        {{"X-Request-Id", "rest-7"}}, "{}", "application/json");
  ASSERT_TRUE(rest);
  EXPECT_EQ(rest->status, 400);
  EXPECT_EQ(rest->get_header_value("X-Request-Id"), "rest-7");

  const std::string log = d.router().Log();
  EXPECT_THAT(log, HasSubstr("Forward trace-42 from "));
  EXPECT_THAT(log, HasSubstr("Forward trace-43 from "));
  EXPECT_THAT(log, HasSubstr("Forward " + made_id + " from "));
  EXPECT_THAT(log, HasSubstr("Forward " + replaced + " from "));
  EXPECT_THAT(log, HasSubstr("REST infer rest-7 from "));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("semi;colon")));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("two words")));
  // The worker's lines: the forwards that reached it, by the same IDs.
  const std::string worker_log = d.worker(0).Log();
  EXPECT_THAT(worker_log, HasSubstr(" for request trace-42: OK in "));
  EXPECT_THAT(worker_log, HasSubstr(" for request " + replaced + ": OK in "));
  EXPECT_THAT(worker_log, ::testing::Not(HasSubstr("trace-43")));
}

// Many clients with a short deadline against small queue bounds: what
// cannot be served in time is refused at once and counted; every accepted
// request is whole (no deadline drops) and within the queue bound plus its
// own work.
double SortedPercentile(const std::vector<double>& sorted, int p) {
  return sorted.empty() ? 0 : sorted[sorted.size() * p / 100];
}

struct OverloadRun {
  int ok = 0, refused = 0, slow_refusals = 0, degraded = 0, other = 0;
  std::string first_other;
  std::vector<double> accepted_ms;  // sorted
  double Percentile(int p) const { return SortedPercentile(accepted_ms, p); }
};

// `clients` closed-loop clients with `deadline` send `request` for
// `duration`; a refused one backs off as a well-behaved one does:
// exponentially from 50 ms up to 800 ms, with jitter, reset by a success.
OverloadRun Overload(const std::string& address,
                     const moe::v1::ForwardRequest& request, int clients,
                     absl::Duration deadline, absl::Duration duration) {
  OverloadRun run;
  std::mutex mu;
  const absl::Time limit = absl::Now() + duration;
  std::vector<std::thread> load;
  for (int t = 0; t < clients; ++t) {
    load.emplace_back([&] {
      auto c = client::RouterClient::Create(address, Once(deadline));
      std::mt19937 jitter(
          std::hash<std::thread::id>()(std::this_thread::get_id()));
      int backoff_ms = 50;
      while (absl::Now() < limit) {
        const absl::Time start = absl::Now();
        auto r = c->Forward(request);
        const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
        bool back_off = false;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (r.ok() && !r->degraded()) {
            ++run.ok;
            run.accepted_ms.push_back(ms);
            backoff_ms = 50;
          } else if (r.ok()) {
            ++run.degraded;
          } else if (absl::IsResourceExhausted(r.status())) {
            ++run.refused;
            if (ms > 100) ++run.slow_refusals;
            back_off = true;
          } else {
            ++run.other;
            if (run.first_other.empty()) {
              run.first_other = r.status().ToString();
            }
          }
        }
        if (back_off) {
          const int sleep_ms =
              backoff_ms / 2 + static_cast<int>(jitter() % backoff_ms);
          std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
          backoff_ms = std::min(800, backoff_ms * 2);
        }
      }
    });
  }
  for (std::thread& t : load) t.join();
  std::sort(run.accepted_ms.begin(), run.accepted_ms.end());
  return run;
}

// At 64 and then 96 clients (16 and 24 in a sanitizer build, below) on a
// router with 2 forward threads, accepted requests end, by the router's own
// times (its --log_requests lines), at the median within --max_queue_ms plus
// 1.5x one request's time alone and at p90 within --max_queue_ms plus 3x
// it; at the client, the median within --max_queue_ms plus 1.5x the
// client's time alone, and none misses its deadline (the clients share this
// machine's two cores with the router and workers, and each refused request
// still costs the router its 2 MiB: docs/operations.md has the numbers;
// with 20-30 accepted, p99 is the slowest one, whose client thread waited
// for a core among 96). The rest are refused at once, none is degraded, and
// the counter counts every refusal.
TEST(OperationsTest, OverloadIsRefusedAtOnceNotDegraded) {
  common::LayerConfig config = common::DefaultDemoConfig();  // dim 512
  const std::string path = testing::TempDir() + "/overload.safetensors";
  ASSERT_TRUE(common::WriteDemoCheckpoint(path, config, 1, 0).ok());
  constexpr int kMaxQueueMs = 400;
  Deployment d(path, {"0-7", "8-15"},
               {absl::StrCat("--max_queue_ms=", kMaxQueueMs), "--threads=2",
                "--max_queued=256", "--log_requests"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const at::Tensor x = at::randn({2, 512, 512}, gen);
  moe::v1::RoutingOptions options;
  options.set_policy(moe::v1::ALL);
  const moe::v1::ForwardRequest request = Request(x, options);
  // Warm-up (the estimate needs finished forwards), then one request's
  // service time alone: the median of five.
  auto client = client::RouterClient::Create(d.router_address(), Once());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client->Forward(request).ok());
  std::vector<double> alone;
  const size_t alone_from = d.router().Log().size();
  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    ASSERT_TRUE(client->Forward(request).ok());
    alone.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  std::sort(alone.begin(), alone.end());
  const std::vector<double> router_alone =
      RouterOkMs(d.router().Log(), alone_from);
  ASSERT_EQ(router_alone.size(), 5u) << d.router().Log();
  // What admission bounds is the router's own time, from a request's
  // arrival to its answer; the client's adds its own serializing and
  // parsing of 2 MiB each way, on a thread that waits for one of two cores
  // among 64-96 (up to 300 ms more at p90 on this machine).
  const double bound_ms = kMaxQueueMs + 1.5 * router_alone[2];
  const double tail_bound_ms = kMaxQueueMs + 3 * router_alone[2];
  const double client_bound_ms = kMaxQueueMs + 1.5 * alone[2];
  // Room for the tail bound, so that what is tested is admission (a
  // forward the router expects to miss its deadline is refused, counted
  // as "deadline").
#ifndef MOE_SANITIZED
  const absl::Duration kDeadline =
      absl::Milliseconds(std::max(2000.0, kMaxQueueMs + 4 * alone[2]));
  const std::vector<int> kClients = {64, 96};
#else
  // Under AddressSanitizer every process here runs 2-5x slower on the same
  // two cores, and 64-96 client threads that serialize 2 MiB requests
  // starve the router of the time to even receive them: on one machine
  // (2026-12-05) a request alone took 320-460 ms and 16-123 requests per
  // run missed a 2 s deadline before the router had read them, with the
  // router's code unchanged from runs that had passed. Fewer clients
  // still overload it (2 forward threads, 400 ms of queue), and the
  // deadline leaves room for the slower build.
  const absl::Duration kDeadline =
      absl::Milliseconds(std::max(4000.0, kMaxQueueMs + 8 * alone[2]));
  const std::vector<int> kClients = {16, 24};
#endif
  int refused = 0;
  for (int clients : kClients) {
    const size_t log_from = d.router().Log().size();
    const OverloadRun run = Overload(d.router_address(), request, clients,
                                     kDeadline, absl::Seconds(6));
    const std::vector<double> router_ms =
        RouterOkMs(d.router().Log(), log_from);
    refused += run.refused;
    std::printf(
        "overload, %d clients: %d OK, at the router p50 %.0f ms, p90 %.0f ms, "
        "p99 %.0f ms (bounds %.0f and %.0f ms = %d + 1.5 and 3 x %.0f alone); "
        "at the client p50 %.0f ms (bound %.0f = %d + 1.5 x %.0f alone), "
        "p90 %.0f ms, p99 %.0f ms; %d refused (%d after > 100 ms), "
        "%d degraded, %d other\n",
        clients, run.ok, SortedPercentile(router_ms, 50),
        SortedPercentile(router_ms, 90), SortedPercentile(router_ms, 99),
        bound_ms, tail_bound_ms, kMaxQueueMs, router_alone[2],
        run.Percentile(50), client_bound_ms, kMaxQueueMs, alone[2],
        run.Percentile(90), run.Percentile(99), run.refused, run.slow_refusals,
        run.degraded, run.other);
    // Every accepted forward is in the router's log, with its time.
    EXPECT_EQ(static_cast<int>(router_ms.size()), run.ok) << clients;
    EXPECT_GT(run.ok, 0) << clients;
    EXPECT_GT(run.refused, 0) << clients << " clients did not overload";
    EXPECT_EQ(run.degraded, 0) << clients;
    EXPECT_EQ(run.other, 0) << clients << ": " << run.first_other;
#ifndef MOE_SANITIZED
    EXPECT_LE(SortedPercentile(router_ms, 50), bound_ms) << clients;
    EXPECT_LE(SortedPercentile(router_ms, 90), tail_bound_ms) << clients;
    EXPECT_LE(run.Percentile(50), client_bound_ms) << clients;
#else
    // Under AddressSanitizer the 64-96 client threads, the router and the
    // workers run 2-5x slower each on the same cores, and the few accepted
    // requests (10-20) make p99 their slowest: the latency bounds are
    // checked in the plain build; here the refusals, the deadline and the
    // counter are.
    std::printf("sanitizer build: latency bounds checked in the plain build\n");
#endif
    EXPECT_LT(run.Percentile(99), absl::ToDoubleMilliseconds(kDeadline));
  }
  std::printf("%s\n", d.PeakRss().c_str());
  const double counted =
      testing::ScrapeSum(d.router_metrics_address(),
                         "moe_router_rejected_requests_total",
                         {{"reason", "overloaded"}}) +
      testing::ScrapeSum(d.router_metrics_address(),
                         "moe_router_rejected_requests_total",
                         {{"reason", "deadline"}});
  EXPECT_EQ(counted, refused);
}

}  // namespace
}  // namespace moe
