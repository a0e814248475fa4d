#include "common/work_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace moe::common {
namespace {

TEST(WorkQueueTest, SequentialTasksStayOnTheWarmestThread) {
  WorkQueue queue(4, 8, "test");
  std::set<std::thread::id> ids;
  for (int i = 0; i < 20; ++i) {
    absl::Notification done;
    std::thread::id id;
    ASSERT_TRUE(queue.TrySubmit([&] {
      id = std::this_thread::get_id();
      done.Notify();
    }));
    done.WaitForNotification();
    // A thread that is no longer counted has parked itself.
    while (queue.load() != 0) absl::SleepFor(absl::Microseconds(50));
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 1u);
}

TEST(WorkQueueTest, OverlappingTasksUseMoreThreads) {
  // Declared before the queue: its destructor joins the threads that still
  // return from release.WaitForNotification() (found by TSan).
  std::atomic<int> running{0};
  absl::Notification release;
  std::set<std::thread::id> ids;
  std::mutex mu;
  WorkQueue queue(3, 8, "test");
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(queue.TrySubmit([&] {
      {
        std::lock_guard<std::mutex> lock(mu);
        ids.insert(std::this_thread::get_id());
      }
      ++running;
      release.WaitForNotification();
    }));
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (running.load() < 3 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(running.load(), 3);
  release.Notify();
  EXPECT_EQ(ids.size(), 3u);
}

TEST(WorkQueueTest, RefusesBeyondCapacityAndDrainsOnDestruction) {
  std::atomic<int> ran{0};
  absl::Notification release;
  {
    WorkQueue queue(1, 2, "test");
    absl::Notification started;
    ASSERT_TRUE(queue.TrySubmit([&] {
      started.Notify();
      release.WaitForNotification();
      ++ran;
    }));
    started.WaitForNotification();
    EXPECT_TRUE(queue.TrySubmit([&] { ++ran; }));
    EXPECT_TRUE(queue.TrySubmit([&] { ++ran; }));
    EXPECT_FALSE(queue.TrySubmit([&] { ++ran; }));  // 2 already waiting
    EXPECT_EQ(queue.load(), 3u);
    release.Notify();
  }
  EXPECT_EQ(ran.load(), 3);
}

// TryRunHere runs on the caller's thread only while nothing waits and a
// pool thread is parked, and that thread stays out of use meanwhile: with
// one thread, a task submitted during an inline run waits for it (never two
// at once), then runs on the pool thread; with the pool busy it refuses.
TEST(WorkQueueTest, TryRunHereBorrowsAParkedThread) {
  std::atomic<int> running{0}, most{0};
  auto count = [&] {
    const int now = running.fetch_add(1) + 1;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
  };
  absl::Notification release, submitted_done;
  WorkQueue queue(1, 8, "test");
  const std::thread::id caller = std::this_thread::get_id();
  std::thread::id submitted_on;
  bool ran = queue.TryRunHere([&] {
    count();
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(queue.load(), 1u);
    EXPECT_TRUE(queue.TrySubmit([&] {
      count();
      submitted_on = std::this_thread::get_id();
      running.fetch_sub(1);
      submitted_done.Notify();
    }));
    // The submitted task does not start beside this one.
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_FALSE(submitted_done.HasBeenNotified());
    // Something waits: no second inline run.
    EXPECT_FALSE(queue.TryRunHere([] { ADD_FAILURE() << "ran inline"; }));
    running.fetch_sub(1);
  });
  EXPECT_TRUE(ran);
  submitted_done.WaitForNotification();
  EXPECT_NE(submitted_on, caller);
  EXPECT_EQ(most.load(), 1);
  // The pool thread busy: refused.
  absl::Notification started;
  ASSERT_TRUE(queue.TrySubmit([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  EXPECT_FALSE(queue.TryRunHere([] { ADD_FAILURE() << "ran inline"; }));
  release.Notify();
  while (queue.load() != 0) absl::SleepFor(absl::Microseconds(50));
  // Idle again: runs here, and the queue still works after.
  EXPECT_TRUE(queue.TryRunHere([] {}));
  absl::Notification last;
  ASSERT_TRUE(queue.TrySubmit([&] { last.Notify(); }));
  last.WaitForNotification();
}

}  // namespace
}  // namespace moe::common
