// Chaos under steady load, real processes on 127.0.0.1, bounded in time
// and count:
//   - every expert on two workers, workers killed (SIGKILL) and restarted
//     one at a time: no request fails and every answer equals the healthy
//     one;
//   - no replicas, drop policy, a worker killed and restarted: every
//     degraded answer is flagged, names only that worker's experts, drops
//     exactly their assignments and equals the reference without them;
//     none ends past its deadline;
//   - SIGTERM of the router under load: every request the router accepted
//     completes (its own log, --log_requests, has no other outcome), the
//     rest are refused as UNAVAILABLE.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/router_client.h"
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
constexpr absl::Duration kLoadLimit = absl::Seconds(60);

// A few inputs with their healthy answers (policy all: deterministic).
struct Inputs : testing::KnownForwards {
  router::RoutingOptions local;

  explicit Inputs(Reference& reference) {
    wire.set_policy(moe::v1::ALL);
    local.policy = router::SecondExpertPolicy::kAll;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
    for (int i = 0; i < 4; ++i) {
      x.push_back(at::randn({2, 8 + 4 * i, 16}, gen));
      expected.push_back(reference.Forward(x.back(), local));
    }
  }
};

client::ClientOptions Once(absl::Duration timeout) {
  client::ClientOptions o;
  o.timeout = timeout;
  o.max_attempts = 1;  // a failure is a failure, not hidden by a retry
  return o;
}

// Waits (up to the load's limit) until `counter` grew by `more`: the load
// made progress between two events.
void WaitForProgress(const std::atomic<int>& counter, int more) {
  const int from = counter.load();
  const absl::Time until = absl::Now() + kLoadLimit;
  while (counter.load() < from + more && absl::Now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Kills worker `i` with SIGKILL, waits until the router has it down,
// starts it again on its port and waits until the router has it up again.
void KillAndRestart(Deployment& d, int i) {
  const int port = d.worker_port(i);
  d.worker(i).Signal(SIGKILL);
  d.worker(i).Wait(absl::Seconds(10));
  ASSERT_TRUE(d.WaitWorkerState(i, false, absl::Seconds(20)).ok());
  ASSERT_TRUE(d.StartWorker(i, port).ok()) << d.worker(i).Log();
  ASSERT_TRUE(d.WaitWorkerState(i, true, absl::Seconds(20)).ok());
}

TEST(ChaosTest, ReplicatedExpertsSurviveKilledWorkersWithoutAFailure) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {"0-1", "0-1", "2-3", "2-3"});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(d.StartWorker(i).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  const Inputs in(reference);

  Traffic traffic(d.router_address(), in, 3, kLoadLimit, /*tolerance=*/1e-6);
  // Four kills, each of a random worker, one down at a time, with answers
  // between them.
  std::mt19937 rng(5);
  for (int kill = 0; kill < 4; ++kill) {
    traffic.WaitForAnswers(10);
    KillAndRestart(d, static_cast<int>(rng() % 4));
  }
  traffic.WaitForAnswers(10);
  traffic.Stop();
  std::printf("%s (restarted workers: since their restart)\n",
              d.PeakRss().c_str());
  std::printf("replicated: %d OK, %d failed, %d wrong over 4 worker kills\n",
              traffic.ok.load(), traffic.bad.load(), traffic.wrong.load());
  EXPECT_EQ(traffic.bad.load(), 0) << traffic.FirstProblem();
  EXPECT_EQ(traffic.wrong.load(), 0);
  EXPECT_GT(traffic.ok.load(), 40);
}

TEST(ChaosTest, WithoutReplicasEveryDegradedAnswerIsFlaggedAndExact) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {"0-1", "2-3"}, {"--on_expert_failure=drop"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  const Inputs in(reference);
  std::vector<router::ForwardResult> without_1;  // experts 2 and 3 lost
  for (const at::Tensor& x : in.x) {
    without_1.push_back(reference.Forward(x, in.local, {2, 3}));
  }

  constexpr absl::Duration kDeadline = absl::Seconds(3);
  std::atomic<bool> stop{false};
  std::atomic<int> whole{0}, degraded{0}, failed{0}, bad{0}, late{0};
  std::mutex mu;
  std::string first_problem;
  const absl::Time limit = absl::Now() + kLoadLimit;
  std::vector<std::thread> load;
  for (int t = 0; t < 3; ++t) {
    load.emplace_back([&, t] {
      auto client =
          client::RouterClient::Create(d.router_address(), Once(kDeadline));
      for (int i = t; !stop.load() && absl::Now() < limit; ++i) {
        const size_t k = i % in.x.size();
        const absl::Time start = absl::Now();
        auto r = client->Forward(Request(in.x[k], in.wire));
        const absl::Duration took = absl::Now() - start;
        std::lock_guard<std::mutex> lock(mu);
        if (took > kDeadline + absl::Milliseconds(250)) ++late;
        auto problem = [&](const std::string& what) {
          ++bad;
          if (first_problem.empty()) first_problem = what;
        };
        if (!r.ok()) {
          // The deadline bounds a call to a dead worker; the router still
          // answers (degraded) before it, so a failure is a problem.
          ++failed;
          if (first_problem.empty()) first_problem = r.status().ToString();
          continue;
        }
        if (!r->degraded()) {
          ++whole;
          if (testing::MaxAbsDiff(Y(*r), in.expected[k].y) > 1e-6) {
            problem("a whole answer differs");
          }
          continue;
        }
        ++degraded;
        const std::set<int64_t> failed_experts(r->failed_experts().begin(),
                                               r->failed_experts().end());
        const int64_t lost_assignments =
            in.expected[k].plan.count(2) + in.expected[k].plan.count(3);
        const std::set<int64_t> dead = {2, 3};
        if (failed_experts.empty() ||
            !std::includes(dead.begin(), dead.end(), failed_experts.begin(),
                           failed_experts.end())) {
          problem("failed experts outside the dead worker's");
        } else if (r->stats().dropped_expert_unavailable() !=
                   lost_assignments) {
          problem("dropped count differs from the dead worker's assignments");
        } else if (testing::MaxAbsDiff(Y(*r), without_1[k].y) > 1e-6) {
          problem("a degraded answer differs from the reference without them");
        }
      }
    });
  }
  for (int kill = 0; kill < 3; ++kill) {
    WaitForProgress(whole, 5);
    // Worker 1 stays down until forwards have met it dead: degraded.
    d.worker(1).Signal(SIGKILL);
    d.worker(1).Wait(absl::Seconds(10));
    WaitForProgress(degraded, 5);
    ASSERT_TRUE(d.StartWorker(1, d.worker_port(1)).ok());
    ASSERT_TRUE(d.WaitWorkerState(1, true, absl::Seconds(20)).ok());
  }
  WaitForProgress(whole, 5);
  stop = true;
  for (std::thread& t : load) t.join();
  std::printf("%s (restarted workers: since their restart)\n",
              d.PeakRss().c_str());
  std::printf(
      "drop policy: %d whole, %d degraded, %d failed, %d wrong, %d "
      "late over 3 worker kills\n",
      whole.load(), degraded.load(), failed.load(), bad.load(), late.load());
  EXPECT_EQ(bad.load(), 0) << first_problem;
  EXPECT_EQ(failed.load(), 0) << first_problem;
  EXPECT_EQ(late.load(), 0);
  EXPECT_GT(degraded.load(), 0) << "no forward met a dead worker";
  EXPECT_GT(whole.load(), 0);
}

TEST(ChaosTest, SigtermUnderLoadCompletesEveryAcceptedRequest) {
  const std::string path = testing::GoldenPath(kModel);
  Deployment d(path, {"0-1", "2-3"}, {"--log_requests", "--drain_seconds=0.5"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  Reference reference(path);
  const Inputs in(reference);

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, refused{0}, other{0};
  std::mutex mu;
  std::string first_other;
  const absl::Time limit = absl::Now() + absl::Seconds(30);
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      for (int i = t; !stop.load() && absl::Now() < limit; ++i) {
        // A fresh channel each time, as new callers would come.
        auto client = client::RouterClient::Create(d.router_address(),
                                                   Once(absl::Seconds(10)));
        const size_t k = i % in.x.size();
        auto r = client->Forward(Request(in.x[k], in.wire));
        std::lock_guard<std::mutex> lock(mu);
        if (r.ok() && !r->degraded() &&
            testing::MaxAbsDiff(Y(*r), in.expected[k].y) <= 1e-6) {
          ++ok;
        } else if (!r.ok() && absl::IsUnavailable(r.status())) {
          ++refused;
          if (!d.router().running()) break;
        } else {
          ++other;
          if (first_other.empty()) {
            first_other = r.ok() ? "wrong or degraded" : r.status().ToString();
          }
        }
      }
    });
  }
  while (ok.load() < 40 && absl::Now() < limit) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string rss = d.PeakRss();
  d.router().Signal(SIGTERM);
  EXPECT_EQ(d.router().Wait(absl::Seconds(20)), 0) << d.router().Log();
  stop = true;
  for (std::thread& t : load) t.join();
  // The router's own account: every request it took ended OK.
  int logged = 0, logged_ok = 0;
  for (absl::string_view line : absl::StrSplit(d.router().Log(), '\n')) {
    // "moe-router: Forward REQUEST_ID from PEER ...: CODE in ..."
    if (!absl::StrContains(line, "moe-router: Forward ") ||
        !absl::StrContains(line, " from ")) {
      continue;
    }
    ++logged;
    if (absl::StrContains(line, ": OK in ")) ++logged_ok;
  }
  std::printf(
      "SIGTERM under load: %d OK, %d refused, %d other; the router "
      "logged %d requests, %d OK; before the signal %s\n",
      ok.load(), refused.load(), other.load(), logged, logged_ok, rss.c_str());
  EXPECT_EQ(other.load(), 0) << first_other;
  EXPECT_TRUE(absl::StrContains(d.router().Log(), "drain time over"))
      << d.router().Log();
  EXPECT_EQ(logged, logged_ok);
  EXPECT_EQ(logged_ok, ok.load());
  EXPECT_GE(ok.load(), 40);
}

}  // namespace
}  // namespace moe
