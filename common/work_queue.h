// WorkQueue: a fixed pool of threads draining a bounded FIFO of tasks. Used
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

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace moe::common {

class WorkQueue {
 public:
  // Starts `threads` threads (at least 1). `capacity` bounds the tasks
  // waiting (not counting running ones).
  WorkQueue(int threads, size_t capacity, const std::string& name);
  // Runs the tasks already queued, then joins the threads.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Queues `task`; false (and the task is dropped) when the queue is full or
  // stopping.
  bool TrySubmit(std::function<void()> task);

  // Tasks waiting plus tasks running.
  size_t load() const;

 private:
  struct Idle {
    std::condition_variable cv;
    bool woken = false;
  };
  void Loop();

  mutable std::mutex mu_;
  std::vector<Idle*> idle_;  // a stack: the last one is the warmest
  std::deque<std::function<void()>> tasks_;
  size_t running_ = 0;
  size_t capacity_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace moe::common
