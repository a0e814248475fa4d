// The distributed path with real processes on 127.0.0.1: parity with the
// in-process engine and the golden vectors through moe-up, worker failures
// (killed, frozen, restarted), bad input, graceful shutdown.
#include <ATen/ATen.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "client/router_client.h"
#include "common/torch/torch_convert.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/loopback.h"
#include "testing/raw_call.h"
#include "testing/reference.h"
#include "testing/scrape.h"

namespace moe {
namespace {

using testing::Deployment;
using testing::Process;

using testing::Reference;
using testing::Request;
using testing::Y;

// ---------------------------------------------------------------------------
// Parity through moe-up with 2 and 3 workers.

struct ParityCase {
  std::string name;
  int workers;
};

void PrintTo(const ParityCase& c, std::ostream* os) {
  *os << c.name << " with " << c.workers << " workers";
}

class MoeUpParityTest : public ::testing::TestWithParam<ParityCase> {};

TEST_P(MoeUpParityTest, DistributedEqualsInProcessAndGolden) {
  const ParityCase& c = GetParam();
  const std::string path = testing::GoldenPath(c.name);
  const std::string port_file =
      testing::TempDir() + "/" + c.name + std::to_string(c.workers) + ".port";
  auto process = testing::StartProcess(
      {testing::BinaryPath("moe-up"), "--checkpoint=" + path,
       "--workers=" + std::to_string(c.workers), "--port=0",
       "--port_file=" + port_file},
      port_file + ".log");
  ASSERT_NE(process, nullptr);
  Process& up = *process;
  auto port = testing::WaitForPortFile(port_file, absl::Seconds(90), &up);
  ASSERT_TRUE(port.ok()) << port.status() << up.Log();

  auto golden = testing::ReadAllTensors(path);
  const at::Tensor x = golden.at("input.x");
  moe::v1::RoutingOptions options;
  router::RoutingOptions local;
  if (testing::GoldenMode(c.name) == "train") {
    options.set_mode(moe::v1::TRAIN);
    local.mode = router::Mode::kTrain;
  }
  options.set_return_trace(true);
  if (golden.count("input.probs")) {
    *options.mutable_second_choice_uniforms() =
        testing::WireTensor(golden.at("input.probs"));
    local.second_choice_uniforms =
        common::FromTorch(golden.at("input.probs")).value();
  }
  auto client =
      client::RouterClient::Create("127.0.0.1:" + std::to_string(*port));
  auto response = client->Forward(Request(x, options));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_FALSE(response->degraded());

  Reference reference(path);
  router::ForwardResult expected = reference.Forward(x, local);
  EXPECT_LE(testing::MaxAbsDiff(Y(*response), expected.y), 1e-6);
  EXPECT_LE(testing::MaxAbsDiff(Y(*response), golden.at("output.y")), 1e-5);
  EXPECT_NEAR(response->losses().balance_loss(), expected.losses.balance_loss,
              1e-6);
  EXPECT_EQ(response->stats().routing().dropped_first(),
            expected.routing.counts.dropped[0]);
  EXPECT_EQ(response->stats().routing().dropped_second(),
            expected.routing.counts.dropped[1]);
  const std::string level = expected.inner ? "outer." : "";
  int checked = 0;
  for (const auto& t : response->trace()) {
    if (t.name() == "trace." + level + "gate_indices" ||
        t.name() == "trace." + level + "positions") {
      const std::string key = "expected." + t.name().substr(6);
      EXPECT_TRUE(at::equal(testing::FromWire(t.tensor()), golden.at(key)))
          << t.name();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 2);

  client.reset();
  up.Signal(SIGTERM);
  EXPECT_EQ(up.Wait(absl::Seconds(30)), 0) << up.Log();
}

std::vector<ParityCase> ParityCases() {
  std::vector<ParityCase> cases;
  for (const std::string& name : testing::GoldenCases()) {
    for (int workers : {2, 3}) cases.push_back({name, workers});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllGoldenCases, MoeUpParityTest,
                         ::testing::ValuesIn(ParityCases()),
                         [](const ::testing::TestParamInfo<ParityCase>& info) {
                           return info.param.name + "_" +
                                  std::to_string(info.param.workers) +
                                  "workers";
                         });

// ---------------------------------------------------------------------------
// --log_format=json: every line moe-up, its router and its workers write is
// one JSON object (time, level, program, message), from start to shutdown.

TEST(LogFormatTest, JsonLinesFromMoeUpAndEveryProcessItStarts) {
  const std::string port_file = testing::TempDir() + "/json-logs.port";
  auto process = testing::StartProcess(
      {testing::BinaryPath("moe-up"),
       "--checkpoint=" + testing::GoldenPath("A_moe_eval_nodrop"),
       "--workers=2", "--port=0", "--port_file=" + port_file,
       "--log_format=json"},
      port_file + ".log");
  ASSERT_NE(process, nullptr);
  auto port =
      testing::WaitForPortFile(port_file, absl::Seconds(90), process.get());
  ASSERT_TRUE(port.ok()) << port.status() << process->Log();
  auto client =
      client::RouterClient::Create("127.0.0.1:" + std::to_string(*port));
  auto response = client->Forward(
      Request(testing::ReadAllTensors(testing::GoldenPath("A_moe_eval_nodrop"))
                  .at("input.x"),
              moe::v1::RoutingOptions()),
      "json-log-1");
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_TRUE(process->Stop(absl::Seconds(30))) << process->Log();
  const std::string log = process->Log();
  std::set<std::string> programs;
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    // moe-up's stdout (the same file here): the router's address, for
    // scripts, not a log line.
    if (line == "127.0.0.1:" + std::to_string(*port)) continue;
    ++lines;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object()) << "not a JSON object: " << line;
    for (const char* key : {"time", "level", "program", "message"}) {
      ASSERT_TRUE(j.contains(key) && j[key].is_string()) << key << ": " << line;
    }
    programs.insert(j["program"].get<std::string>());
  }
  EXPECT_GT(lines, 5) << log;
  for (const char* program : {"moe-up", "moe-router", "moe-expert"}) {
    EXPECT_EQ(programs.count(program), 1u) << program << " wrote no line:\n"
                                           << log;
  }
}

// gRPC's own lines (GRPC_VERBOSITY=debug prints some at its start) go
// through the program's log and take its format too.
TEST(LogFormatTest, GrpcsOwnLinesTakeTheFormat) {
  const std::string port_file = testing::TempDir() + "/grpc-json.port";
  ::setenv("GRPC_VERBOSITY", "DEBUG", 1);
  auto worker = testing::StartProcess(
      {testing::BinaryPath("moe-expert"),
       "--checkpoint=" + testing::GoldenPath("A_moe_eval_nodrop"), "--port=0",
       "--port_file=" + port_file, "--metrics_port=-1", "--log_format=json"},
      port_file + ".log");
  ::unsetenv("GRPC_VERBOSITY");
  ASSERT_NE(worker, nullptr);
  auto port =
      testing::WaitForPortFile(port_file, absl::Seconds(60), worker.get());
  ASSERT_TRUE(port.ok()) << port.status() << worker->Log();
  ASSERT_TRUE(worker->Stop(absl::Seconds(30))) << worker->Log();
  int grpc_lines = 0;
  for (absl::string_view line :
       absl::StrSplit(worker->Log(), '\n', absl::SkipEmpty())) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object()) << "not a JSON object: " << line;
    if (absl::StartsWith(j["message"].get<std::string>(), "grpc ")) {
      ++grpc_lines;
    }
  }
  EXPECT_GT(grpc_lines, 0) << worker->Log();
}

// The JSON lines of `log` that carry `key` with a value containing `id`.
std::vector<nlohmann::json> LinesWith(const std::string& log,
                                      const std::string& key,
                                      const std::string& id) {
  std::vector<nlohmann::json> out;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains(key) && j[key].is_string() &&
        absl::StrContains(j[key].get<std::string>(), id)) {
      out.push_back(j);
    }
  }
  return out;
}

// A request's log lines carry its ID as a field of their own, for a log
// pipeline to filter on: "request_id" on the router's, "request_ids" (the
// forwards a call serves) on the worker's.
TEST(LogFormatTest, RequestLinesCarryTheRequestIdsAsFields) {
  Deployment d(testing::GoldenPath("A_moe_eval_nodrop"), {"0-3"},
               {"--log_requests", "--log_format=json"});
  d.SetWorkerFlags({"--log_requests", "--log_format=json"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto client = client::RouterClient::Create(d.router_address());
  const at::Tensor x =
      testing::ReadAllTensors(testing::GoldenPath("A_moe_eval_nodrop"))
          .at("input.x");
  ASSERT_TRUE(
      client->Forward(Request(x, moe::v1::RoutingOptions()), "json-field-1")
          .ok());
  moe::v1::ForwardRequest bad = Request(x, moe::v1::RoutingOptions());
  bad.set_layer("no-such-layer");
  EXPECT_FALSE(client->Forward(bad, "json-field-2").ok());

  const std::vector<nlohmann::json> ok =
      LinesWith(d.router().Log(), "request_id", "json-field-1");
  ASSERT_EQ(ok.size(), 1u) << d.router().Log();
  EXPECT_EQ(ok[0]["request_id"], "json-field-1");
  EXPECT_EQ(ok[0]["level"], "INFO");
  EXPECT_TRUE(absl::StartsWith(ok[0]["message"].get<std::string>(),
                               "Forward json-field-1 from "))
      << ok[0];
  const std::vector<nlohmann::json> failed =
      LinesWith(d.router().Log(), "request_id", "json-field-2");
  ASSERT_EQ(failed.size(), 1u) << d.router().Log();
  EXPECT_EQ(failed[0]["level"], "WARNING");
  const std::vector<nlohmann::json> worker =
      LinesWith(d.worker(0).Log(), "request_ids", "json-field-1");
  ASSERT_EQ(worker.size(), 1u) << d.worker(0).Log();
  EXPECT_TRUE(absl::StrContains(worker[0]["message"].get<std::string>(),
                                "for request json-field-1"))
      << worker[0];
}

TEST(LogFormatTest, AFormatThatIsNeitherStopsTheProgramNamingTheFlag) {
  for (const std::vector<std::string>& argv :
       std::vector<std::vector<std::string>>{
           {testing::BinaryPath("moe-router"), "--log_format=xml"},
           {testing::BinaryPath("moe-router"), "-log_format=xml"},
           {testing::BinaryPath("moe-expert"), "--log-format", "JSON"}}) {
    std::string log;
    EXPECT_EQ(testing::RunProcess(argv, &log), 1) << log;
    EXPECT_NE(log.find("--log_format (or $MOE_LOG_FORMAT): log format must be "
                       "text or json, not \""),
              std::string::npos)
        << log;
  }
}

// ---------------------------------------------------------------------------
// Worker failures.

const std::string kModel = "A_moe_eval_nodrop";  // 4 experts, dim 16

moe::v1::RoutingOptions AllPolicy() {
  moe::v1::RoutingOptions o;
  o.set_policy(moe::v1::ALL);
  return o;
}

router::RoutingOptions LocalAll() {
  router::RoutingOptions o;
  o.policy = router::SecondExpertPolicy::kAll;
  return o;
}

at::Tensor Input() {
  return testing::ReadAllTensors(testing::GoldenPath(kModel)).at("input.x");
}

TEST(WorkerFailureTest, KilledWorkerWithReplicaChangesNothing) {
  Deployment d(testing::GoldenPath(kModel), {"0-3", "0-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto client = client::RouterClient::Create(d.router_address());
  const at::Tensor x = Input();
  const at::Tensor expected =
      Reference(testing::GoldenPath(kModel)).Forward(x, LocalAll()).y;
  d.worker(1).Signal(SIGKILL);
  d.worker(1).Wait(absl::Seconds(10));
  for (int i = 0; i < 3; ++i) {
    auto r = client->Forward(Request(x, AllPolicy()));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->degraded());
    EXPECT_LE(testing::MaxAbsDiff(Y(*r), expected), 1e-6);
  }
}

// Both warm up before they serve (experts/warm_up.h, ModelEngine::WarmUp),
// say so in their logs, and the warm-up leaves no trace in the answers.
TEST(WarmUpTest, WorkerAndRouterWarmUpBeforeServing) {
  Deployment d(testing::GoldenPath(kModel), {"0-3"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  const std::string worker = d.worker(0).Log(), router = d.router().Log();
  // 4 experts: 4 rows each, then 512 each.
  const size_t warm = worker.find("warm-up: 2 calls, 2064 rows");
  ASSERT_NE(warm, std::string::npos) << worker;
  EXPECT_LT(warm, worker.find("serving on")) << worker;
  const size_t router_warm = router.find("warm-up: one forward of 4096 tokens");
  ASSERT_NE(router_warm, std::string::npos) << router;
  EXPECT_LT(router_warm, router.find("listening on")) << router;
  auto client = client::RouterClient::Create(d.router_address());
  const at::Tensor x = Input();
  auto r = client->Forward(Request(x, AllPolicy()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LE(
      testing::MaxAbsDiff(
          Y(*r),
          Reference(testing::GoldenPath(kModel)).Forward(x, LocalAll()).y),
      1e-6);
}

TEST(WorkerFailureTest, KilledWorkerWithoutReplicaIsDroppedThenRecovers) {
  Deployment d(testing::GoldenPath(kModel), {"0-1", "2-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto client = client::RouterClient::Create(d.router_address());
  const at::Tensor x = Input();
  Reference reference(testing::GoldenPath(kModel));
  const router::ForwardResult full = reference.Forward(x, LocalAll());
  const router::ForwardResult without =
      reference.Forward(x, LocalAll(), {2, 3});

  const int port = d.worker_port(1);
  d.worker(1).Signal(SIGKILL);
  d.worker(1).Wait(absl::Seconds(10));
  auto r = client->Forward(Request(x, AllPolicy()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->degraded());
  EXPECT_EQ(std::vector<int64_t>(r->failed_experts().begin(),
                                 r->failed_experts().end()),
            (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r->stats().dropped_expert_unavailable(),
            full.plan.count(2) + full.plan.count(3));
  EXPECT_GT(r->stats().dropped_expert_unavailable(), 0);
  EXPECT_EQ(r->stats().kept_per_expert(2), 0);
  EXPECT_EQ(r->stats().kept_per_expert(0), full.plan.count(0));
  EXPECT_LE(testing::MaxAbsDiff(Y(*r), without.y), 1e-6);
  EXPECT_GT(testing::MaxAbsDiff(Y(*r), full.y), 1e-3);

  // The worker comes back on the same address: the router recovers.
  ASSERT_TRUE(d.StartWorker(1, port).ok());
  ASSERT_TRUE(d.WaitWorkerState(1, true, absl::Seconds(20)).ok());
  auto again = client->Forward(Request(x, AllPolicy()));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->degraded());
  EXPECT_LE(testing::MaxAbsDiff(Y(*again), full.y), 1e-6);
}

TEST(WorkerFailureTest, FailPolicyAnswersUnavailableWithinTheDeadline) {
  Deployment d(testing::GoldenPath(kModel), {"0-1", "2-3"},
               {"--on_expert_failure=fail"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  client::ClientOptions options;
  options.timeout = absl::Seconds(5);
  options.max_attempts = 1;
  auto client = client::RouterClient::Create(d.router_address(), options);
  d.worker(0).Signal(SIGKILL);
  d.worker(0).Wait(absl::Seconds(10));
  const absl::Time start = absl::Now();
  auto r = client->Forward(Request(Input(), AllPolicy()));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("expert 0"), std::string::npos)
      << r.status();
}

TEST(WorkerFailureTest, FrozenWorkerEndsByTheDeadline) {
  Deployment d(testing::GoldenPath(kModel), {"0-1", "2-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  client::ClientOptions options;
  options.timeout = absl::Seconds(2);
  options.max_attempts = 1;
  auto client = client::RouterClient::Create(d.router_address(), options);
  ASSERT_TRUE(d.worker(1).Freeze());
  const absl::Time start = absl::Now();
  auto r = client->Forward(Request(Input(), AllPolicy()));
  const absl::Duration took = absl::Now() - start;
  d.worker(1).Signal(SIGCONT);
  // The router keeps a reserve before the client's deadline: it answers,
  // degraded, in time.
  EXPECT_LT(took, absl::Seconds(2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->degraded());
  EXPECT_EQ(std::vector<int64_t>(r->failed_experts().begin(),
                                 r->failed_experts().end()),
            (std::vector<int64_t>{2, 3}));
  // The router is still serving.
  EXPECT_TRUE(client->GetModelInfo().ok());
}

// ---------------------------------------------------------------------------
// Model identity.

// A worker started from another checkpoint of the same shapes (a rolling
// upgrade half done, a typo in a path) is refused, said so once, shown in
// ModelInfo and the metrics, and never contributes to an answer.
TEST(ModelIdentityTest, AWorkerOfAnotherModelIsRefusedAndNeverContributes) {
  Deployment d(testing::GoldenPath(kModel), {"0-3", "0-3"});
  d.SetWorkerCheckpoint(1, testing::GoldenPath("B1_moe_eval_drop_mincap"));
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto client = client::RouterClient::Create(d.router_address());
  const std::string wrong = absl::StrCat("127.0.0.1:", d.worker_port(1));
  // Let the router probe the wrong worker several times.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  for (;;) {
    ASSERT_LT(absl::Now(), deadline);
    if (testing::ScrapeSum(
            d.worker_metrics_address(1), "moe_grpc_server_handled_total",
            {{"method", "/moe.v1.ExpertWorker/GetShardInfo"}}) >= 5) {
      break;
    }
  }
  auto info = client->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  const moe::v1::WorkerInfo* refused = nullptr;
  for (const auto& w : info->workers()) {
    if (w.address() == wrong) refused = &w;
  }
  ASSERT_NE(refused, nullptr);
  EXPECT_FALSE(refused->up());
  EXPECT_EQ(refused->state(), "wrong_model");
  EXPECT_NE(refused->reason().find(refused->fingerprint()), std::string::npos)
      << refused->reason();
  EXPECT_NE(refused->reason().find(info->fingerprint()), std::string::npos)
      << refused->reason();
  EXPECT_NE(refused->fingerprint(), info->fingerprint());
  // Logged once, however often it was probed.
  const std::string log = d.router().Log();
  size_t lines = 0;
  for (size_t at = log.find(wrong + " wrong_model"); at != std::string::npos;
       at = log.find(wrong + " wrong_model", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 1u) << log;
  // The metric says so.
  EXPECT_EQ(
      testing::ScrapeSum(d.router_metrics_address(), "moe_router_worker_state",
                         {{"worker", wrong}, {"state", "wrong_model"}}),
      1);
  // Every answer is the right model's; the wrong worker ran nothing.
  const at::Tensor x = Input();
  const at::Tensor expected =
      Reference(testing::GoldenPath(kModel)).Forward(x, LocalAll()).y;
  for (int i = 0; i < 4; ++i) {
    auto r = client->Forward(Request(x, AllPolicy()));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->degraded());
    EXPECT_LE(testing::MaxAbsDiff(Y(*r), expected), 1e-6);
  }
  // Without the right worker, nothing is left to run the experts.
  d.worker(0).Signal(SIGKILL);
  d.worker(0).Wait(absl::Seconds(10));
  auto r = client->Forward(Request(x, AllPolicy()));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->degraded());
  EXPECT_EQ(r->failed_experts_size(), 4);
  EXPECT_EQ(testing::ScrapeSum(d.worker_metrics_address(1),
                               "moe_expert_batch_tokens_count"),
            0);
}

// ---------------------------------------------------------------------------
// Bad input.

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    deployment_ = new Deployment(testing::GoldenPath(kModel), {"0-3"},
                                 {"--max_tokens_per_request=64"});
    ASSERT_TRUE(deployment_->StartWorker(0).ok());
    ASSERT_TRUE(deployment_->StartRouter().ok()) << deployment_->router().Log();
  }
  static void TearDownTestSuite() {
    delete deployment_;
    deployment_ = nullptr;
  }
  absl::Status Send(const moe::v1::ForwardRequest& request) {
    client::ClientOptions options;
    options.max_attempts = 1;
    options.timeout = absl::Seconds(20);
    return client::RouterClient::Create(deployment_->router_address(), options)
        ->Forward(request)
        .status();
  }
  static Deployment* deployment_;
};
Deployment* BadInputTest::deployment_ = nullptr;

TEST_F(BadInputTest, EachMalformedFieldIsNamed) {
  struct Case {
    std::string what;
    moe::v1::ForwardRequest request;
    absl::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  const moe::v1::ForwardRequest good =
      Request(at::randn({1, 8, 16}), moe::v1::RoutingOptions());
  auto with = [&](auto edit) {
    moe::v1::ForwardRequest r = good;
    edit(r);
    return r;
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  cases.push_back(
      {"missing x", moe::v1::ForwardRequest(), kInvalid, "x: missing"});
  cases.push_back({"wrong rank", Request(at::randn({8, 16}), {}), kInvalid,
                   "x: must have rank 3"});
  cases.push_back({"wrong dim", Request(at::randn({1, 8, 15}), {}), kInvalid,
                   "x: last dimension is 15"});
  cases.push_back({"unspecified dtype", with([](auto& r) {
                     r.mutable_x()->set_dtype(moe::v1::DTYPE_UNSPECIFIED);
                   }),
                   kInvalid, "x: dtype DTYPE_UNSPECIFIED"});
  cases.push_back({"unknown dtype", with([](auto& r) {
                     r.mutable_x()->set_dtype(static_cast<moe::v1::DType>(99));
                   }),
                   kInvalid, "x: dtype"});
  cases.push_back({"int64 x", with([](auto& r) {
                     r.mutable_x()->set_dtype(moe::v1::INT64);
                   }),
                   kInvalid, "x: dtype INT64"});
  cases.push_back({"short data", with([](auto& r) {
                     r.mutable_x()->mutable_data()->resize(100);
                   }),
                   kInvalid, "x: data is 100 bytes"});
  cases.push_back({"negative dim",
                   with([](auto& r) { r.mutable_x()->set_shape(1, -8); }),
                   kInvalid, "x: negative dimension"});
  at::Tensor nan = at::randn({1, 8, 16});
  nan[0][3][3] = std::nanf("");
  cases.push_back(
      {"NaN", Request(nan, {}), kInvalid, "x: contains NaN or Inf"});
  at::Tensor inf = at::randn({1, 8, 16});
  inf[0][0][0] = INFINITY;
  cases.push_back(
      {"Inf", Request(inf, {}), kInvalid, "x: contains NaN or Inf"});
  cases.push_back({"empty batch", Request(at::randn({0, 8, 16}), {}), kInvalid,
                   "x: batch and tokens must be at least 1"});
  cases.push_back({"too many tokens", Request(at::randn({2, 64, 16}), {}),
                   absl::StatusCode::kResourceExhausted,
                   "2 x 64 tokens exceed the router's limit of 64 tokens per "
                   "request"});
  cases.push_back({"unknown layer",
                   with([](auto& r) { r.set_layer("blocks.0.ff"); }),
                   absl::StatusCode::kNotFound,
                   "layer \"blocks.0.ff\" not found: this model has a single "
                   "unnamed layer"});
  cases.push_back({"unknown failure policy", with([](auto& r) {
                     r.set_on_expert_failure(
                         static_cast<moe::v1::ExpertFailurePolicy>(9));
                   }),
                   kInvalid, "on_expert_failure: unknown value 9"});
  cases.push_back({"huge shape", with([](auto& r) {
                     r.mutable_x()->set_shape(0, 1LL << 40);
                   }),
                   absl::StatusCode::kResourceExhausted, "x: "});
  cases.push_back({"bad draws shape", with([](auto& r) {
                     *r.mutable_options()->mutable_second_choice_uniforms() =
                         testing::WireTensor(at::rand({3, 8}));
                   }),
                   kInvalid, "second_choice_uniforms: shape [3, 8]"});
  cases.push_back({"draws out of range", with([](auto& r) {
                     *r.mutable_options()->mutable_second_choice_uniforms() =
                         testing::WireTensor(at::full({1, 8}, 2.0f));
                   }),
                   kInvalid, "second_choice_uniforms: values must be"});
  cases.push_back({"draws with policy all", with([](auto& r) {
                     r.mutable_options()->set_policy(moe::v1::ALL);
                     *r.mutable_options()->mutable_second_choice_uniforms() =
                         testing::WireTensor(at::rand({1, 8}));
                   }),
                   kInvalid, "random policy only"});
  cases.push_back({"unknown policy", with([](auto& r) {
                     r.mutable_options()->set_policy(
                         static_cast<moe::v1::SecondExpertPolicy>(42));
                   }),
                   kInvalid, "options.policy: unknown value 42"});
  cases.push_back({"unknown mode", with([](auto& r) {
                     r.mutable_options()->set_mode(
                         static_cast<moe::v1::Mode>(7));
                   }),
                   kInvalid, "options.mode: unknown value 7"});
  cases.push_back({"negative threshold", with([](auto& r) {
                     r.mutable_options()->set_threshold(-0.1f);
                   }),
                   kInvalid, "options.threshold"});
  cases.push_back({"NaN threshold", with([](auto& r) {
                     r.mutable_options()->set_threshold(std::nanf(""));
                   }),
                   kInvalid, "options.threshold"});
  cases.push_back({"zero capacity factor", with([](auto& r) {
                     r.mutable_options()->set_capacity_factor(0);
                   }),
                   kInvalid, "options.capacity_factor"});
  cases.push_back({"infinite capacity factor", with([](auto& r) {
                     r.mutable_options()->set_capacity_factor(INFINITY);
                   }),
                   kInvalid, "options.capacity_factor"});
  for (const Case& c : cases) {
    absl::Status s = Send(c.request);
    EXPECT_EQ(s.code(), c.code) << c.what << ": " << s;
    EXPECT_NE(s.message().find(c.message), std::string::npos)
        << c.what << ": " << s;
  }
  // Bytes that are not a ForwardRequest at all.
  {
    const grpc::Status status = testing::RawCall(
        deployment_->router_address(), "/moe.v1.Router/Forward",
        std::string("\xff\xff\xff\x0f garbage"), absl::Seconds(10));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("could not be parsed as a "
                                          "moe.v1.ForwardRequest"),
              std::string::npos)
        << status.error_message();
  }
  // The servers keep serving.
  EXPECT_TRUE(Send(good).ok());
  EXPECT_TRUE(deployment_->router().running());
  EXPECT_TRUE(deployment_->worker(0).running());
}

// ---------------------------------------------------------------------------
// Graceful shutdown.

TEST(GracefulShutdownTest, InFlightCompletesAndNewCallsAreRefused) {
  Deployment d(testing::GoldenPath(kModel), {"0-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  client::ClientOptions options;
  options.timeout = absl::Seconds(30);
  options.max_attempts = 1;
  auto client = client::RouterClient::Create(d.router_address(), options);
  const at::Tensor x = Input();
  const at::Tensor expected =
      Reference(testing::GoldenPath(kModel)).Forward(x, LocalAll()).y;

  // Freeze the worker so the request stays in flight, then stop the router.
  ASSERT_TRUE(d.worker(0).Freeze());
  absl::Notification done;
  absl::StatusOr<moe::v1::ForwardResponse> in_flight;
  client->ForwardAsync(Request(x, AllPolicy()),
                       [&](absl::StatusOr<moe::v1::ForwardResponse> r) {
                         in_flight = std::move(r);
                         done.Notify();
                       });
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  int64_t inflight = 0;
  while (inflight == 0 && absl::Now() < deadline) {
    auto info = client->GetModelInfo();
    if (info.ok()) inflight = info->inflight_requests();
  }
  ASSERT_EQ(inflight, 1);
  d.router().Signal(SIGTERM);

  client::ClientOptions quick;
  quick.timeout = absl::Seconds(1);
  quick.max_attempts = 1;
  auto fresh = client::RouterClient::Create(d.router_address(), quick);
  absl::Status refused;
  const absl::Time refuse_deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < refuse_deadline) {
    refused = fresh->Forward(Request(x, AllPolicy())).status();
    if (!refused.ok()) break;
  }
  EXPECT_FALSE(refused.ok());
  EXPECT_FALSE(done.HasBeenNotified())
      << "the in-flight forward ended before the worker woke: "
      << (in_flight.ok() ? (in_flight->degraded() ? std::string("degraded")
                                                  : std::string("OK"))
                         : in_flight.status().ToString())
      << "\n"
      << d.router().Log();

  d.worker(0).Signal(SIGCONT);
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(in_flight.ok()) << in_flight.status();
  EXPECT_FALSE(in_flight->degraded());
  EXPECT_LE(testing::MaxAbsDiff(Y(*in_flight), expected), 1e-6);
  EXPECT_EQ(d.router().Wait(absl::Seconds(15)), 0) << d.router().Log();
}

// gRPC's stop sends every connection a GOAWAY and a ping and waits for the
// answer; an idle gRPC client answers when it next polls (up to 5 s), and a
// client that never reads, never (gRPC gives up after 20 s). A health watch
// is a call that never ends by itself. With no other call in flight, router
// and worker close such connections and watches instead of waiting for them
// (up to their grace, 30 s here).
TEST(GracefulShutdownTest, IdleConnectionsDoNotHoldTheStop) {
  const std::string http_port_file = testing::TempDir() + "/idle.http.port";
  Deployment d(testing::GoldenPath(kModel), {"0-3"},
               {"--grace_seconds=30", "--http_port=0",
                "--http_port_file=" + http_port_file});
  d.SetWorkerFlags({"--grace_seconds=30"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  const absl::StatusOr<int> http_port =
      testing::WaitForPortFile(http_port_file, absl::Seconds(60), &d.router());
  ASSERT_TRUE(http_port.ok()) << http_port.status();
  auto client = client::RouterClient::Create(d.router_address());
  ASSERT_TRUE(client->Forward(Request(Input(), AllPolicy())).ok());

  // An HTTP/2 client that sends its preface and settings, then never reads.
  auto mute = [](int port) {
    const int fd = testing::ConnectLoopback(port);
    EXPECT_GE(fd, 0);
    EXPECT_TRUE(testing::SendAll(
        fd, absl::string_view("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                              "\0\0\0\4\0\0\0\0\0",
                              33)));
    return fd;
  };
  const int at_router = mute(d.router_port());
  const int at_worker = mute(d.worker_port(0));
  // A health watch on the router, which tells it NOT_SERVING, then ends.
  auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
      d.router_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext watching;
  auto watch = health->Watch(&watching, {});
  grpc::health::v1::HealthCheckResponse seen;
  ASSERT_TRUE(watch->Read(&seen));
  EXPECT_EQ(seen.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  // HTTP/1.1 keep-alive connections left idle after an answer, on the
  // REST port and on /metrics (httplib held its stop until their
  // keep-alive, 5 s, ran out).
  std::vector<int> kept;
  const std::string metrics = d.router_metrics_address();
  for (const auto& [port, path] :
       {std::pair<int, std::string>{*http_port, "/v2/health/live"},
        {std::stoi(metrics.substr(metrics.rfind(':') + 1)), "/metrics"}}) {
    kept.push_back(testing::ConnectLoopback(port));
    ASSERT_TRUE(testing::SendAll(
        kept.back(),
        absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")));
    EXPECT_EQ(testing::ReadAnswer(kept.back(), nullptr), 200) << path;
  }
  absl::SleepFor(absl::Milliseconds(200));  // the connections set up

  for (Process* p : {&d.router(), &d.worker(0)}) {
    const absl::Time start = absl::Now();
    p->Signal(SIGTERM);
    EXPECT_EQ(p->Wait(absl::Seconds(40)), 0) << p->Log();
    const absl::Duration stopped = absl::Now() - start;
    std::printf("%s stopped in %s\n", p == &d.router() ? "router" : "worker",
                absl::FormatDuration(stopped).c_str());
    EXPECT_LT(stopped, absl::Seconds(4)) << p->Log();
    EXPECT_TRUE(absl::StrContains(p->Log(), "closing the connections still"))
        << p->Log();
  }
  ASSERT_TRUE(watch->Read(&seen));
  EXPECT_EQ(seen.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  while (watch->Read(&seen)) {
  }
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::StrContains(d.router().Log(),
                                "closed 1 idle keep-alive connection"))
      << d.router().Log();
  ::close(at_router);
  ::close(at_worker);
  for (int fd : kept) ::close(fd);
}

}  // namespace
}  // namespace moe
