#include "common/work_queue.h"

#include <pthread.h>

#include <algorithm>

namespace moe::common {

WorkQueue::WorkQueue(int threads, size_t capacity, const std::string& name)
    : capacity_(capacity) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] { Loop(); });
    pthread_setname_np(threads_.back().native_handle(),
                       name.substr(0, 15).c_str());
  }
  // Every thread parked: the first tasks meet no thread still starting (one
  // that parks later would count as the warmest).
  absl::MutexLock lock(&mu_);
  auto all_idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return idle_.size() == threads_.size();
  };
  mu_.Await(absl::Condition(&all_idle));
}

WorkQueue::~WorkQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (Idle* idle : idle_) idle->woken = true;
    idle_.clear();
  }
  for (std::thread& t : threads_) t.join();
}

bool WorkQueue::TrySubmit(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || tasks_.size() >= capacity_) return false;
  tasks_.push_back(std::move(task));
  if (!idle_.empty()) {
    idle_.back()->woken = true;
    idle_.pop_back();
  }
  return true;
}

bool WorkQueue::TryRunHere(absl::FunctionRef<void()> task) {
  Idle* borrowed = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || !tasks_.empty() || idle_.empty()) return false;
    // Taken off the stack without waking it: it stays in its Await.
    borrowed = idle_.back();
    idle_.pop_back();
    ++running_;
  }
  task();
  absl::MutexLock lock(&mu_);
  --running_;
  if (stopping_ || !tasks_.empty()) {
    borrowed->woken = true;  // runs what arrived meanwhile, or exits
  } else {
    idle_.push_back(borrowed);
  }
  return true;
}

size_t WorkQueue::load() const {
  absl::MutexLock lock(&mu_);
  return tasks_.size() + running_;
}

void WorkQueue::Loop() {
  Idle self;
  absl::MutexLock lock(&mu_);
  for (;;) {
    // Parks in the same critical section that ended the last task, so a
    // thread counted as done is already on the idle stack. Only the thread
    // whose entry was popped (woken) proceeds.
    while (tasks_.empty() && !stopping_) {
      self.woken = false;
      idle_.push_back(&self);
      mu_.Await(absl::Condition(&self.woken));
    }
    if (tasks_.empty()) return;  // stopping and drained
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    ++running_;
    mu_.Unlock();
    task();
    task = nullptr;
    mu_.Lock();
    --running_;
  }
}

}  // namespace moe::common
