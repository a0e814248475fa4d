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
}

WorkQueue::~WorkQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (Idle* idle : idle_) {
      idle->woken = true;
      idle->cv.notify_one();
    }
    idle_.clear();
  }
  for (std::thread& t : threads_) t.join();
}

bool WorkQueue::TrySubmit(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_ || tasks_.size() >= capacity_) return false;
  tasks_.push_back(std::move(task));
  if (!idle_.empty()) {
    Idle* idle = idle_.back();
    idle_.pop_back();
    idle->woken = true;
    idle->cv.notify_one();
  }
  return true;
}

size_t WorkQueue::load() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tasks_.size() + running_;
}

void WorkQueue::Loop() {
  Idle self;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // Parks in the same critical section that ended the last task, so a
    // thread counted as done is already on the idle stack.
    while (tasks_.empty() && !stopping_) {
      self.woken = false;
      idle_.push_back(&self);
      self.cv.wait(lock, [&self] { return self.woken; });
    }
    if (tasks_.empty()) return;  // stopping and drained
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    ++running_;
    lock.unlock();
    task();
    task = nullptr;
    lock.lock();
    --running_;
  }
}

}  // namespace moe::common
