// Elastic placement with real processes on 127.0.0.1 (docs/placement.md):
// moe-expert workers whose experts change at run time, moe-router, and
// moe-balancer, bounded in time and count:
//   - a replicated expert's rows are split among its copies;
//   - a rebalance under a skewed load: no failed, wrong or degraded answer,
//     and the hot worker's experts get copies elsewhere;
//   - a worker killed: its experts re-placed on the survivors, answers
//     whole and exact again within 10 s with the killed worker still down;
//   - a worker added at run time (empty) receives experts and load;
//   - a worker stopped with SIGTERM: its experts move first, no answer is
//     lost;
//   - a worker of another model is left alone by the balancer.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/router_client.h"
#include "common/checkpoint.h"
#include "common/expert_set.h"
#include "common/safetensors.h"
#include "common/torch/torch_convert.h"
#include "moe/v1/expert.grpc.pb.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"
#include "testing/traffic.h"

namespace moe {
namespace {

using testing::Deployment;
using testing::Reference;
using testing::Request;
using testing::Traffic;
using testing::Y;

const std::string kModel = "A_moe_eval_nodrop";  // 4 experts, dim 16
const std::string kOtherModel = "C_moe_train";
constexpr char kAdminToken[] = "placement-test-admin";

// The admin token file every worker and the balancer get.
std::string AdminTokenFile(const Deployment& d) {
  const std::string path = d.dir() + "/admin.txt";
  std::ofstream(path) << kAdminToken << "\n";
  return path;
}

moe::v1::ShardInfo Info(const std::string& address) {
  auto stub = moe::v1::ExpertWorker::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
  moe::v1::GetShardInfoRequest request;
  request.set_include_load(true);
  moe::v1::ShardInfo info;
  grpc::Status s = stub->GetShardInfo(&context, request, &info);
  EXPECT_TRUE(s.ok()) << address << ": " << s.error_message();
  return info;
}

std::vector<int64_t> HostedIds(const moe::v1::ShardInfo& info) {
  if (info.layers_size() == 0) return {};
  return {info.layers(0).expert_ids().begin(),
          info.layers(0).expert_ids().end()};
}

int64_t TokensRun(const moe::v1::ShardInfo& info, int64_t expert) {
  for (const moe::v1::ExpertLoad& l : info.layers(0).load()) {
    if (l.expert_id() == expert) return l.tokens();
  }
  return 0;
}

// Inputs whose tokens lie near the gate rows of `hot` experts (each token
// picks one of them first), with their answers (policy all).
struct Inputs : testing::KnownForwards {
  Inputs(const std::string& path, Reference& reference,
         std::vector<int64_t> hot, int64_t tokens = 16) {
    wire.set_policy(moe::v1::ALL);
    router::RoutingOptions local;
    local.policy = router::SecondExpertPolicy::kAll;
    auto ckpt = common::Checkpoint::Open(path);
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    const common::LayerParams& p = (*ckpt)->layer_params(0);
    auto gate = (*ckpt)->ReadParameter(p.gate);
    EXPECT_TRUE(gate.ok()) << gate.status();
    at::Tensor g =
        at::from_blob(gate->data.data(), gate->shape, at::kFloat).clone();
    if (p.gate_transposed) g = g.t().contiguous();  // [E, d]
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
    for (int i = 0; i < 4; ++i) {
      at::Tensor rows = at::empty({tokens, g.size(1)});
      for (int64_t t = 0; t < tokens; ++t) {
        const at::Tensor row = g[hot[(t + i) % hot.size()]];
        rows[t] = row / row.norm() * 4;
      }
      x.push_back(
          (rows + 0.3 * at::randn({tokens, g.size(1)}, gen)).unsqueeze(0));
      expected.push_back(reference.Forward(x.back(), local));
    }
  }
};

std::unique_ptr<testing::Process> StartBalancer(
    const Deployment& d, const std::vector<std::string>& workers,
    std::vector<std::string> flags) {
  std::vector<std::string> argv = {
      testing::BinaryPath("moe-balancer"),
      "--checkpoint=" + testing::GoldenPath(kModel),
      "--workers=" + absl::StrJoin(workers, ","),
      "--admin_token_file=" + d.dir() + "/admin.txt",
      "--interval=200ms",
      "--dead_after=1s",
      "--settle=600ms",
      "--metrics_port=-1"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return testing::StartProcess(argv, d.dir() + "/balancer.log");
}

// Waits up to `timeout` for `done`; false when it never came.
template <typename F>
bool Eventually(F done, absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return done();
}

// Waits until the balancer has heard from every worker of `addresses`.
void WaitUntilBalancerSees(testing::Process& balancer,
                           const std::vector<std::string>& addresses) {
  const bool seen = Eventually(
      [&] {
        const std::string log = balancer.Log();
        for (const std::string& a : addresses) {
          if (!absl::StrContains(log, "worker " + a + " answers")) return false;
        }
        return true;
      },
      absl::Seconds(30));
  ASSERT_TRUE(seen) << balancer.Log();
}

std::vector<std::string> Addresses(const Deployment& d, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(d.worker_address(i));
  return out;
}

TEST(PlacementTest, AReplicatedExpertsRowsAreSplitAmongItsCopies) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {"all", "all"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  // The router serves once every expert has a worker: one of the two copies
  // may still be unprobed then (a CI run under load sent all 256 rows to
  // one), and a copy it does not know of gets no rows.
  for (int i : {0, 1}) {
    ASSERT_TRUE(d.WaitWorkerState(i, true, absl::Seconds(20)).ok())
        << d.router().Log();
  }
  Reference reference(path);
  const Inputs in(path, reference, {0}, /*tokens=*/256);
  auto client = client::RouterClient::Create(d.router_address());
  auto r = client->Forward(Request(in.x[0], in.wire));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->degraded());
  EXPECT_LE(testing::MaxAbsDiff(Y(*r), in.expected[0].y), 1e-5);
  // Every token's first choice is expert 0: 256 rows, split between the
  // two workers that host it.
  const int64_t a = TokensRun(Info(d.worker_address(0)), 0);
  const int64_t b = TokensRun(Info(d.worker_address(1)), 0);
  EXPECT_EQ(a + b, in.expected[0].plan.count(0));
  EXPECT_GE(a, 64) << a << " + " << b;
  EXPECT_GE(b, 64) << a << " + " << b;
  // moe-client info counts the copies.
  const std::string info_cmd = testing::BinaryPath("moe-client") +
                               " info --target=" + d.router_address();
  std::FILE* pipe = ::popen(info_cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string info;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) {
    info.append(buffer, n);
  }
  EXPECT_EQ(::pclose(pipe), 0) << info;
  EXPECT_TRUE(absl::StrContains(info, "replicas: 2 copies [0-3]")) << info;
  // moe-client bench --input sends the file's rows (here x[0], 4 times):
  // expert 0 runs exactly 4 x its assignments of x[0] more.
  const std::string x_path = testing::TempDir() + "/bench-x.safetensors";
  common::SafetensorsWriter writer;
  auto x = common::FromTorch(in.x[0].contiguous());
  ASSERT_TRUE(x.ok());
  ASSERT_TRUE(writer.Add("x", *x).ok());
  ASSERT_TRUE(writer.WriteFile(x_path).ok());
  const std::string json = testing::TempDir() + "/bench.json";
  std::string out;
  ASSERT_EQ(testing::RunProcess(
                {testing::BinaryPath("moe-client"), "bench",
                 "--target=" + d.router_address(), "--input=" + x_path,
                 "--requests=4", "--policy=all", "--json_out=" + json},
                &out),
            0)
      << out;
  std::ifstream bench_json(json);
  const std::string report((std::istreambuf_iterator<char>(bench_json)),
                           std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(report, "\"shape\": [1, 256, 16]")) << report;
  EXPECT_TRUE(absl::StrContains(report, "\"errors\": 0")) << report;
  EXPECT_EQ(TokensRun(Info(d.worker_address(0)), 0) +
                TokensRun(Info(d.worker_address(1)), 0),
            5 * in.expected[0].plan.count(0));
}

TEST(PlacementTest, ARebalanceUnderASkewedLoadLosesNoAnswer) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {"0-1", "2-3"});
  d.SetWorkerFlags({"--admin_token_file=" + AdminTokenFile(d)});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  const Inputs in(path, reference, {0, 1});  // worker 0's experts
  auto balancer = StartBalancer(
      d, Addresses(d, 2),
      {"--rebalance_every=2s", "--load_half_life=2s", "--min_gain=0.1"});
  Traffic traffic(d.router_address(), in, 3);
  // The balancer gives the hot experts copies on worker 1.
  const bool moved = Eventually(
      [&] {
        const std::vector<int64_t> ids = HostedIds(Info(d.worker_address(1)));
        return std::count(ids.begin(), ids.end(), 0) +
                   std::count(ids.begin(), ids.end(), 1) ==
               2;
      },
      absl::Seconds(30));
  // Answers after the change, some on the new copies (once the router's
  // probe saw them).
  auto hot_on_1 = [&] {
    const moe::v1::ShardInfo info = Info(d.worker_address(1));
    return TokensRun(info, 0) + TokensRun(info, 1);
  };
  const bool used =
      Eventually([&] { return hot_on_1() > 0; }, absl::Seconds(10));
  traffic.WaitForAnswers(30);
  traffic.Stop();
  const std::string log = balancer->Log();
  std::printf("skewed load: %d OK, %d failed or degraded, %d wrong\n",
              traffic.ok.load(), traffic.bad.load(), traffic.wrong.load());
  EXPECT_TRUE(moved) << log;
  EXPECT_NE(log.find("placement change load"), std::string::npos) << log;
  EXPECT_EQ(traffic.bad.load(), 0) << traffic.FirstProblem();
  EXPECT_EQ(traffic.wrong.load(), 0);
  EXPECT_GT(traffic.ok.load(), 30);
  EXPECT_TRUE(used) << "worker 1 never ran the hot experts";
}

TEST(PlacementTest, AKilledWorkersExpertsAreReplacedAndAnswersWholeAgain) {
  const std::string path = testing::GoldenPath(kModel);
  const std::string other = testing::GoldenPath(kOtherModel);
  Deployment d(path, {"0-1", "2-3", "none", "all"},
               {"--on_expert_failure=drop"});
  d.SetWorkerFlags({"--admin_token_file=" + AdminTokenFile(d)});
  d.SetWorkerCheckpoint(3, other);  // another model: left alone
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(d.StartWorker(i).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  const Inputs in(path, reference, {0, 1, 2, 3});
  // Only healing and leaving act (no load plan within the test).
  auto balancer = StartBalancer(d, Addresses(d, 4), {"--rebalance_every=1h"});
  WaitUntilBalancerSees(*balancer, Addresses(d, 4));
  Traffic traffic(d.router_address(), in, 2);
  traffic.WaitForAnswers(10);
  EXPECT_EQ(traffic.bad.load(), 0) << traffic.FirstProblem();
  d.worker(0).Signal(SIGKILL);
  d.worker(0).Wait(absl::Seconds(10));
  const absl::Time killed = absl::Now();
  // Degraded answers now (drop policy), until experts 0-1 are re-placed.
  const bool healed = Eventually(
      [&] {
        std::vector<int64_t> ids = HostedIds(Info(d.worker_address(1)));
        const std::vector<int64_t> more = HostedIds(Info(d.worker_address(2)));
        ids.insert(ids.end(), more.begin(), more.end());
        return std::count(ids.begin(), ids.end(), 0) > 0 &&
               std::count(ids.begin(), ids.end(), 1) > 0;
      },
      absl::Seconds(10));
  ASSERT_TRUE(healed) << balancer->Log();
  // Then whole, exact answers again, with worker 0 still down.
  const int bad_before = traffic.bad.load();
  const bool whole = Eventually(
      [&] {
        auto client = client::RouterClient::Create(d.router_address());
        auto r = client->Forward(Request(in.x[0], in.wire));
        return r.ok() && !r->degraded() &&
               testing::MaxAbsDiff(Y(*r), in.expected[0].y) <= 1e-5;
      },
      absl::Seconds(10) - (absl::Now() - killed));
  const absl::Duration took = absl::Now() - killed;
  EXPECT_TRUE(whole) << d.router().Log();
  EXPECT_LE(took, absl::Seconds(10));
  traffic.WaitForAnswers(10);
  traffic.Stop();
  EXPECT_FALSE(d.worker(0).running());
  EXPECT_EQ(traffic.wrong.load(), 0);
  std::printf(
      "healed: whole answers %.1f s after the kill (%d degraded "
      "before)\n",
      absl::ToDoubleSeconds(took), bad_before);
  const std::string log = balancer->Log();
  EXPECT_NE(log.find("placement change heal"), std::string::npos) << log;
  EXPECT_NE(log.find("left alone: serves another model"), std::string::npos)
      << log;
  EXPECT_FALSE(absl::StrContains(d.worker(3).Log(), "placement generation"));
  EXPECT_EQ(Info(d.worker_address(3)).generation(), 0);
}

TEST(PlacementTest, AWorkerAddedAtRunTimeReceivesExpertsAndLoad) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {"0-1", "2-3", "none"});
  d.SetWorkerFlags({"--admin_token_file=" + AdminTokenFile(d)});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.ReserveWorkerPort(2).ok());  // listed, not started
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  const Inputs in(path, reference, {0, 1, 2, 3});
  // Room for each expert once per worker... and twice in the pool.
  auto balancer = StartBalancer(
      d, Addresses(d, 3), {"--rebalance_every=1s", "--copies_per_expert=1.5"});
  Traffic traffic(d.router_address(), in, 2);
  traffic.WaitForAnswers(10);
  ASSERT_TRUE(d.StartWorker(2, d.worker_port(2)).ok()) << d.worker(2).Log();
  const bool received =
      Eventually([&] { return !HostedIds(Info(d.worker_address(2))).empty(); },
                 absl::Seconds(20));
  EXPECT_TRUE(received) << balancer->Log();
  const bool ran = Eventually(
      [&] {
        const moe::v1::ShardInfo info = Info(d.worker_address(2));
        return info.layers_size() > 0 && info.layers(0).load_size() > 0;
      },
      absl::Seconds(10));
  traffic.Stop();
  EXPECT_TRUE(ran) << d.router().Log();
  EXPECT_EQ(traffic.bad.load(), 0) << traffic.FirstProblem();
  EXPECT_EQ(traffic.wrong.load(), 0);
}

TEST(PlacementTest, AWorkerStoppedWithSigtermMovesItsExpertsFirst) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {"0-1", "2-3", "none"});
  d.SetWorkerFlags({"--admin_token_file=" + AdminTokenFile(d)});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(d.StartWorker(i).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  const Inputs in(path, reference, {0, 1, 2, 3});
  auto balancer = StartBalancer(d, Addresses(d, 3), {"--rebalance_every=1h"});
  WaitUntilBalancerSees(*balancer, Addresses(d, 3));
  Traffic traffic(d.router_address(), in, 2);
  traffic.WaitForAnswers(10);
  d.worker(0).Signal(SIGTERM);
  // It leaves once its experts are elsewhere (well before its 20 s
  // --leave_timeout).
  EXPECT_GE(d.worker(0).Wait(absl::Seconds(15)), 0) << d.worker(0).Log();
  traffic.WaitForAnswers(20);
  traffic.Stop();
  const std::string log = d.worker(0).Log();
  EXPECT_NE(log.find("every expert moved away"), std::string::npos) << log;
  EXPECT_EQ(traffic.bad.load(), 0) << traffic.FirstProblem();
  EXPECT_EQ(traffic.wrong.load(), 0);
  EXPECT_NE(balancer->Log().find("placement change leave"), std::string::npos)
      << balancer->Log();
}

// Starts `argv` in a mount namespace of its own whose /etc/hosts is
// `hosts`, the file the test edits in place (a bind mount follows the
// inode): names resolve there as DNS would answer a headless Service.
std::unique_ptr<testing::Process> StartWithHosts(
    const std::string& hosts, const std::vector<std::string>& argv,
    const std::string& log) {
  std::string command = "mount --bind '" + hosts + "' /etc/hosts && exec";
  for (const std::string& a : argv) absl::StrAppend(&command, " '", a, "'");
  return testing::StartProcess(
      {"/usr/bin/unshare", "-m", "/bin/sh", "-c", command}, log);
}

void WriteInPlace(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);  // the same inode
  out << text;
}

// Workers found by a name with an address per worker: a worker whose
// address joins receives experts and load; one that dies and leaves the
// name is retired, its experts healed onto the others.
TEST(PlacementTest, WorkersBehindOneNameJoinAndLeave) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {});
  const std::string admin = AdminTokenFile(d);
  const std::string hosts = d.dir() + "/hosts";
  const std::string name = "moe-workers.test";
  WriteInPlace(hosts, "127.0.0.1 localhost\n127.0.0.2 " + name +
                          "\n127.0.0.3 " + name + "\n");
  auto reserved = testing::FreeLoopbackPort();
  ASSERT_TRUE(reserved.ok());
  const std::string port = absl::StrCat(*reserved);
  std::vector<std::unique_ptr<testing::Process>> workers;
  const std::vector<std::string> experts = {"0-1", "2-3", "none"};
  for (int i = 0; i < 3; ++i) {
    const std::string host = absl::StrCat("127.0.0.", i + 2);
    const std::string port_file = absl::StrCat(d.dir(), "/w", i, ".port");
    workers.push_back(testing::StartProcess(
        {testing::BinaryPath("moe-expert"), "--checkpoint=" + path,
         "--experts=" + experts[i], "--host=" + host, "--port=" + port,
         "--port_file=" + port_file, "--metrics_port=-1",
         "--admin_token_file=" + admin, "--leave_timeout=0s"},
        absl::StrCat(d.dir(), "/w", i, ".log")));
    ASSERT_TRUE(testing::WaitForPortFile(port_file, absl::Seconds(60),
                                         workers.back().get())
                    .ok())
        << workers.back()->Log();
    ASSERT_TRUE(
        testing::WaitServing(host + ":" + port, absl::Seconds(60)).ok());
  }
  const std::string dns = "--workers_dns=" + name + ":" + port;
  auto router = StartWithHosts(
      hosts,
      {testing::BinaryPath("moe-router"), "--checkpoint=" + path, dns,
       "--dns_refresh=300ms", "--worker_gone_after=1s",
       "--probe_interval_ms=100", "--host=127.0.0.1", "--port=0",
       "--port_file=" + d.dir() + "/router.port", "--metrics_port=-1"},
      d.dir() + "/router.log");
  auto router_port = testing::WaitForPortFile(d.dir() + "/router.port",
                                              absl::Seconds(60), router.get());
  ASSERT_TRUE(router_port.ok()) << router->Log();
  const std::string target = absl::StrCat("127.0.0.1:", *router_port);
  ASSERT_TRUE(testing::WaitServing(target, absl::Seconds(60)).ok())
      << router->Log();
  auto balancer = StartWithHosts(
      hosts,
      {testing::BinaryPath("moe-balancer"), "--checkpoint=" + path, dns,
       "--dns_refresh=300ms", "--admin_token_file=" + admin, "--interval=200ms",
       "--dead_after=1s", "--settle=600ms", "--rebalance_every=1s",
       "--copies_per_expert=1.5", "--metrics_port=-1"},
      d.dir() + "/balancer.log");
  Reference reference(path);
  const Inputs in(path, reference, {0, 1, 2, 3});
  Traffic traffic(target, in, 2);
  traffic.WaitForAnswers(10);
  // 127.0.0.4 joins the name: it receives experts, then load.
  const std::string third = "127.0.0.4:" + port;
  WriteInPlace(hosts, "127.0.0.1 localhost\n127.0.0.2 " + name +
                          "\n127.0.0.3 " + name + "\n127.0.0.4 " + name + "\n");
  EXPECT_TRUE(Eventually(
      [&] {
        const moe::v1::ShardInfo info = Info(third);
        return info.layers_size() > 0 && info.layers(0).load_size() > 0;
      },
      absl::Seconds(20)))
      << balancer->Log() << router->Log();
  // 127.0.0.2 dies and leaves the name: retired, its experts healed.
  workers[0]->Signal(SIGKILL);
  workers[0]->Wait(absl::Seconds(10));
  WriteInPlace(hosts, "127.0.0.1 localhost\n127.0.0.3 " + name +
                          "\n127.0.0.4 " + name + "\n");
  auto client = client::RouterClient::Create(target);
  EXPECT_TRUE(Eventually(
      [&] {
        auto info = client->GetModelInfo();
        if (!info.ok()) return false;
        for (const auto& w : info->workers()) {
          if (w.address() == "127.0.0.2:" + port) return w.state() == "gone";
        }
        return false;
      },
      absl::Seconds(15)))
      << router->Log();
  EXPECT_TRUE(Eventually(
      [&] {
        auto r = client->Forward(Request(in.x[0], in.wire));
        return r.ok() && !r->degraded() &&
               testing::MaxAbsDiff(Y(*r), in.expected[0].y) <= 1e-5;
      },
      absl::Seconds(10)))
      << balancer->Log();
  traffic.WaitForAnswers(10);
  traffic.Stop();
  EXPECT_EQ(traffic.wrong.load(), 0);
  EXPECT_TRUE(
      absl::StrContains(router->Log(), "worker discovery: new worker " + third))
      << router->Log();
}

// The pid of the moe-up child whose command line holds `needle`; -1 if none.
pid_t FindProcess(const std::string& needle) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(in)),
                        std::istreambuf_iterator<char>());
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (absl::StrContains(cmdline, needle)) return std::stoi(name);
  }
  return -1;
}

TEST(PlacementTest, MoeUpWithBalanceHealsADeadWorkerAndKeepsServing) {
  const std::string path = testing::GoldenPath(kModel);
  const std::string dir = testing::TempDir() + "/up-balance";
  std::filesystem::create_directories(dir);
  auto up = testing::StartProcess(
      {testing::BinaryPath("moe-up"), "--checkpoint=" + path, "--workers=3",
       "--port=0", "--port_file=" + dir + "/up.port", "--work_dir=" + dir,
       "--endpoints_file=" + dir + "/endpoints", "--balance",
       "--balance_flags=--interval=200ms,--rebalance_every=1h,--dead_after=1s,"
       "--settle=1500ms"},
      dir + "/moe-up.log");
  auto port =
      testing::WaitForPortFile(dir + "/up.port", absl::Seconds(90), up.get());
  ASSERT_TRUE(port.ok()) << port.status() << up->Log();
  std::ifstream endpoints(dir + "/endpoints");
  const std::string listed((std::istreambuf_iterator<char>(endpoints)),
                           std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(listed, "balancer_metrics 127.0.0.1:"))
      << listed;
  const std::string router = absl::StrCat("127.0.0.1:", *port);
  Reference reference(path);
  const Inputs in(path, reference, {0, 1, 2, 3});
  auto client = client::RouterClient::Create(router);
  auto whole = [&] {
    auto r = client->Forward(Request(in.x[0], in.wire));
    return r.ok() && !r->degraded() &&
           testing::MaxAbsDiff(Y(*r), in.expected[0].y) <= 1e-5;
  };
  ASSERT_TRUE(Eventually(whole, absl::Seconds(10))) << up->Log();
  // The balancer has seen every worker before one dies.
  ASSERT_TRUE(Eventually(
      [&] {
        std::ifstream log(dir + "/moe-up.log");
        const std::string text((std::istreambuf_iterator<char>(log)),
                               std::istreambuf_iterator<char>());
        return absl::StrContains(text, "balancing model");
      },
      absl::Seconds(10)));
  absl::SleepFor(absl::Seconds(1));
  const pid_t worker0 = FindProcess("--port_file=" + dir + "/worker-0.port");
  ASSERT_GT(worker0, 0);
  ::kill(worker0, SIGKILL);
  const absl::Time killed = absl::Now();
  // Degraded until healed, then whole and exact, moe-up still serving.
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE(Eventually(whole, absl::Seconds(10))) << up->Log();
  const absl::Duration took = absl::Now() - killed;
  EXPECT_LE(took, absl::Seconds(10));
  EXPECT_TRUE(up->running()) << up->Log();
  std::printf("moe-up --balance: whole again %.1f s after a worker's kill\n",
              absl::ToDoubleSeconds(took));
  up->Signal(SIGTERM);
  EXPECT_EQ(up->Wait(absl::Seconds(60)), 0) << up->Log();
  const std::string log = up->Log();
  EXPECT_TRUE(absl::StrContains(log, "serving on: the balancer places")) << log;
}

}  // namespace
}  // namespace moe
