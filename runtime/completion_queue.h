// What devices report back, and the thread-safe queue that carries it to the engine's thread.
// Device threads (and CUDA's host-function thread) push; the driver loop blocks on a condition
// variable until something arrives or its next deadline (the next request's arrival) passes.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "common/core/backend.h"
#include "common/types.h"

namespace computron::runtime {

struct DeviceEvent {
  enum class Kind {
    kPathProgress,  // a load path covered segments up to `segment` (final: the path is finished)
    kVerifyDone,    // device checksum of a loaded shard (`checksum`)
    kExecDone,      // a batch part finished on one GPU (`start`, `step_end`)
    kRelocateDone,  // a compaction finished on `gpu`
    kEvictDone,     // backend-internal: an eviction completed at once
    kLoadRefused,   // backend-internal: a load failed before any copy was issued
    kGpuLost,       // the GPU is gone for good (`error` says why): its rank died or stopped answering
  };
  Kind kind = Kind::kPathProgress;
  OpId op = 0;          // load / evict op, relocate token
  BatchId batch = 0;
  int path = 0;         // path index (progress), part index (exec)
  GpuId gpu = 0;
  int segment = -1;
  bool final = false;
  bool ok = true;
  std::string error;
  Nanos time = 0;       // backend clock when it happened
  std::uint64_t checksum = 0;
  Nanos start = 0;
  std::vector<Nanos> step_end;
  // kExecDone of a session step: sequences that end with this step's token (StepResult::stopped).
  // GPU ranks under mpirun send theirs with the event; the backend merges every part's list.
  std::vector<RequestId> stopped;
  bool internal = false;  // pushed by the backend itself, not a device
};

class CompletionQueue {
 public:
  void push(DeviceEvent event) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(std::move(event));
    }
    cv_.notify_one();
  }

  // Ends the current (or next) waitUntil early, with whatever is queued (possibly nothing): a
  // front end (the HTTP server) has work for the driver's thread that is not a device event.
  void wake() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      woken_ = true;
    }
    cv_.notify_one();
  }

  // Waits until at least one event is queued, wake() is called or `deadline` passes; returns
  // everything queued.
  std::deque<DeviceEvent> waitUntil(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_until(lock, deadline, [&] { return !events_.empty() || woken_; });
    woken_ = false;
    std::deque<DeviceEvent> out;
    out.swap(events_);
    return out;
  }

  std::deque<DeviceEvent> takeAll() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::deque<DeviceEvent> out;
    out.swap(events_);
    return out;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<DeviceEvent> events_;
  bool woken_ = false;
};

// The runtime's clock: steady time in nanoseconds since the backend started, or since the last
// restart() (a replay restarts it when its first request may arrive, so times start near 0 as
// in the simulator). Read from device threads too, hence the atomic epoch.
class SteadyClock : public Clock {
 public:
  SteadyClock() { restart(); }
  Nanos now() const override { return steadyNanos() - epoch_.load(std::memory_order_relaxed); }
  void restart() { epoch_.store(steadyNanos(), std::memory_order_relaxed); }
  // The steady_clock reading (ns since its epoch) at which now() was 0.
  Nanos epoch() const { return epoch_.load(std::memory_order_relaxed); }
  std::chrono::steady_clock::time_point at(Nanos t) const {
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(epoch_.load(std::memory_order_relaxed) + t));
  }

  // steady_clock's reading in ns (CLOCK_MONOTONIC: one clock for every process of a host).
  static Nanos steadyNanos() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

 private:
  std::atomic<Nanos> epoch_{0};
};

}  // namespace computron::runtime
