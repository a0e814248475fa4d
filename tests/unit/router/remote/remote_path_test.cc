// The router's remote path without processes: WorkerPool, WorkerBatcher and
// RemoteExpertBackend against FakeWorkers, with a FakeClock for every
// deadline and window. Nothing sleeps: the tests wait on notifications and
// move fake time.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/request_id.h"
#include "common/tracing.h"
#include "router/engine/expert_backend.h"
#include "router/remote/remote_expert_backend.h"
#include "router/remote/worker_batcher.h"
#include "router/remote/worker_discovery.h"
#include "router/remote/worker_pool.h"
#include "testing/fake_clock.h"
#include "testing/fake_worker.h"

namespace moe::router {
namespace {

constexpr int64_t kDim = 4;
const char kFingerprint[] = "sha256:model";

// Two layers of 4 experts, dim 4.
common::ModelSpec Spec() { return testing::TwoLayerSpec(kDim); }

// A pool of fake workers hosting `hosted[w]` (by layer).
struct Pool {
  explicit Pool(std::vector<std::vector<std::vector<int64_t>>> hosted,
                testing::FakeClock* clock) {
    std::vector<std::unique_ptr<WorkerTransport>> transports;
    for (size_t w = 0; w < hosted.size(); ++w) {
      auto worker = std::make_unique<testing::FakeWorker>(
          "worker" + std::to_string(w), kDim,
          testing::MakeShardInfo(Spec(), kFingerprint, hosted[w]));
      workers.push_back(worker.get());
      transports.push_back(std::move(worker));
    }
    WorkerPoolOptions options;
    options.clock = clock;
    pool = std::make_unique<WorkerPool>(std::move(transports), Spec(),
                                        kFingerprint, options);
    pool->ProbeAll();
  }
  std::vector<testing::FakeWorker*> workers;
  std::unique_ptr<WorkerPool> pool;
};

// One forward's expert work: `rows` token rows (values 1, 2, ...) of the
// given segments, combined with weight 0.5 into distinct rows of y.
struct Work {
  Work(std::vector<common::ExpertSegment> s) : segments(std::move(s)) {
    int64_t rows = 0;
    for (const auto& seg : segments) rows += seg.count;
    tokens = std::make_shared<std::vector<float>>(rows * kDim);
    for (size_t i = 0; i < tokens->size(); ++i) (*tokens)[i] = 1.0f + i;
    for (int64_t r = 0; r < rows; ++r) {
      targets.push_back(r);
      weights.push_back(0.5f);
    }
    y.assign(rows * kDim, 0.0f);
    work.tokens = tokens->data();
    work.tokens_owner = tokens;
    work.rows = rows;
    work.dim = kDim;
    work.segments = segments;
    work.targets = targets;
    work.weights = weights;
    work.y = y.data();
  }
  // y as the experts in `lost` left it out.
  std::vector<float> Expected(std::set<int64_t> lost = {}) const {
    std::vector<float> out(y.size(), 0.0f);
    for (const auto& s : segments) {
      if (lost.count(s.key.expert)) continue;
      for (int64_t i = s.offset * kDim; i < (s.offset + s.count) * kDim; ++i) {
        out[i] = 0.5f * (*tokens)[i] * testing::ExpertScale(s.key);
      }
    }
    return out;
  }
  std::vector<common::ExpertSegment> segments;
  std::shared_ptr<std::vector<float>> tokens;
  std::vector<int64_t> targets;
  std::vector<float> weights;
  std::vector<float> y;
  ExpertWork work;
};

// Experts 0-1 of layer 0 on worker 0, 2-3 on worker 1.
std::vector<common::ExpertSegment> TwoWorkerSegments() {
  return {{{0, 0}, 0, 2}, {{0, 1}, 2, 1}, {{0, 2}, 3, 2}, {{0, 3}, 5, 1}};
}

// Runs `backend` on `work` on its own thread; done notifies.
struct Running {
  Running(RemoteExpertBackend* backend, ExpertWork work) {
    thread = std::thread([this, backend, work] {
      status = backend->Run(work, &report);
      done.Notify();
    });
  }
  ~Running() { thread.join(); }
  absl::Status status;
  BackendReport report;
  absl::Notification done;
  std::thread thread;
};

TEST(WorkerPoolTest, JudgesWorkersAndLatchesReadiness) {
  testing::FakeClock clock;
  Pool p({{{0, 1}, {0, 1}}, {{2, 3}, {2, 3}}}, &clock);
  EXPECT_TRUE(p.pool->ready());
  EXPECT_EQ(p.pool->Choose({1, 3}, {}), 1);
  EXPECT_EQ(p.pool->Choose({0, 0}, {0}), -1);  // excluded, no replica
  // Another model behind the same address: refused, both fingerprints said.
  p.workers[1]->SetShardInfo(
      testing::MakeShardInfo(Spec(), "sha256:other", {{2, 3}, {2, 3}}));
  p.pool->ProbeAll();
  std::vector<WorkerSnapshot> s = p.pool->Snapshot();
  EXPECT_EQ(s[1].state, WorkerState::kWrongModel);
  EXPECT_NE(s[1].reason.find("sha256:other"), std::string::npos);
  EXPECT_NE(s[1].reason.find(kFingerprint), std::string::npos);
  EXPECT_EQ(p.pool->Choose({0, 2}, {}), -1);
  EXPECT_EQ(p.pool->Uncovered().ids(0), (std::vector<int64_t>{2, 3}));
  EXPECT_NE(p.pool->DescribeUncovered().find("layer \"layer0\" experts [2-3]"),
            std::string::npos)
      << p.pool->DescribeUncovered();
  EXPECT_TRUE(p.pool->ready());  // readiness, once reached, stays
  // Unreachable, then back.
  p.workers[1]->SetProbeError(absl::UnavailableError("connection refused"));
  p.pool->ProbeAll();
  EXPECT_EQ(p.pool->Snapshot()[1].state, WorkerState::kUnreachable);
  p.workers[1]->SetShardInfo(
      testing::MakeShardInfo(Spec(), kFingerprint, {{2, 3}, {2, 3}}));
  p.pool->ProbeAll();
  EXPECT_EQ(p.pool->Choose({0, 2}, {}), 1);
  // A failing call takes a worker out until the next probe.
  p.pool->CallStarted(1);
  p.pool->CallFinished(1, absl::UnavailableError("call failed"), false);
  EXPECT_EQ(p.pool->Snapshot()[1].state, WorkerState::kDown);
  EXPECT_EQ(p.pool->Snapshot()[1].experts.ids(0), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(p.pool->Choose({0, 2}, {}), -1);
  // A worker of this model that hosts nothing.
  p.workers[1]->SetShardInfo(testing::MakeShardInfo(Spec(), kFingerprint, {}));
  p.pool->ProbeAll();
  EXPECT_EQ(p.pool->Snapshot()[1].state, WorkerState::kNothingUseful);
}

TEST(WorkerPoolTest, NotReadyUntilEveryLayerIsCovered) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {0, 1}}}, &clock);
  EXPECT_FALSE(p.pool->ready());
  EXPECT_EQ(p.pool->Uncovered().ids(1), (std::vector<int64_t>{2, 3}));
}

TEST(WorkerPoolTest, ChoosesTheLeastLoadedReplica) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}, {{0, 1, 2, 3}, {}}}, &clock);
  p.pool->CallStarted(0);
  p.pool->CallStarted(0);
  EXPECT_EQ(p.pool->Choose({0, 1}, {}), 1);
  for (int i = 0; i < 3; ++i) p.pool->CallStarted(1);
  EXPECT_EQ(p.pool->Choose({0, 1}, {}), 0);
  EXPECT_EQ(p.pool->inflight(1), 3);
}

// A small segment's copy: the busy worker whose open batch already runs
// the expert, unless another copy is idle; excluded or leaving workers and
// ones that do not host the expert are never joined.
TEST(WorkerPoolTest,
     ASmallSegmentJoinsTheBatchThatRunsItsExpertUnlessACopyIsIdle) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}, {{0, 1, 2, 3}, {}}, {{2, 3}, {}}}, &clock);
  const std::vector<int> joining = {0};
  // Worker 1 idle: it answers soonest.
  p.pool->CallStarted(0);
  EXPECT_EQ(p.pool->Choose({0, 1}, {}, 0, joining), 1);
  // Both busy, worker 0 more so: its open batch still gets the rows.
  p.pool->CallStarted(0);
  p.pool->CallStarted(1);
  EXPECT_EQ(p.pool->Choose({0, 1}, {}), 1);
  EXPECT_EQ(p.pool->Choose({0, 1}, {}, 0, joining), 0);
  // Excluded (it failed this segment), or not hosting the expert: the
  // least busy copy.
  EXPECT_EQ(p.pool->Choose({0, 1}, {0}, 0, joining), 1);
  EXPECT_EQ(p.pool->Choose({0, 1}, {}, 0, std::vector<int>{2}), 1);
}

// The pool alone decides which call outcomes take a worker down: a worker
// that is unreachable, broken or slower than the worker timeout; not one
// that refused a call (bad input, overload, cancellation) nor one that
// missed the client's own deadline.
TEST(WorkerPoolTest, DecidesWhichFailedCallsTakeAWorkerDown) {
  struct Case {
    absl::Status status;
    bool timeout_binds;
    bool down;
  };
  const Case cases[] = {
      {absl::UnavailableError("connection refused"), false, true},
      {absl::InternalError("bad response"), false, true},
      {absl::UnknownError("?"), false, true},
      {absl::DeadlineExceededError("worker timeout"), true, true},
      {absl::DeadlineExceededError("client deadline"), false, false},
      {absl::InvalidArgumentError("bad segment"), false, false},
      {absl::ResourceExhaustedError("queue full"), false, false},
      {absl::CancelledError("gave up"), false, false},
      {absl::OkStatus(), false, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.status.ToString());
    testing::FakeClock clock;
    Pool p({{{0, 1, 2, 3}, {}}}, &clock);
    p.pool->CallStarted(0);
    p.pool->CallFinished(0, c.status, c.timeout_binds);
    EXPECT_EQ(p.pool->inflight(0), 0);
    EXPECT_EQ(p.pool->Snapshot()[0].state,
              c.down ? WorkerState::kDown : WorkerState::kUp);
  }
}

// A remote backend over `p`'s workers (its own batcher and waiter), on the
// fake clock; `options` gets the clock.
struct Remote {
  Remote(const Pool& p, testing::FakeClock* clock,
         RemoteCallOptions options = {})
      : batcher(p.pool.get(), Batching(clock)),
        waiter(std::make_shared<ForwardWaiter>(clock)),
        backend(p.pool.get(), &batcher, waiter, WithClock(options, clock)) {}
  static BatcherOptions Batching(testing::FakeClock* clock) {
    BatcherOptions batching;
    batching.clock = clock;
    return batching;
  }
  static RemoteCallOptions WithClock(RemoteCallOptions o,
                                     testing::FakeClock* clock) {
    o.clock = clock;
    return o;
  }
  WorkerBatcher batcher;
  std::shared_ptr<ForwardWaiter> waiter;
  RemoteExpertBackend backend;
};

TEST(RemoteExpertBackendTest, OneCallPerWorkerCombinedAsTheyArrive) {
  testing::FakeClock clock;
  Pool p({{{0, 1}, {}}, {{2, 3}, {}}}, &clock);
  RemoteCallOptions options;
  options.request_id = "trace-9";
  Remote r(p, &clock, options);
  Work w(TwoWorkerSegments());
  Running run(&r.backend, w.work);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  ASSERT_TRUE(p.workers[1]->WaitForCalls(1));
  // Each call names the forward it serves.
  EXPECT_EQ(p.workers[0]->RequestIds(0), std::vector<std::string>{"trace-9"});
  EXPECT_EQ(p.workers[1]->RequestIds(0), std::vector<std::string>{"trace-9"});
  EXPECT_EQ(p.workers[0]->Segments(0).size(), 2u);
  EXPECT_EQ(p.workers[1]->Segments(0)[0].key, (common::ExpertKey{0, 2}));
  p.workers[1]->Reply(0);
  p.workers[0]->Reply(0);
  ASSERT_TRUE(run.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(run.status.ok()) << run.status;
  EXPECT_TRUE(run.report.lost.empty());
  EXPECT_EQ(w.y, w.Expected());
  EXPECT_EQ(p.workers[0]->calls(), 1);
}

// Large answers arrive as many slices; the combine reads rows in place
// where they lie in one slice and copies the rest in small chunks (several
// per segment here: 4096 rows of dim 4 per chunk). Every row must land
// where it belongs, bit for bit.
TEST(RemoteExpertBackendTest, CombinesAnswersSplitIntoOddSlices) {
  testing::FakeClock clock;
  Pool p({{{0, 1}, {}}, {{2, 3}, {}}}, &clock);
  for (testing::FakeWorker* worker : p.workers) {
    worker->SetAutoReply(true);
    worker->SetReplySliceBytes(1001);
  }
  Remote r(p, &clock);
  Work w({{{0, 0}, 0, 9000},
          {{0, 1}, 9000, 3},
          {{0, 2}, 9003, 4097},
          {{0, 3}, 13100, 1}});
  BackendReport report;
  ASSERT_TRUE(r.backend.Run(w.work, &report).ok());
  EXPECT_TRUE(report.lost.empty());
  EXPECT_EQ(w.y, w.Expected());
}

TEST(RemoteExpertBackendTest, AFailedCallIsRetriedOnAReplica) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}, {{0, 1, 2, 3}, {}}}, &clock);
  Remote r(p, &clock);
  Work w(TwoWorkerSegments());
  Running run(&r.backend, w.work);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));  // the least loaded: worker 0
  p.workers[0]->Fail(0, absl::UnavailableError("connection reset"));
  ASSERT_TRUE(p.workers[1]->WaitForCalls(1));
  EXPECT_EQ(p.workers[1]->Segments(0).size(), 4u);  // everything moved
  p.workers[1]->Reply(0);
  ASSERT_TRUE(run.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(run.status.ok()) << run.status;
  EXPECT_TRUE(run.report.lost.empty());
  EXPECT_EQ(w.y, w.Expected());
  EXPECT_EQ(p.pool->Snapshot()[0].state, WorkerState::kDown);
}

// 64 rows of one expert hosted twice go half to each copy; y as from one.
TEST(RemoteExpertBackendTest, ALargeSegmentIsSplitAmongTheExpertsCopies) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}, {{0, 1, 2, 3}, {}}}, &clock);
  Remote r(p, &clock);
  Work w({{{0, 2}, 0, 64}, {{0, 3}, 64, 3}});
  Running run(&r.backend, w.work);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  ASSERT_TRUE(p.workers[1]->WaitForCalls(1));
  int64_t rows[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    for (const auto& s : p.workers[k]->Segments(0)) {
      if (s.key.expert == 2) rows[k] += s.count;
    }
  }
  EXPECT_EQ(rows[0], 32);
  EXPECT_EQ(rows[1], 32);
  p.workers[0]->Reply(0);
  p.workers[1]->Reply(0);
  ASSERT_TRUE(run.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(run.status.ok()) << run.status;
  EXPECT_EQ(w.y, w.Expected());
}

// A worker that no longer hosts an expert (FAILED_PRECONDITION) is not
// down: it is asked what it hosts and the rows go to the other copy.
TEST(RemoteExpertBackendTest, AnExpertMovedAwayIsAskedOfItsOtherCopy) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}, {{0, 1, 2, 3}, {}}}, &clock);
  Remote r(p, &clock);
  Work w(TwoWorkerSegments());
  Running run(&r.backend, w.work);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  // Worker 0 gave up experts 0-1 after the router chose it.
  p.workers[0]->SetShardInfo(
      testing::MakeShardInfo(Spec(), kFingerprint, {{2, 3}, {}}));
  p.workers[0]->Fail(0, absl::FailedPreconditionError(
                            "segments[0]: expert 0 of layer 0 is not hosted "
                            "here (placement generation 1)"));
  // Experts 0-1 go to worker 1; 2-3 with them or back to worker 0.
  ASSERT_TRUE(p.workers[1]->WaitForCalls(1));
  std::set<int64_t> on_1;
  for (const auto& s : p.workers[1]->Segments(0)) on_1.insert(s.key.expert);
  EXPECT_TRUE(on_1.count(0) && on_1.count(1));
  p.workers[1]->Reply(0);
  if (on_1.size() < 4) {
    ASSERT_TRUE(p.workers[0]->WaitForCalls(2));
    for (const auto& s : p.workers[0]->Segments(1)) {
      EXPECT_GE(s.key.expert, 2) << "worker 0 asked for a moved expert";
    }
    p.workers[0]->Reply(1);
  }
  ASSERT_TRUE(run.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(run.status.ok()) << run.status;
  EXPECT_TRUE(run.report.lost.empty());
  EXPECT_EQ(w.y, w.Expected());
  EXPECT_EQ(p.pool->Snapshot()[0].state, WorkerState::kUp);
}

// Workers behind one name: new addresses join the pool, an address gone
// for gone_after is retired (out of use) and revived when it returns.
TEST(WorkerDiscoveryTest, AddressesJoinLeaveAndComeBack) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}}, &clock);  // worker0, found at the start
  std::vector<std::string> addresses = {"worker0"};
  std::vector<std::string> added;
  WorkerDiscoveryOptions o;
  o.gone_after = absl::ZeroDuration();
  o.resolve = [&] { return addresses; };
  o.make_transport = [](const std::string& address) {
    return std::make_unique<testing::FakeWorker>(
        address, kDim,
        testing::MakeShardInfo(Spec(), kFingerprint, {{0, 1, 2, 3}, {}}));
  };
  o.added = [&](int worker, const std::string& address) {
    EXPECT_EQ(worker, static_cast<int>(added.size()) + 1);
    added.push_back(address);
  };
  // The pool holds at most what it was made with: growing needs room.
  WorkerDiscovery full(p.pool.get(), o);
  addresses = {"worker0", "worker1"};
  full.Refresh();
  EXPECT_EQ(p.pool->size(), 1);
  EXPECT_TRUE(added.empty());

  WorkerPoolOptions options;
  options.clock = &clock;
  options.max_workers = 4;
  std::vector<std::unique_ptr<WorkerTransport>> first;
  first.push_back(o.make_transport("worker0"));
  WorkerPool pool(std::move(first), Spec(), kFingerprint, options);
  WorkerDiscovery discovery(&pool, o);
  discovery.Refresh();
  ASSERT_EQ(pool.size(), 2);
  EXPECT_EQ(added, std::vector<std::string>{"worker1"});
  EXPECT_EQ(pool.address(1), "worker1");
  pool.ProbeAll();
  EXPECT_EQ(pool.Snapshot()[1].state, WorkerState::kUp);
  // worker0 leaves the name: missing once, then retired.
  addresses = {"worker1"};
  discovery.Refresh();
  EXPECT_EQ(pool.Snapshot()[0].state, WorkerState::kUp);
  discovery.Refresh();
  EXPECT_EQ(pool.Snapshot()[0].state, WorkerState::kGone);
  pool.ProbeAll();  // a gone worker is not probed back up
  EXPECT_EQ(pool.Snapshot()[0].state, WorkerState::kGone);
  EXPECT_EQ(pool.Choose({0, 0}, {}), 1);
  // It comes back: probed again, up again, under the same index.
  addresses = {"worker0", "worker1"};
  discovery.Refresh();
  pool.ProbeAll();
  EXPECT_EQ(pool.Snapshot()[0].state, WorkerState::kUp);
  EXPECT_EQ(pool.size(), 2);
}

TEST(RemoteExpertBackendTest, WithoutAReplicaTheFailurePolicyDecides) {
  for (ExpertFailurePolicy policy :
       {ExpertFailurePolicy::kDrop, ExpertFailurePolicy::kFail}) {
    SCOPED_TRACE(ExpertFailurePolicyName(policy));
    testing::FakeClock clock;
    Pool p({{{0, 1}, {}}, {{2, 3}, {}}}, &clock);
    RemoteCallOptions options;
    options.on_failure = policy;
    Remote r(p, &clock, options);
    Work w(TwoWorkerSegments());
    Running run(&r.backend, w.work);
    ASSERT_TRUE(p.workers[1]->WaitForCalls(1));
    p.workers[1]->Fail(0, absl::UnavailableError("connection reset"));
    ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
    p.workers[0]->Reply(0);
    ASSERT_TRUE(run.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    if (policy == ExpertFailurePolicy::kFail) {
      EXPECT_EQ(run.status.code(), absl::StatusCode::kUnavailable);
      EXPECT_NE(run.status.message().find("expert 2 (worker1: connection "
                                          "reset)"),
                std::string::npos)
          << run.status;
      continue;
    }
    ASSERT_TRUE(run.status.ok()) << run.status;
    ASSERT_EQ(run.report.lost.size(), 2u);
    EXPECT_EQ(run.report.lost[0].key, (common::ExpertKey{0, 2}));
    EXPECT_EQ(run.report.lost[0].reason, DropReason::kExpertUnavailable);
    EXPECT_EQ(w.y, w.Expected({2, 3}));
  }
}

TEST(RemoteExpertBackendTest, AMissedDeadlineDropsAndCancelsTheCall) {
  testing::FakeClock clock;
  Pool p({{{0, 1}, {}}, {{2, 3}, {}}}, &clock);
  RemoteCallOptions options;
  options.deadline = clock.Now() + absl::Seconds(2);
  Remote r(p, &clock, options);
  Work w(TwoWorkerSegments());
  Running run(&r.backend, w.work);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  ASSERT_TRUE(p.workers[1]->WaitForCalls(1));
  p.workers[0]->Reply(0);  // worker 1 never answers
  ASSERT_TRUE(clock.WaitForWaiters(1));
  clock.Advance(absl::Seconds(2));
  ASSERT_TRUE(run.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_EQ(run.report.lost.size(), 2u);
  EXPECT_EQ(run.report.lost[1].reason, DropReason::kDeadline);
  EXPECT_TRUE(p.workers[1]->cancelled(0));  // nobody waits for it any more
  EXPECT_EQ(w.y, w.Expected({2, 3}));
  // The call's own deadline is the request's, less the router's reserve.
  EXPECT_LT(p.workers[1]->calls(), 2);
}

TEST(RemoteExpertBackendTest, ClientCancellationEndsTheWait) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}}, &clock);
  Remote r(p, &clock);
  Work w(TwoWorkerSegments());
  Running run(&r.backend, w.work);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  r.waiter->Cancel();
  ASSERT_TRUE(run.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(run.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(p.workers[0]->cancelled(0));
}

// A request of `w`'s segments for worker 0, waited on by its own waiter.
struct Submitted {
  Submitted(WorkerBatcher& batcher, const Work& w, testing::FakeClock* clock,
            std::string request_id = "", std::string traceparent = "")
      : waiter(std::make_shared<ForwardWaiter>(clock)) {
    WorkerRequest r;
    r.request_id = std::move(request_id);
    r.traceparent = std::move(traceparent);
    r.worker = 0;
    r.rows = w.tokens->data();
    r.owner = w.tokens;
    r.dim = kDim;
    r.segments = w.segments;
    r.waiter = waiter;
    r.waiter_index = index = waiter->AddTicket();
    ticket = batcher.Submit(std::move(r));
  }
  bool Done() {
    return waiter->WaitForDone({index}, absl::InfiniteFuture()).size() == 1;
  }
  std::shared_ptr<ForwardWaiter> waiter;
  int index = -1;
  std::shared_ptr<const BatchTicket> ticket;
};

// Batching on `clock` with a window of 1 s.
BatcherOptions OneSecondWindow(testing::FakeClock* clock) {
  BatcherOptions batching;
  batching.clock = clock;
  batching.window = absl::Seconds(1);
  return batching;
}

TEST(WorkerBatcherTest, ForwardsArrivingWhileTheWorkerIsBusyShareOneCall) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {0, 1, 2, 3}}}, &clock);
  WorkerBatcher batcher(p.pool.get(), OneSecondWindow(&clock));
  // A lone forward never waits: the worker is idle and nobody is gating.
  Work first({{{0, 1}, 0, 2}});
  Submitted t0(batcher, first, &clock, "first");
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  // While that call is out, two forwards (one of layer 1) gather.
  Work a({{{0, 1}, 0, 1}, {{0, 3}, 1, 2}});
  Work b({{{1, 0}, 0, 1}, {{0, 1}, 1, 1}});
  Submitted ta(batcher, a, &clock, "fwd-a"), tb(batcher, b, &clock, "fwd-b");
  EXPECT_EQ(p.workers[0]->calls(), 1);
  p.workers[0]->Reply(0);  // the worker is idle again: the batch goes
  ASSERT_TRUE(p.workers[0]->WaitForCalls(2));
  // The call names both forwards it serves.
  EXPECT_EQ(p.workers[0]->RequestIds(0), std::vector<std::string>{"first"});
  EXPECT_EQ(p.workers[0]->RequestIds(1),
            (std::vector<std::string>{"fwd-a", "fwd-b"}));
  // Grouped by expert, layer first: (0,1) from a then b, (0,3), (1,0).
  const std::vector<common::ExpertSegment> s = p.workers[0]->Segments(1);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].key, (common::ExpertKey{0, 1}));
  EXPECT_EQ(s[0].count, 2);
  EXPECT_EQ(s[1].key, (common::ExpertKey{0, 3}));
  EXPECT_EQ(s[2].key, (common::ExpertKey{1, 0}));
  p.workers[0]->Reply(1);
  ASSERT_TRUE(ta.Done());
  ASSERT_TRUE(tb.Done());
  ASSERT_TRUE(ta.ticket->call_status().ok());
  ASSERT_TRUE(tb.ticket->call_status().ok());
  EXPECT_EQ(p.workers[0]->calls(), 2);  // one call carried both
  // Each forward reads its own rows back, each scaled by its expert.
  std::vector<float> scratch;
  for (const auto& [work, sent] :
       {std::make_pair(&a, &ta), std::make_pair(&b, &tb)}) {
    for (size_t j = 0; j < work->segments.size(); ++j) {
      const common::ExpertSegment& seg = work->segments[j];
      const float* rows = sent->ticket->OutputRows(j, 0, seg.count, &scratch);
      for (int64_t i = 0; i < seg.count * kDim; ++i) {
        EXPECT_EQ(rows[i], (*work->tokens)[seg.offset * kDim + i] *
                               testing::ExpertScale(seg.key));
      }
    }
  }
}

// A call serving many forwards names each once, the first
// kMaxRequestIdsPerWorkerCall of them; forwards without an ID add none.
TEST(WorkerBatcherTest, ACallNamesItsForwardsEachOnceUpToTheLimit) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}}, &clock);
  WorkerBatcher batcher(p.pool.get(), OneSecondWindow(&clock));
  Work first({{{0, 1}, 0, 2}});
  Submitted t0(batcher, first, &clock);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  EXPECT_TRUE(p.workers[0]->RequestIds(0).empty());
  Work one({{{0, 1}, 0, 1}});
  std::vector<std::unique_ptr<Submitted>> gathered;
  std::vector<std::string> expected;
  for (int i = 0; i < 20; ++i) {
    // Forward 3 comes twice (one forward may send two requests to a
    // worker); forward 5 has no ID.
    const std::string id = i == 5 ? "" : absl::StrCat("fwd-", i == 4 ? 3 : i);
    gathered.push_back(std::make_unique<Submitted>(batcher, one, &clock, id));
    if (!id.empty() && i != 4 &&
        expected.size() < common::kMaxRequestIdsPerWorkerCall) {
      expected.push_back(id);
    }
  }
  p.workers[0]->Reply(0);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(2));
  EXPECT_EQ(p.workers[0]->RequestIds(1), expected);
  EXPECT_EQ(expected.size(), common::kMaxRequestIdsPerWorkerCall);
  EXPECT_EQ(expected.back(), "fwd-17");
  p.workers[0]->Reply(1);
  for (auto& s : gathered) ASSERT_TRUE(s->Done());
}

// The attribute `key` of `span`; "<absent>" when it has none.
common::SpanAttribute AttributeOf(const common::Span& span,
                                  const std::string& key) {
  for (const auto& [k, v] : span.attributes) {
    if (k == key) return v;
  }
  return std::string("<absent>");
}

// A call serving traced forwards: a client span for each (a child of the
// forward's span), the first sent as the call's traceparent and the others
// as links; untraced forwards add none; the spans end with the call's
// status.
TEST(WorkerBatcherTest, ACallOfTracedForwardsHasASpanInEachOfTheirTraces) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}}, &clock);
  absl::Mutex mu;
  std::vector<common::Span> ended;
  common::Tracer tracer(/*root_ratio=*/0, [&](common::Span s) {
    absl::MutexLock lock(&mu);
    ended.push_back(std::move(s));
  });
  BatcherOptions batching = OneSecondWindow(&clock);
  batching.tracer = &tracer;
  WorkerBatcher batcher(p.pool.get(), batching);
  const std::string trace_a = "0af7651916cd43dd8448eb211c80319c";
  const std::string trace_b = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string forward_a = "b7ad6b7169203331";
  const std::string forward_b = "00f067aa0ba902b7";
  Work busy({{{0, 0}, 0, 1}});
  Submitted t0(batcher, busy, &clock, "untraced");
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  EXPECT_TRUE(p.workers[0]->Metadata(0).traceparent.empty());
  EXPECT_TRUE(p.workers[0]->Metadata(0).trace_links.empty());
  // Three forwards gather: two traced (one sampled each), one not.
  Work a({{{0, 1}, 0, 2}}), b({{{0, 2}, 0, 1}}), c({{{0, 3}, 0, 1}});
  Submitted ta(batcher, a, &clock, "fwd-a",
               "00-" + trace_a + "-" + forward_a + "-01");
  Submitted tc(batcher, c, &clock, "fwd-c");
  Submitted tb(batcher, b, &clock, "fwd-b",
               "00-" + trace_b + "-" + forward_b + "-01");
  p.workers[0]->Reply(0);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(2));
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(ended.empty());  // the untraced call made none
  }
  const WorkerCallMetadata sent = p.workers[0]->Metadata(1);
  p.workers[0]->Fail(1, absl::UnavailableError("worker went away"));
  ASSERT_TRUE(ta.Done());
  ASSERT_TRUE(tb.Done());
  ASSERT_TRUE(tc.Done());
  absl::MutexLock lock(&mu);
  ASSERT_EQ(ended.size(), 2u);
  const common::Span& sa = ended[0];
  const common::Span& sb = ended[1];
  EXPECT_EQ(sa.trace_id, trace_a);
  EXPECT_EQ(sa.parent_span_id, forward_a);
  EXPECT_EQ(sb.trace_id, trace_b);
  EXPECT_EQ(sb.parent_span_id, forward_b);
  EXPECT_EQ(sent.traceparent, common::TraceparentOf(sa));
  EXPECT_EQ(sent.trace_links,
            std::vector<std::string>{common::TraceparentOf(sb)});
  for (const common::Span* s : {&sa, &sb}) {
    EXPECT_EQ(s->name, "moe.v1.ExpertWorker/RunExperts");
    EXPECT_EQ(s->kind, common::SpanKind::kClient);
    EXPECT_TRUE(s->error);
    EXPECT_EQ(s->status_message, "UNAVAILABLE: worker went away");
    EXPECT_EQ(std::get<int64_t>(AttributeOf(*s, "rpc.grpc.status_code")),
              static_cast<int64_t>(absl::StatusCode::kUnavailable));
    EXPECT_EQ(std::get<std::string>(AttributeOf(*s, "server.address")),
              p.pool->address(0));
    EXPECT_EQ(std::get<int64_t>(AttributeOf(*s, "moe.call_rows")), 4);
    EXPECT_EQ(std::get<int64_t>(AttributeOf(*s, "moe.call_forwards")), 3);
  }
  EXPECT_EQ(std::get<std::string>(AttributeOf(sa, "moe.request_id")), "fwd-a");
  EXPECT_EQ(std::get<int64_t>(AttributeOf(sa, "moe.rows")), 2);
  EXPECT_EQ(std::get<int64_t>(AttributeOf(sb, "moe.rows")), 1);
}

// The experts of the open batches, by worker: what a small segment may
// join; a batch that left is no longer listed.
TEST(WorkerBatcherTest, OpenBatchesListTheirExperts) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {0, 1}}}, &clock);
  WorkerBatcher batcher(p.pool.get(), OneSecondWindow(&clock));
  Work busy({{{0, 0}, 0, 1}});
  Submitted t0(batcher, busy, &clock);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  EXPECT_TRUE(batcher.OpenExperts().empty());  // the call left at once
  Work a({{{0, 3}, 0, 1}, {{1, 1}, 1, 1}}), b({{{0, 3}, 0, 2}});
  Submitted ta(batcher, a, &clock), tb(batcher, b, &clock);
  EXPECT_EQ(batcher.OpenExperts(),
            (std::vector<std::pair<common::ExpertKey, int>>{{{0, 3}, 0},
                                                            {{1, 1}, 0}}));
  p.workers[0]->Reply(0);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(2));
  EXPECT_TRUE(batcher.OpenExperts().empty());
  p.workers[0]->Reply(1);
  ASSERT_TRUE(ta.Done());
  ASSERT_TRUE(tb.Done());
}

TEST(WorkerBatcherTest, AnOpenBatchLeavesWhenItsWindowEnds) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}}, &clock);
  BatcherOptions batching;
  batching.clock = &clock;
  batching.window = absl::Milliseconds(20);
  WorkerBatcher batcher(p.pool.get(), batching);
  // Another forward still gating keeps the batch open.
  WorkerBatcher::Gating other(&batcher);
  Work w({{{0, 2}, 0, 3}});
  Submitted t(batcher, w, &clock);
  ASSERT_TRUE(clock.WaitForWaiters(1));  // the flusher, on the window
  EXPECT_EQ(p.workers[0]->calls(), 0);
  clock.Advance(absl::Milliseconds(20));
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  p.workers[0]->Reply(0);
}

// A batch is cancelled only when every forward in it gave up, and only
// once it was sent: until then a forward may still join it.
TEST(WorkerBatcherTest, ABatchIsCancelledOnlyWhenEveryForwardGaveUp) {
  testing::FakeClock clock;
  Pool p({{{0, 1, 2, 3}, {}}}, &clock);
  WorkerBatcher batcher(p.pool.get(), OneSecondWindow(&clock));
  Work busy({{{0, 0}, 0, 1}});
  Submitted t0(batcher, busy, &clock);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(1));
  Work a({{{0, 1}, 0, 1}}), b({{{0, 2}, 0, 1}});
  Submitted ta(batcher, a, &clock), tb(batcher, b, &clock);
  p.workers[0]->Reply(0);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(2));
  WorkerBatcher::Abandon(*ta.ticket);
  EXPECT_FALSE(p.workers[0]->cancelled(1));  // b still waits for it
  WorkerBatcher::Abandon(*tb.ticket);
  EXPECT_TRUE(p.workers[0]->cancelled(1));
  // While the worker is busy again, a batch opens; its only forward gives
  // up (its client cancelled) and another joins it: the batch is sent, and
  // serves the one that joined. (The Python client's aio test once got a
  // degraded answer when such a batch ended as cancelled.)
  Submitted t2(batcher, busy, &clock);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(3));
  Work c({{{0, 3}, 0, 1}}), e({{{0, 1}, 0, 2}});
  Submitted tc(batcher, c, &clock);
  WorkerBatcher::Abandon(*tc.ticket);
  Submitted te(batcher, e, &clock);
  p.workers[0]->Reply(2);
  ASSERT_TRUE(p.workers[0]->WaitForCalls(4));
  EXPECT_FALSE(p.workers[0]->cancelled(3));
  p.workers[0]->Reply(3);
  ASSERT_TRUE(te.Done());
  EXPECT_TRUE(te.ticket->call_status().ok()) << te.ticket->call_status();
}

}  // namespace
}  // namespace moe::router
