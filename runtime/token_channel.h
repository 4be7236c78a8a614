// Between `computron serve` and the executors: what a served request asks of its model (its own
// prompt ids, sampling, the ids that end it) and the tokens its batch produces, one decode step at
// a time. The engine knows requests only by id and size; the serving loop files each request's
// payload here before the request reaches the engine, the executor of the batch's last pipeline
// stage (tensor rank 0) looks it up when the batch starts and delivers every sampled token as its
// step ends, and the loop takes the deliveries on its own thread and streams them.
//
// Without a payload (replay, calibrate) an executor uses the synthetic prompt of the request's
// length and greedy decoding, as before.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/types.h"

namespace computron::runtime {

struct RequestPayload {
  std::vector<std::int32_t> prompt;    // token ids, each below the model's vocabulary
  float temperature = 0.f;             // 0: greedy
  float top_p = 1.f;                   // 1: no nucleus cut
  int top_k = 0;                       // 0: no limit
  std::uint64_t seed = 0;              // the sampler's stream: the same request repeats exactly
  std::vector<std::int32_t> stop_ids;  // sampling one of these ends the request (it is delivered)
  // Set by the server when the request's client has gone: an executor that runs the model on one
  // GPU drops the request at its next step (a tensor- or pipeline-parallel group runs it to the
  // end: its ranks must take the same steps).
  mutable std::atomic<bool> cancelled{false};
};

struct TokenDelivery {
  RequestId request = 0;
  int index = 0;            // 0: the first output token
  std::int32_t token = 0;
  bool stop = false;        // one of the request's stop ids: its last token
  Nanos time = 0;           // when its step ended (the backend's clock)
};

class TokenChannel {
 public:
  void put(RequestId id, std::shared_ptr<const RequestPayload> payload) {
    std::lock_guard<std::mutex> lock(mutex_);
    payloads_[id] = std::move(payload);
  }
  void erase(RequestId id) {
    std::lock_guard<std::mutex> lock(mutex_);
    payloads_.erase(id);
  }
  std::shared_ptr<const RequestPayload> find(RequestId id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = payloads_.find(id);
    return it == payloads_.end() ? nullptr : it->second;
  }
  std::size_t payloads() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return payloads_.size();
  }

  // Any thread (the executors' workers): one step's tokens. Wakes the taker.
  void deliver(std::vector<TokenDelivery> step) {
    if (step.empty()) return;
    std::function<void()> wake;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& d : step) delivered_.push_back(d);
      wake = wake_;
    }
    if (wake) wake();
  }
  // The taker's thread: every delivery so far, in the order delivered.
  std::vector<TokenDelivery> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<TokenDelivery> out;
    out.swap(delivered_);
    return out;
  }
  // Called after each delivery (e.g. to wake the serving loop's dispatch wait). Must not block.
  void setWake(std::function<void()> wake) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_ = std::move(wake);
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<RequestId, std::shared_ptr<const RequestPayload>> payloads_;
  std::vector<TokenDelivery> delivered_;
  std::function<void()> wake_;
};

}  // namespace computron::runtime
