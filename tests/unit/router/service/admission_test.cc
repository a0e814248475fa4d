#include "router/service/admission.h"

#include <gtest/gtest.h>

#include "testing/fake_clock.h"

namespace moe::router {
namespace {

class AdmissionTest : public ::testing::Test {
 protected:
  AdmissionController Make(int64_t max_tokens, absl::Duration max_queue) {
    AdmissionOptions o;
    o.max_queued_tokens = max_tokens;
    o.max_queue_time = max_queue;
    o.clock = &clock_;
    return AdmissionController(o);
  }
  // Runs one forward of `tokens` that takes `d` alone.
  void Teach(AdmissionController& a, int64_t tokens, absl::Duration d) {
    AdmissionController::Ticket t;
    RejectReason reason;
    ASSERT_TRUE(a.Admit(tokens, absl::InfiniteFuture(), &t, &reason).ok());
    ASSERT_TRUE(a.Start(&t, &reason).ok());
    clock_.Advance(d);
    a.Finish(&t, true);
  }
  absl::Time never_ = absl::InfiniteFuture();
  testing::FakeClock clock_;
};

TEST_F(AdmissionTest, QueuedTokensAreBounded) {
  AdmissionController a = Make(1000, absl::Seconds(2));
  AdmissionController::Ticket t1, t2, t3;
  RejectReason reason;
  EXPECT_TRUE(a.Admit(600, never_, &t1, &reason).ok());
  EXPECT_TRUE(a.Admit(400, never_, &t2, &reason).ok());
  absl::Status s = a.Admit(1, never_, &t3, &reason);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(reason, RejectReason::kOverloaded);
  EXPECT_NE(s.message().find("--max_queued_tokens 1000"), std::string::npos);
  EXPECT_EQ(a.queued_tokens(), 1000);
  // A request larger than the bound is still taken when nothing queues:
  // --max_tokens_per_request bounds one request.
  ASSERT_TRUE(a.Start(&t1, &reason).ok());
  a.Finish(&t1, true);
  ASSERT_TRUE(a.Start(&t2, &reason).ok());
  a.Finish(&t2, true);
  EXPECT_EQ(a.queued_tokens(), 0);
  EXPECT_TRUE(a.Admit(5000, never_, &t3, &reason).ok());
}

TEST_F(AdmissionTest, TheExpectedQueueTimeIsBounded) {
  AdmissionController a = Make(1 << 30, absl::Seconds(2));
  Teach(a, 1000, absl::Milliseconds(100));  // 100 us per token
  RejectReason reason;
  std::vector<AdmissionController::Ticket> queued(30);
  int admitted = 0;
  for (auto& t : queued) {
    if (a.Admit(1000, never_, &t, &reason).ok()) ++admitted;
  }
  // 100 ms each, one at a time: 2 s of queue after 20 (and the 21st is
  // admitted at exactly 2 s), the rest refused.
  EXPECT_EQ(admitted, 21);
  EXPECT_EQ(reason, RejectReason::kOverloaded);
  EXPECT_EQ(a.ExpectedWait(), absl::Milliseconds(2100));
}

TEST_F(AdmissionTest, ADeadlineTheQueueWouldMissIsRefusedAtOnce) {
  AdmissionController a = Make(1 << 30, absl::Seconds(10));
  Teach(a, 1000, absl::Milliseconds(100));
  RejectReason reason;
  AdmissionController::Ticket t;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(a.Admit(1000, never_, &t, &reason).ok());  // 500 ms queued
  }
  AdmissionController::Ticket late;
  absl::Status s =
      a.Admit(1000, clock_.Now() + absl::Milliseconds(550), &late, &reason);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(reason, RejectReason::kDeadline);
  EXPECT_NE(s.message().find("deadline cannot be met"), std::string::npos);
  EXPECT_TRUE(
      a.Admit(1000, clock_.Now() + absl::Milliseconds(650), &late, &reason)
          .ok());
}

TEST_F(AdmissionTest, AForwardThatWaitedTooLongIsRefusedWhenItStarts) {
  AdmissionController a = Make(1 << 30, absl::Seconds(1));
  AdmissionController::Ticket t;
  RejectReason reason;
  ASSERT_TRUE(a.Admit(10, never_, &t, &reason).ok());
  clock_.Advance(absl::Milliseconds(1500));
  absl::Status s = a.Start(&t, &reason);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(reason, RejectReason::kOverloaded);
  EXPECT_NE(s.message().find("waited 1500 ms"), std::string::npos);
  a.Finish(&t, false);  // a no-op: Start() ended it
  EXPECT_EQ(a.queued_tokens(), 0);
}

// Admitted with time to spare, the forward then waited in the queue and
// other forwards started beside it: when a thread picks it up, its own work
// would end after its deadline, so it is refused then rather than started.
TEST_F(AdmissionTest, AForwardThatWouldMissItsDeadlineIsRefusedWhenItStarts) {
  AdmissionController a = Make(1 << 30, absl::Seconds(10));
  Teach(a, 1000, absl::Milliseconds(100));  // 100 us per token
  RejectReason reason;
  AdmissionController::Ticket running, late, fine;
  ASSERT_TRUE(a.Admit(1000, never_, &running, &reason).ok());
  // 1000 queued tokens (100 ms) + its own 100 ms: fits in 300 ms.
  ASSERT_TRUE(
      a.Admit(1000, clock_.Now() + absl::Milliseconds(300), &late, &reason)
          .ok());
  ASSERT_TRUE(
      a.Admit(1000, clock_.Now() + absl::Milliseconds(500), &fine, &reason)
          .ok());
  ASSERT_TRUE(a.Start(&running, &reason).ok());
  clock_.Advance(absl::Milliseconds(150));
  // Beside the one running, its 1000 tokens take about 200 ms: 350 > 300.
  absl::Status s = a.Start(&late, &reason);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(reason, RejectReason::kDeadline);
  EXPECT_NE(s.message().find("can no longer be met"), std::string::npos) << s;
  a.Finish(&late, false);
  EXPECT_TRUE(a.Start(&fine, &reason).ok());  // 350 <= 500
  a.Finish(&fine, true);
  a.Finish(&running, true);
  EXPECT_EQ(a.queued_tokens(), 0);
}

TEST_F(AdmissionTest, ConcurrencySharesTheQueue) {
  AdmissionController a = Make(1 << 30, absl::Seconds(2));
  // Four forwards at once, each taking 400 ms for 1000 tokens.
  std::vector<AdmissionController::Ticket> t(4);
  RejectReason reason;
  for (auto& x : t) ASSERT_TRUE(a.Admit(1000, never_, &x, &reason).ok());
  for (auto& x : t) ASSERT_TRUE(a.Start(&x, &reason).ok());
  clock_.Advance(absl::Milliseconds(400));
  for (auto& x : t) a.Finish(&x, true);
  // Each ran beside three others: the queue drains 1000 tokens per 100 ms,
  // and 10 queued forwards take 1 s.
  for (int i = 0; i < 10; ++i) {
    AdmissionController::Ticket q;
    ASSERT_TRUE(a.Admit(1000, never_, &q, &reason).ok());
  }
  EXPECT_NEAR(absl::ToDoubleSeconds(a.ExpectedWait()), 1.0, 1e-6);
}

// Forwards that run share the workers: a request admitted behind them ends
// only after their work too, so it counts in the wait. (Counting the queue
// alone let accepted requests take 4x --max_queue_ms at 64 clients.)
TEST_F(AdmissionTest, RunningWorkCountsInTheWait) {
  AdmissionController a = Make(1 << 30, absl::Seconds(1));
  Teach(a, 1000, absl::Milliseconds(100));  // 100 us per token
  RejectReason reason;
  std::vector<AdmissionController::Ticket> running(4);
  for (auto& t : running) {
    ASSERT_TRUE(a.Admit(1000, never_, &t, &reason).ok());
    ASSERT_TRUE(a.Start(&t, &reason).ok());
  }
  EXPECT_EQ(a.ExpectedWait(), absl::Milliseconds(400));
  EXPECT_EQ(a.queued_tokens(), 0);
  std::vector<AdmissionController::Ticket> queued(10);
  int admitted = 0;
  for (auto& t : queued) {
    if (a.Admit(1000, never_, &t, &reason).ok()) ++admitted;
  }
  // 400 ms running + 100 ms per queued forward: the 7th is admitted at
  // exactly 1 s ahead of it, the rest refused.
  EXPECT_EQ(admitted, 7);
  EXPECT_EQ(reason, RejectReason::kOverloaded);
  EXPECT_EQ(a.ExpectedWait(), absl::Milliseconds(1100));
  // Once the running forwards ended, 700 ms of queued work remain ahead:
  // with its own 100 ms, a deadline 750 ms away cannot be met.
  for (auto& t : running) a.Finish(&t, true);
  AdmissionController::Ticket t;
  EXPECT_EQ(a.ExpectedWait(), absl::Milliseconds(700));
  absl::Status s =
      a.Admit(1000, clock_.Now() + absl::Milliseconds(750), &t, &reason);
  EXPECT_EQ(reason, RejectReason::kDeadline) << s;
}

// An accepted request ends within --max_queue_ms plus about 1.5x its own
// work: when it starts, its wait and the work beside it are checked against
// --max_queue_ms plus its own work (half of it the estimate's margin).
TEST_F(AdmissionTest, AForwardThatWouldBreakThePromiseIsRefusedWhenItStarts) {
  AdmissionController a = Make(1 << 30, absl::Seconds(1));
  Teach(a, 1000, absl::Milliseconds(100));  // 100 us per token
  Teach(a, 5000, absl::Milliseconds(500));  // and for the larger class
  RejectReason reason;
  AdmissionController::Ticket running, late, fine;
  ASSERT_TRUE(a.Admit(5000, never_, &running, &reason).ok());
  ASSERT_TRUE(a.Start(&running, &reason).ok());
  ASSERT_TRUE(a.Admit(1000, never_, &late, &reason).ok());  // 500 ms ahead
  clock_.Advance(absl::Milliseconds(600));
  // 600 ms waited + 600 ms of work with the running forward: past
  // 1000 + 100 ms.
  absl::Status s = a.Start(&late, &reason);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(reason, RejectReason::kOverloaded);
  EXPECT_NE(s.message().find("waited 600 ms in the queue and would take "
                             "about 600 ms"),
            std::string::npos)
      << s;
  a.Finish(&late, false);
  a.Finish(&running, false);  // taught nothing
  ASSERT_TRUE(a.Admit(1000, never_, &fine, &reason).ok());
  clock_.Advance(absl::Milliseconds(900));
  EXPECT_TRUE(a.Start(&fine, &reason).ok());  // 900 + 100 <= 1100
  a.Finish(&fine, false);
}

// The drain time rises fast and falls slowly: the promise holds while the
// machine slows down.
TEST_F(AdmissionTest, TheEstimateRisesFastAndFallsSlowly) {
  AdmissionController a = Make(1 << 30, absl::Seconds(10));
  Teach(a, 1000, absl::Milliseconds(100));  // 100 us per token
  AdmissionController::Ticket q;
  RejectReason reason;
  ASSERT_TRUE(a.Admit(1000, never_, &q, &reason).ok());
  EXPECT_EQ(a.ExpectedWait(), absl::Milliseconds(100));
  Teach(a, 1000, absl::Milliseconds(300));  // halfway to 300 us
  EXPECT_EQ(a.ExpectedWait(), absl::Milliseconds(200));
  Teach(a, 1000, absl::Milliseconds(100));  // a tenth of the way back
  EXPECT_EQ(a.ExpectedWait(), absl::Milliseconds(190));
  ASSERT_TRUE(a.Start(&q, &reason).ok());
  a.Finish(&q, false);
}

// A forward's fixed cost weighs on a decode step's few tokens, not on a
// prefill's thousands: each size class has its own estimate, so decode
// steps do not make a prefill look 10x longer than it is.
TEST_F(AdmissionTest, EachSizeHasItsOwnEstimate) {
  AdmissionController a = Make(1 << 30, absl::Seconds(10));
  Teach(a, 32, absl::Microseconds(3200));  // 100 us per token
  RejectReason reason;
  // No forward as large finished yet: its work is not guessed from the
  // small ones' (that would be 6.5 s), so a 1 s deadline is not refused.
  AdmissionController::Ticket first;
  ASSERT_TRUE(
      a.Admit(65536, clock_.Now() + absl::Seconds(1), &first, &reason).ok());
  ASSERT_TRUE(a.Start(&first, &reason).ok());
  clock_.Advance(absl::Microseconds(655360));  // 10 us per token
  a.Finish(&first, true);
  AdmissionController::Ticket large, middle, small;
  ASSERT_TRUE(
      a.Admit(65536, clock_.Now() + absl::Seconds(1), &large, &reason).ok());
  EXPECT_EQ(a.ExpectedWait(), absl::Microseconds(655360));
  // 4096 tokens: no forward of its class finished; it borrows the larger
  // class's 10 us per token (a lower bound), not the smaller's 100.
  ASSERT_TRUE(a.Admit(4096, never_, &middle, &reason).ok());
  EXPECT_EQ(a.ExpectedWait(), absl::Microseconds(655360 + 40960));
  ASSERT_TRUE(a.Admit(32, never_, &small, &reason).ok());
  EXPECT_EQ(a.ExpectedWait(), absl::Microseconds(655360 + 40960 + 3200));
  for (auto* t : {&large, &middle, &small}) {
    ASSERT_TRUE(a.Start(t, &reason).ok());
    a.Finish(t, false);
  }
  EXPECT_EQ(a.ExpectedWait(), absl::ZeroDuration());
}

TEST_F(AdmissionTest, SizeClassesArePowersOfFour) {
  EXPECT_EQ(AdmissionController::SizeClass(0), 0);
  EXPECT_EQ(AdmissionController::SizeClass(3), 0);
  EXPECT_EQ(AdmissionController::SizeClass(4), 1);
  EXPECT_EQ(AdmissionController::SizeClass(63), 2);
  EXPECT_EQ(AdmissionController::SizeClass(64), 3);
  EXPECT_EQ(AdmissionController::SizeClass(65536), 8);
  EXPECT_EQ(AdmissionController::SizeClass(int64_t{1} << 40),
            AdmissionController::kSizeClasses - 1);
}

TEST_F(AdmissionTest, NothingIsRefusedByEstimateBeforeAForwardFinished) {
  AdmissionController a = Make(1 << 30, absl::Milliseconds(1));
  RejectReason reason;
  for (int i = 0; i < 100; ++i) {
    AdmissionController::Ticket t;
    ASSERT_TRUE(a.Admit(1000, clock_.Now(), &t, &reason).ok());
  }
}

}  // namespace
}  // namespace moe::router
