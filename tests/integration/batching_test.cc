// Dynamic batching (moe-router --batch_window_us) with real processes on
// 127.0.0.1: concurrent forwards share worker calls yet each gets exactly its
// own in-process result, a forward that gives up does not take the others in
// its batch down with it, and half-precision wires stay close to float32.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/cli/metrics_text.h"
#include "client/router_client.h"
#include "common/torch/demo_model.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"
#include "testing/scrape.h"

namespace moe {
namespace {

using testing::Deployment;
using testing::Reference;
using testing::Request;
using testing::Y;

const std::string kModel = "A_moe_eval_nodrop";  // 4 experts, dim 16

// Calls shared by more than one forward, and all calls, from the router's
// moe_router_worker_batch_forwards histogram; and the tickets (sum).
struct BatchCounts {
  double calls = 0, shared = 0, tickets = 0;
};

BatchCounts RouterBatches(const Deployment& d) {
  const auto m = testing::Scrape(d.router_metrics_address());
  EXPECT_FALSE(m.empty()) << "no /metrics from the router";
  BatchCounts c;
  c.calls = cli::SumSamples(m, "moe_router_worker_batch_forwards_count");
  c.tickets = cli::SumSamples(m, "moe_router_worker_batch_forwards_sum");
  c.shared =
      c.calls - cli::SumSamples(m, "moe_router_worker_batch_forwards_bucket",
                                {{"le", "1"}});
  return c;
}

// One request of the mix: its input and options, on the wire and in-process.
struct Case {
  at::Tensor x;
  moe::v1::RoutingOptions wire;
  router::RoutingOptions local;
};

std::vector<Case> MixedRequests(int n) {
  std::vector<Case> cases;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (int i = 0; i < n; ++i) {
    Case c;
    c.x = at::randn({1 + i % 2, 6 + 5 * i, 16}, gen);
    switch (i % 4) {
      case 0:
        c.wire.set_policy(moe::v1::RANDOM);
        c.wire.set_seed(100 + i);
        c.local.policy = router::SecondExpertPolicy::kRandom;
        c.local.seed = 100 + i;
        break;
      case 1:
        c.wire.set_policy(moe::v1::ALL);
        c.local.policy = router::SecondExpertPolicy::kAll;
        break;
      case 2:
        c.wire.set_policy(moe::v1::THRESHOLD);
        c.local.policy = router::SecondExpertPolicy::kThreshold;
        break;
      default:
        c.wire.set_policy(moe::v1::ALL);
        c.wire.set_capacity_factor(0.5);  // drops: capacity is per request
        c.local.policy = router::SecondExpertPolicy::kAll;
        c.local.capacity_factor = 0.5;
        break;
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

// Workers 0 (experts 0-1) and 1 (experts 2-3) and a router with `flags`.
std::unique_ptr<Deployment> StartTwoWorkers(std::vector<std::string> flags) {
  auto d = std::make_unique<Deployment>(testing::GoldenPath(kModel),
                                        std::vector<std::string>{"0-1", "2-3"},
                                        std::move(flags));
  EXPECT_TRUE(d->StartWorker(0).ok());
  EXPECT_TRUE(d->StartWorker(1).ok());
  absl::Status router = d->StartRouter();
  EXPECT_TRUE(router.ok()) << router << d->router().Log();
  return router.ok() ? std::move(d) : nullptr;
}

// Polls the router's ModelInfo (bounded) until `ready` holds.
bool WaitForInfo(const Deployment& d,
                 const std::function<bool(const moe::v1::ModelInfo&)>& ready,
                 absl::Duration timeout = absl::Seconds(20)) {
  auto client = client::RouterClient::Create(d.router_address());
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto info = client->GetModelInfo();
    if (info.ok() && ready(*info)) return true;
  }
  return false;
}

// Calls the router has out to worker `w`.
int64_t CallsTo(const moe::v1::ModelInfo& info, int w) {
  return info.workers(w).inflight_calls();
}

// Workers (of experts 0-1 and 2-3) that a forward's plan touches.
int WorkersTouched(const router::ForwardResult& r) {
  return (r.plan.count(0) + r.plan.count(1) > 0 ? 1 : 0) +
         (r.plan.count(2) + r.plan.count(3) > 0 ? 1 : 0);
}

TEST(BatchingTest, ConcurrentForwardsShareCallsAndKeepTheirOwnResults) {
  auto up = StartTwoWorkers({"--batch_window_us=10000000", "--threads=8"});
  ASSERT_NE(up, nullptr);
  Deployment& d = *up;
  Reference reference(testing::GoldenPath(kModel));
  const std::vector<Case> cases = MixedRequests(6);
  std::vector<router::ForwardResult> expected;
  int tickets = 0;
  for (const Case& c : cases) {
    expected.push_back(reference.Forward(c.x, c.local));
    tickets += WorkersTouched(expected.back());
  }

  // Both workers frozen: the first forward's calls go out at once (the
  // workers look idle) and stay in flight, so the other five gather behind
  // them, one batch per worker, until the workers resume.
  ASSERT_TRUE(d.worker(0).Freeze());
  ASSERT_TRUE(d.worker(1).Freeze());
  std::vector<absl::StatusOr<moe::v1::ForwardResponse>> responses(
      cases.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  auto send = [&](size_t i) {
    auto client = client::RouterClient::Create(d.router_address());
    responses[i] = client->Forward(Request(cases[i].x, cases[i].wire));
  };
  threads.emplace_back(send, 0);
  ASSERT_TRUE(WaitForInfo(d, [](const moe::v1::ModelInfo& i) {
    return CallsTo(i, 0) == 1 && CallsTo(i, 1) == 1;
  }));
  for (size_t i = 1; i < cases.size(); ++i) threads.emplace_back(send, i);
  // All five are in and gathered in the open batches behind the calls in
  // flight (each once per worker it needs).
  const int first = WorkersTouched(expected[0]);
  ASSERT_TRUE(WaitForInfo(d, [&](const moe::v1::ModelInfo& i) {
    return i.inflight_requests() == static_cast<int64_t>(cases.size()) &&
           i.workers(0).waiting_forwards() + i.workers(1).waiting_forwards() ==
               tickets - first;
  }));
  d.worker(0).Signal(SIGCONT);
  d.worker(1).Signal(SIGCONT);
  for (std::thread& t : threads) t.join();

  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_TRUE(responses[i].ok()) << responses[i].status();
    const moe::v1::ForwardResponse& r = *responses[i];
    EXPECT_FALSE(r.degraded());
    EXPECT_LE(testing::MaxAbsDiff(Y(r), expected[i].y), 1e-6);
    EXPECT_EQ(r.stats().routing().expert_capacity(),
              expected[i].routing.capacity);
    EXPECT_EQ(r.stats().routing().dropped_first(),
              expected[i].routing.counts.dropped[0]);
    EXPECT_EQ(r.stats().routing().dropped_second(),
              expected[i].routing.counts.dropped[1]);
    for (int64_t e = 0; e < 4; ++e) {
      EXPECT_EQ(r.stats().kept_per_expert(e), expected[i].plan.count(e));
    }
  }
  const BatchCounts batches = RouterBatches(d);
  EXPECT_EQ(batches.tickets, tickets);
  // The first forward alone, then the other five together, per worker.
  EXPECT_LE(batches.calls, 4);
  EXPECT_GE(batches.shared, 1);
  // What the workers served is what the router sent.
  double served = 0;
  for (int w = 0; w < 2; ++w) {
    served += testing::ScrapeSum(d.worker_metrics_address(w),
                                 "moe_expert_batch_tokens_count");
  }
  EXPECT_EQ(served, batches.calls);
}

// Forwards of different layers join one call per worker: the segments name
// their layer and the worker runs each with that layer's experts.
TEST(BatchingTest, ForwardsOfDifferentLayersShareOneCall) {
  common::LayerConfig config = common::DefaultDemoConfig();
  config.dim = 16;
  config.num_experts = 4;
  const std::string path = testing::TempDir() + "/three-layers.safetensors";
  ASSERT_TRUE(common::WriteDemoCheckpoint(path, config, 3, /*seed=*/5).ok());
  Deployment d(path, {"0-1", "2-3"},
               {"--batch_window_us=10000000", "--threads=8"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const std::vector<std::string> layers = {"layers.0.ff", "layers.1.ff",
                                           "layers.2.ff", "layers.1.ff"};
  std::vector<at::Tensor> xs;
  std::vector<router::ForwardResult> expected;
  moe::v1::RoutingOptions wire;
  wire.set_policy(moe::v1::ALL);
  router::RoutingOptions local;
  local.policy = router::SecondExpertPolicy::kAll;
  for (const std::string& layer : layers) {
    xs.push_back(at::randn({1, 12, 16}, gen));
    expected.push_back(reference.Forward(xs.back(), local, {}, layer));
  }
  // As above: the first forward's calls held in flight, the others gather.
  ASSERT_TRUE(d.worker(0).Freeze());
  ASSERT_TRUE(d.worker(1).Freeze());
  std::vector<absl::StatusOr<moe::v1::ForwardResponse>> responses(
      layers.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  auto send = [&](size_t i) {
    auto client = client::RouterClient::Create(d.router_address());
    responses[i] = client->Forward(Request(xs[i], wire, layers[i]));
  };
  threads.emplace_back(send, 0);
  ASSERT_TRUE(WaitForInfo(d, [](const moe::v1::ModelInfo& i) {
    return CallsTo(i, 0) == 1 && CallsTo(i, 1) == 1;
  }));
  for (size_t i = 1; i < layers.size(); ++i) threads.emplace_back(send, i);
  int waiting = 0;
  for (size_t i = 1; i < layers.size(); ++i) {
    waiting += WorkersTouched(expected[i]);
  }
  ASSERT_TRUE(WaitForInfo(d, [&](const moe::v1::ModelInfo& i) {
    return i.inflight_requests() == static_cast<int64_t>(layers.size()) &&
           i.workers(0).waiting_forwards() + i.workers(1).waiting_forwards() ==
               waiting;
  }));
  d.worker(0).Signal(SIGCONT);
  d.worker(1).Signal(SIGCONT);
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < layers.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i) + " to " + layers[i]);
    ASSERT_TRUE(responses[i].ok()) << responses[i].status();
    EXPECT_EQ(responses[i]->layer(), layers[i]);
    EXPECT_LE(testing::MaxAbsDiff(Y(*responses[i]), expected[i].y), 1e-6);
  }
  // The layers' outputs differ (the check above could not pass by accident
  // with one layer's experts answering for another's).
  EXPECT_GT(
      testing::MaxAbsDiff(expected[1].y,
                          reference.Forward(xs[1], local, {}, layers[0]).y),
      1e-3);
  // Per worker: the first forward alone, then the other three in one call.
  const BatchCounts batches = RouterBatches(d);
  EXPECT_LE(batches.calls, 4);
  EXPECT_GE(batches.shared, 1);

  // A model of several layers needs the name, and a name it has.
  auto client = client::RouterClient::Create(d.router_address());
  absl::StatusOr<moe::v1::ForwardResponse> unnamed =
      client->Forward(Request(xs[0], wire));
  EXPECT_EQ(unnamed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unnamed.status().message()),
              ::testing::HasSubstr("layer: required, this model has 3 layers: "
                                   "\"layers.0.ff\", \"layers.1.ff\""));
  absl::StatusOr<moe::v1::ForwardResponse> unknown =
      client->Forward(Request(xs[0], wire, "layers.9.ff"));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(unknown.status().message()),
              ::testing::HasSubstr("layer \"layers.9.ff\" not found"));
  // And the router still serves.
  EXPECT_TRUE(client->Forward(Request(xs[0], wire, layers[0])).ok());
}

TEST(BatchingTest, AForwardThatGivesUpLeavesItsBatchToTheOthers) {
  auto up = StartTwoWorkers({"--batch_window_us=10000000", "--threads=8"});
  ASSERT_NE(up, nullptr);
  Deployment& d = *up;
  Reference reference(testing::GoldenPath(kModel));
  const std::vector<Case> cases = MixedRequests(3);
  for (const Case& c : cases) {
    ASSERT_EQ(WorkersTouched(reference.Forward(c.x, c.local)), 2);
  }

  // Worker 1 frozen. Forward 0 keeps a call to it in flight, so forwards 1
  // (1 s deadline) and 2 (30 s) share the next batch for it. Forward 1 gives
  // up at its deadline; the batch still runs for forward 2 once the worker
  // resumes.
  ASSERT_TRUE(d.worker(1).Freeze());
  std::vector<absl::StatusOr<moe::v1::ForwardResponse>> responses(
      cases.size(), absl::UnknownError("not run"));
  std::vector<absl::Duration> took(cases.size());
  std::vector<absl::Time> ended(cases.size());
  absl::Notification first_gave_up;
  auto send = [&](size_t i, absl::Duration timeout) {
    client::ClientOptions options;
    options.timeout = timeout;
    options.max_attempts = 1;
    auto client = client::RouterClient::Create(d.router_address(), options);
    const absl::Time start = absl::Now();
    responses[i] = client->Forward(Request(cases[i].x, cases[i].wire));
    ended[i] = absl::Now();
    took[i] = ended[i] - start;
    if (i == 1) first_gave_up.Notify();
  };
  std::vector<std::thread> threads;
  threads.emplace_back(send, 0, absl::Seconds(30));
  ASSERT_TRUE(WaitForInfo(
      d, [](const moe::v1::ModelInfo& i) { return CallsTo(i, 1) == 1; }));
  threads.emplace_back(send, 1, absl::Seconds(1));
  threads.emplace_back(send, 2, absl::Seconds(30));
  ASSERT_TRUE(WaitForInfo(d, [](const moe::v1::ModelInfo& i) {
    return i.inflight_requests() == 3;
  }));
  // Forward 1 gives up at its deadline while the worker is still frozen.
  ASSERT_TRUE(first_gave_up.WaitForNotificationWithTimeout(absl::Seconds(20)));
  d.worker(1).Signal(SIGCONT);
  for (std::thread& t : threads) t.join();

  // Forward 1: answered by its deadline, without worker 1's experts.
  EXPECT_LT(took[1], absl::Milliseconds(1300));
  if (responses[1].ok()) {
    EXPECT_TRUE(responses[1]->degraded());
    const router::ForwardResult without =
        reference.Forward(cases[1].x, cases[1].local, {2, 3});
    EXPECT_LE(testing::MaxAbsDiff(Y(*responses[1]), without.y), 1e-6);
  } else {
    EXPECT_EQ(responses[1].status().code(), absl::StatusCode::kDeadlineExceeded)
        << responses[1].status();
  }
  // Forwards 0 and 2: whole, once the worker resumed.
  for (size_t i : {0, 2}) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_TRUE(responses[i].ok()) << responses[i].status();
    EXPECT_FALSE(responses[i]->degraded());
    // Ended after forward 1 gave up (forward 0 started earlier, so its
    // duration alone can be the shorter).
    EXPECT_GE(ended[i], ended[1]);
    EXPECT_LE(
        testing::MaxAbsDiff(Y(*responses[i]),
                            reference.Forward(cases[i].x, cases[i].local).y),
        1e-6);
  }
  EXPECT_GE(RouterBatches(d).shared, 1);
  // The router kept serving and the worker was never marked down.
  auto client = client::RouterClient::Create(d.router_address());
  auto after = client->Forward(Request(cases[2].x, cases[2].wire));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_FALSE(after->degraded());
}

// Half-precision wire: rows are converted per piece on the router, outputs
// converted back while they are combined; batched forwards included.
class HalfWireTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HalfWireTest, ConcurrentForwardsStayCloseToFloat32) {
  auto up = StartTwoWorkers(
      {"--batch_window_us=10000000", "--wire_dtype=" + GetParam()});
  ASSERT_NE(up, nullptr);
  Deployment& d = *up;
  Reference reference(testing::GoldenPath(kModel));
  const std::vector<Case> cases = MixedRequests(4);
  std::vector<absl::StatusOr<moe::v1::ForwardResponse>> responses(
      cases.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] {
      auto client = client::RouterClient::Create(d.router_address());
      responses[i] = client->Forward(Request(cases[i].x, cases[i].wire));
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_TRUE(responses[i].ok()) << responses[i].status();
    EXPECT_FALSE(responses[i]->degraded());
    const router::ForwardResult expected =
        reference.Forward(cases[i].x, cases[i].local);
    const double scale = std::max(
        1.0, testing::MaxAbsDiff(expected.y, at::zeros_like(expected.y)));
    const double diff = testing::MaxAbsDiff(Y(*responses[i]), expected.y);
    // bfloat16 keeps 8 significant bits, float16 11; measured 6-9e-4 and
    // 8-9e-5 on this model.
    EXPECT_LE(diff, (GetParam() == "bfloat16" ? 5e-3 : 5e-4) * scale);
    EXPECT_GT(diff, 0.0) << "the rows did not travel in " << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(WireDTypes, HalfWireTest,
                         ::testing::Values("bfloat16", "float16"));

}  // namespace
}  // namespace moe
