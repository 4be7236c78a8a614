// A model execution for tests of the served-token path without a GPU: it runs beside the
// host-memory device, takes each request's prompt and sampling from the TokenChannel as the CUDA
// executor does, and "generates" token k of a request as a fixed function of its payload, one
// step every `step` of wall time, delivering each step's tokens through the channel before it
// reports the part done. Stop ids end a request early, as on the GPU. Iteration batching's steps
// (ExecPart::step) make token `generated` of each sequence named, delivered as the step ends, as
// the CUDA executor's session steps do.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/execution.h"
#include "runtime/job_queue.h"

namespace computron::fakes {

// The fake model's token k (0-based) of a request with this payload, in [0, vocab).
inline std::int32_t fakeToken(const runtime::RequestPayload& p, int k, int vocab) {
  const std::uint64_t last = p.prompt.empty() ? 0 : static_cast<std::uint64_t>(p.prompt.back());
  const std::uint64_t salt = p.temperature > 0.f ? p.seed * 7919u : 0u;  // greedy ignores the seed
  return static_cast<std::int32_t>((last + salt + 13u * static_cast<std::uint64_t>(k + 1)) % static_cast<std::uint64_t>(vocab));
}

class TokenExecution final : public runtime::ModelExecution {
 public:
  TokenExecution(std::shared_ptr<runtime::TokenChannel> channel, std::chrono::microseconds step)
      : channel_(std::move(channel)), step_(step) {}
  ~TokenExecution() override { stop(); }

  std::string name() const override { return "test tokens"; }
  void validate(const EngineConfig&) const override {}
  void fillShard(const ModelDeployment&, ModelId, int, std::span<std::byte> image) const override {
    std::fill(image.begin(), image.end(), std::byte{0});
  }
  void start(const EngineConfig& config, const std::vector<runtime::Device*>&, runtime::CompletionQueue& queue,
             const Clock& clock) override {
    config_ = config;
    queue_ = &queue;
    clock_ = &clock;
    worker_ = std::thread([this] {
      runtime::ExecPart part;
      while (jobs_.pop(part)) run(part);
    });
  }
  void submit(runtime::ExecPart part) override { jobs_.push(std::move(part)); }
  bool supportsSteps() const override { return true; }
  // Tokens made so far for request `id` (every part counted once: part 0's).
  int produced(RequestId id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = produced_.find(id);
    return it == produced_.end() ? 0 : it->second;
  }
  void stop() override {
    jobs_.stop();
    if (worker_.joinable()) worker_.join();
  }

 private:
  // Token `index` of request `id` (the fake model's, when it has a payload), counted once (part 0).
  runtime::TokenDelivery make(const runtime::ExecPart& part, RequestId id, int index,
                              const runtime::RequestPayload* payload, int vocab) {
    runtime::TokenDelivery d;
    d.request = id;
    d.index = index;
    if (payload) {
      d.token = fakeToken(*payload, index, vocab);
      d.stop = std::find(payload->stop_ids.begin(), payload->stop_ids.end(), d.token) != payload->stop_ids.end();
    }
    if (part.part == 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++produced_[id];
    }
    return d;
  }
  // One pass: its time, then its tokens delivered (part 0) and its end recorded.
  void pass(const runtime::ExecPart& part, std::vector<runtime::TokenDelivery> out, runtime::DeviceEvent& ev) {
    std::this_thread::sleep_for(step_);
    const Nanos now = clock_->now();
    for (auto& d : out) d.time = now;
    ev.step_end.push_back(now);
    if (part.part == 0) channel_->deliver(std::move(out));
  }

  void run(const runtime::ExecPart& part) {
    runtime::DeviceEvent ev;
    ev.kind = runtime::DeviceEvent::Kind::kExecDone;
    ev.batch = part.batch;
    ev.path = part.part;
    ev.gpu = part.gpu;
    ev.start = clock_->now();
    const int vocab = config_.models[static_cast<std::size_t>(part.model)].spec.vocab;
    if (part.step) {
      std::vector<runtime::TokenDelivery> out;
      const auto& seqs = part.step->prefill.empty() ? part.step->decode : part.step->prefill;
      for (const StepSequence& s : seqs) {
        const auto payload = channel_->find(s.request.id);
        out.push_back(make(part, s.request.id, s.generated, payload.get(), vocab));
        if (payload && (out.back().stop || payload->cancelled.load()))
          ev.stopped.push_back(s.request.id);  // ends with this step
      }
      pass(part, std::move(out), ev);
      ev.time = clock_->now();
      queue_->push(std::move(ev));
      return;
    }
    std::vector<std::shared_ptr<const runtime::RequestPayload>> payloads;
    std::vector<bool> running;
    for (const Request& r : part.requests) {
      payloads.push_back(channel_->find(r.id));
      running.push_back(true);
    }
    for (int step = 0;; ++step) {
      std::vector<runtime::TokenDelivery> out;
      for (std::size_t i = 0; i < part.requests.size(); ++i) {
        if (!running[i] || step >= std::max(1, part.requests[i].output_tokens) ||
            (payloads[i] && payloads[i]->cancelled.load())) {
          running[i] = false;
          continue;
        }
        out.push_back(make(part, part.requests[i].id, step, payloads[i].get(), vocab));
        if (out.back().stop) running[i] = false;
      }
      if (out.empty()) break;
      pass(part, std::move(out), ev);
    }
    ev.time = clock_->now();
    queue_->push(std::move(ev));
  }

  std::shared_ptr<runtime::TokenChannel> channel_;
  std::chrono::microseconds step_;
  EngineConfig config_;
  runtime::CompletionQueue* queue_ = nullptr;
  const Clock* clock_ = nullptr;
  runtime::JobQueue<runtime::ExecPart> jobs_{"test token execution"};
  std::thread worker_;
  mutable std::mutex mutex_;
  std::map<RequestId, int> produced_;
};

}  // namespace computron::fakes
