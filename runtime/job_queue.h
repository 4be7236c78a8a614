// The queue between the engine's thread (which submits jobs) and one device's worker thread.
// Both device implementations (CUDA and host memory) use it, so their start/stop behaviour is the
// same: after stop() no job is accepted, and the worker drains what was queued before it returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>

#include "common/types.h"

namespace computron::runtime {

template <typename Job>
class JobQueue {
 public:
  explicit JobQueue(std::string owner) : owner_(std::move(owner)) {}

  void push(Job job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) throw std::logic_error(owner_ + ": job submitted after stop");
      jobs_.push_back(std::move(job));
    }
    cv_.notify_all();
  }

  // Blocks until a job is queued and moves it into `job`; false once stopped and drained.
  bool pop(Job& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return false;
    job = std::move(jobs_.front());
    jobs_.pop_front();
    return true;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

  // Sleeps for `ns` or until stop(), whichever comes first (simulated device latency).
  void sleepUnlessStopped(Nanos ns) {
    if (ns <= 0) return;
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, std::chrono::nanoseconds(ns), [&] { return stopping_; });
  }

 private:
  std::string owner_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
};

}  // namespace computron::runtime
