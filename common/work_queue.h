// WorkQueue: a fixed pool of threads draining a bounded queue of tasks. Used
// so that request handlers never run model code on gRPC's threads, and so
// that overload is refused (TrySubmit returns false) instead of queued
// without bound.
//
// A new task wakes the thread that went idle last: under light load the same
// few threads run everything and keep their caches and per-thread buffers
// (OpenBLAS, OpenMP) warm, while the others only start when tasks overlap.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace moe::common {

class WorkQueue {
 public:
  // Starts `threads` threads (at least 1) and returns once all are idle.
  // `capacity` bounds the tasks waiting (not counting running ones).
  WorkQueue(int threads, size_t capacity, const std::string& name);
  // Runs the tasks already queued, then joins the threads.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `task`; false (and the task is dropped) when the queue is full or
  // stopping.
  bool TrySubmit(std::function<void()> task);

  // Runs `task` on the calling thread, now, when nothing waits and a thread
  // of the pool is parked: that thread stays parked until the task ends
  // (it is counted as running), so no more than `threads` tasks ever run at
  // once and none that waited is overtaken. False, and nothing run,
  // otherwise. For work too small to be worth a hand-off between threads.
  bool TryRunHere(absl::FunctionRef<void()> task);

  // Tasks waiting plus tasks running.
  size_t load() const;

 private:
  struct Idle {
    bool woken = false;  // guarded by mu_
  };
  void Loop();

  mutable absl::Mutex mu_;
  std::vector<Idle*> idle_
      ABSL_GUARDED_BY(mu_);  // a stack: the last is warmest
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;
  const size_t capacity_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace moe::common
