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

}  // namespace
}  // namespace moe::common
