// The served-token path of `computron serve` with real execution: each request's prompt and
// sampling reach the executor through the TokenChannel, and the tokens it delivers per step are
// streamed to their request, in order, ending at max_tokens or at a stop id. The executor here is
// a test stand-in (tests/support/token_execution.h) beside the host-memory device; the CUDA
// executor uses the same channel (checked on GPUs by scripts/serve-check.sh).
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/host_device.h"
#include "runtime/server/serving_loop.h"
#include "tests/support/tiny_model.h"
#include "tests/support/token_execution.h"

namespace computron::server {
namespace {

ModelDeployment deployment(const std::string& name) {
  ModelDeployment d;
  d.name = name;
  d.spec = fakes::tinyOptSpec(2);
  // Room for the long requests below: the engine refuses prompt + output over max_positions.
  d.spec.max_positions = 2048;
  d.gpus = {0};
  d.max_batch = 4;
  return d;
}

EngineConfig twoModelsOneSlot(Batching batching = Batching::kRequest) {
  EngineConfig c;
  c.policy.batching = batching;
  c.models = {deployment("alpha"), deployment("beta")};
  const std::int64_t shard = c.models[0].spec.shard(1, 1, 0, 0).bytes;
  c.gpu_weight_budget = {shard + shard / 2};
  return c;
}

// What one request received.
struct Received {
  std::vector<StreamEvent> events;
  bool done = false;
};

class ServedTokens : public ::testing::Test {
 protected:
  void start(std::vector<std::vector<std::int32_t>> eos = {}, Batching batching = Batching::kRequest) {
    channel_ = std::make_shared<runtime::TokenChannel>();
    factory_ = std::make_unique<runtime::HostDeviceFactory>(1);
    runtime::RuntimeOptions ro;
    ro.chunk_bytes = 16 * 1024;
    ro.granule = 64 * 1024;
    ro.host.pin_piece_bytes = 64 * 1024;
    ro.host.threads = 2;
    execution_ = std::make_shared<fakes::TokenExecution>(channel_, std::chrono::microseconds(300));
    ro.execution = execution_;
    backend_ = std::make_unique<runtime::RealBackend>(twoModelsOneSlot(batching), *factory_, ro);
    LoopOptions lo;
    lo.tokens = channel_;
    lo.eos_ids = std::move(eos);
    loop_ = std::make_unique<ServingLoop>(twoModelsOneSlot(batching), *backend_, lo);
    thread_ = std::thread([this] { loop_->run(); });
  }
  void TearDown() override {
    if (loop_) loop_->drain();
    if (thread_.joinable()) thread_.join();
  }

  // Submits and returns the index of its record in received_.
  std::size_t submit(const CompletionRequest& request) {
    std::size_t slot;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      slot = received_.size();
      received_.emplace_back();
    }
    std::uint64_t ticket = 0;
    EmitFn emit = [this, slot](StreamEvent ev) {
      std::lock_guard<std::mutex> lock(mutex_);
      const bool end = ev.kind != StreamEvent::Kind::kTokens;
      received_[slot].events.push_back(std::move(ev));
      if (end) received_[slot].done = true;
      cv_.notify_all();
    };
    EXPECT_EQ(loop_->submit(request, {}, emit, &ticket), ServingLoop::Submit::kAccepted);
    return slot;
  }
  Received wait(std::size_t slot) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return received_[slot].done; });
    return received_[slot];
  }
  static std::vector<std::int32_t> tokensOf(const Received& r) {
    std::vector<std::int32_t> out;
    for (const auto& ev : r.events)
      if (ev.kind == StreamEvent::Kind::kTokens) out.insert(out.end(), ev.tokens.begin(), ev.tokens.end());
    return out;
  }
  static std::shared_ptr<runtime::RequestPayload> payloadOf(const CompletionRequest& r) {
    auto p = std::make_shared<runtime::RequestPayload>();
    p->prompt = r.prompt;
    p->temperature = r.temperature;
    p->seed = r.seed;
    return p;
  }
  // The fake model's first `count` tokens for `r`.
  static std::vector<std::int32_t> fakeTokensOf(const CompletionRequest& r, int count) {
    std::vector<std::int32_t> out;
    for (int k = 0; k < count; ++k) out.push_back(fakes::fakeToken(*payloadOf(r), k, fakes::tinyOptSpec(2).vocab));
    return out;
  }
  // Each request got its own max_tokens tokens, then a `length` finish; returns what each received.
  std::vector<Received> expectOwnTokens(const std::vector<CompletionRequest>& reqs, const std::vector<std::size_t>& slots) {
    std::vector<Received> all;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      all.push_back(wait(slots[i]));
      const Received& got = all.back();
      EXPECT_EQ(tokensOf(got), fakeTokensOf(reqs[i], reqs[i].max_tokens)) << "request " << i;
      EXPECT_EQ(got.events.back().kind, StreamEvent::Kind::kDone) << "request " << i;
      EXPECT_EQ(got.events.back().finish_reason, "length") << "request " << i;
    }
    return all;
  }

  std::shared_ptr<runtime::TokenChannel> channel_;
  std::shared_ptr<runtime::ModelExecution> execution_;
  std::unique_ptr<runtime::HostDeviceFactory> factory_;
  std::unique_ptr<runtime::RealBackend> backend_;
  std::unique_ptr<ServingLoop> loop_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Received> received_;
};

CompletionRequest request(ModelId model, std::vector<std::int32_t> prompt, int max_tokens, float temperature = 0.f,
                          std::uint64_t seed = 0) {
  CompletionRequest r;
  r.model = model;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.temperature = temperature;
  r.seed = seed;
  return r;
}

TEST_F(ServedTokens, EachRequestGetsItsOwnTokensInOrderOnePerStep) {
  start();
  std::vector<CompletionRequest> reqs = {request(0, {5, 6, 7}, 6), request(0, {100}, 3, 0.8f, 42),
                                         request(1, {9, 9}, 5, 0.8f, 7), request(0, {100}, 3, 0.8f, 43)};
  std::vector<std::size_t> slots;
  for (const auto& r : reqs) slots.push_back(submit(r));
  for (const Received& got : expectOwnTokens(reqs, slots)) {
    // Streamed as delivered: one token per event.
    for (const auto& ev : got.events) {
      if (ev.kind == StreamEvent::Kind::kTokens) {
        EXPECT_EQ(ev.tokens.size(), 1u);
      }
    }
  }
  // Seeds matter when sampling: the two requests that differ only in seed got different tokens.
  EXPECT_NE(tokensOf(wait(slots[1])), tokensOf(wait(slots[3])));
  // Every payload left the channel with its request.
  EXPECT_EQ(channel_->payloads(), 0u);
}

// Iteration batching through serve: sessions' steps deliver each sequence's next token as the step
// ends, and a request that arrives while a long one is generating joins its session at a step
// boundary and finishes first.
TEST_F(ServedTokens, IterationBatchingStreamsOwnTokensAndLetsARequestJoinARunningSession) {
  start({}, Batching::kIteration);
  std::vector<CompletionRequest> reqs = {request(0, {5, 6, 7}, 6), request(0, {100}, 3, 0.8f, 42),
                                         request(1, {9, 9}, 5, 0.8f, 7)};
  std::vector<std::size_t> slots;
  for (const auto& r : reqs) slots.push_back(submit(r));
  expectOwnTokens(reqs, slots);

  const CompletionRequest long_one = request(0, {3}, 2000);
  const std::size_t long_slot = submit(long_one);
  {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return !received_[long_slot].events.empty(); });  // its session runs
  }
  const CompletionRequest short_one = request(0, {4, 4}, 3);
  const Received joined = wait(submit(short_one));
  EXPECT_EQ(tokensOf(joined), fakeTokensOf(short_one, 3));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    EXPECT_FALSE(received_[long_slot].done) << "the short request waited for the long one to end";
  }
  EXPECT_EQ(tokensOf(wait(long_slot)).size(), 2000u);
  EXPECT_EQ(channel_->payloads(), 0u);
}

// A stop id under iteration batching: the stream ends at it, and so does the sequence (the session
// retires it at that step, freeing its slot).
TEST_F(ServedTokens, IterationBatchingAStopIdEndsTheStreamAndTheSequence) {
  const int vocab = fakes::tinyOptSpec(2).vocab;
  CompletionRequest r = request(0, {20}, 8);
  const std::int32_t third = fakes::fakeToken(*payloadOf(r), 2, vocab);
  start({{third}}, Batching::kIteration);
  const Received got = wait(submit(r));
  EXPECT_EQ(tokensOf(got), fakeTokensOf(r, 3));
  ASSERT_EQ(got.events.back().kind, StreamEvent::Kind::kDone);
  EXPECT_EQ(got.events.back().finish_reason, "stop");
  // The executor made 3 tokens, not max_tokens' 8 (request ids start at 1).
  EXPECT_EQ(std::static_pointer_cast<fakes::TokenExecution>(execution_)->produced(1), 3);
}

TEST_F(ServedTokens, AStopIdEndsTheStreamEarlyWithReasonStop) {
  const int vocab = fakes::tinyOptSpec(2).vocab;
  CompletionRequest r = request(0, {20}, 8);
  const std::int32_t third = fakes::fakeToken(*payloadOf(r), 2, vocab);
  start({{third}});  // model 0's end-of-sequence id
  const Received got = wait(submit(r));
  EXPECT_EQ(tokensOf(got), fakeTokensOf(r, 3));  // the stop id itself is delivered, nothing after it
  ASSERT_EQ(got.events.back().kind, StreamEvent::Kind::kDone);
  EXPECT_EQ(got.events.back().finish_reason, "stop");

  // The same request asking ignore_eos runs to max_tokens; its own stop_token_ids still apply.
  r.ignore_eos = true;
  const Received all = wait(submit(r));
  EXPECT_EQ(tokensOf(all).size(), 8u);
  EXPECT_EQ(all.events.back().finish_reason, "length");
  r.stop_token_ids = {fakes::fakeToken(*payloadOf(r), 0, vocab)};
  const Received first = wait(submit(r));
  EXPECT_EQ(tokensOf(first).size(), 1u);
  EXPECT_EQ(first.events.back().finish_reason, "stop");
}

TEST_F(ServedTokens, ACancelInsideABatchStopsTheExecutorAtItsNextStep) {
  start();
  std::mutex m;
  std::condition_variable cv;
  int received = 0;
  std::uint64_t ticket = 0;
  const CompletionRequest long_one = request(0, {3}, 1000);
  ASSERT_EQ(loop_->submit(long_one, {},
                          [&](StreamEvent ev) {
                            std::lock_guard<std::mutex> lock(m);
                            received += static_cast<int>(ev.tokens.size());
                            cv.notify_all();
                          },
                          &ticket),
            ServingLoop::Submit::kAccepted);
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return received > 0; });
  }
  loop_->cancel(ticket);
  // A request behind it on the same model is served once the executor has let the first go.
  const Received next = wait(submit(request(0, {4}, 2)));
  EXPECT_EQ(next.events.back().kind, StreamEvent::Kind::kDone);
  const auto* fake = static_cast<const fakes::TokenExecution*>(execution_.get());
  EXPECT_LT(fake->produced(ticket), 1000);  // dropped long before its 1,000 steps
  EXPECT_NE(loop_->metricsText().find("computron_requests_total{model=\"alpha\",outcome=\"cancelled\"} 1"),
            std::string::npos);
}

// Under iteration batching a client that goes away ends its sequence at the session's next step.
TEST_F(ServedTokens, IterationBatchingACancelEndsTheSequenceAtTheNextStep) {
  start({}, Batching::kIteration);
  // Shared with the emit callback, which the loop may still call after this body returns.
  struct Seen {
    std::mutex m;
    std::condition_variable cv;
    int received = 0;
  };
  auto seen = std::make_shared<Seen>();
  std::uint64_t ticket = 0;
  ASSERT_EQ(loop_->submit(request(0, {3}, 1000), {},
                          [seen](StreamEvent ev) {
                            std::lock_guard<std::mutex> lock(seen->m);
                            seen->received += static_cast<int>(ev.tokens.size());
                            seen->cv.notify_all();
                          },
                          &ticket),
            ServingLoop::Submit::kAccepted);
  {
    std::unique_lock<std::mutex> lock(seen->m);
    seen->cv.wait(lock, [&] { return seen->received > 0; });
  }
  loop_->cancel(ticket);
  const std::string done = "computron_requests_total{model=\"alpha\",outcome=\"cancelled\"} 1";
  for (int i = 0; i < 2000 && loop_->metricsText().find(done) == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_NE(loop_->metricsText().find(done), std::string::npos);
  const auto* fake = static_cast<const fakes::TokenExecution*>(execution_.get());
  EXPECT_LT(fake->produced(ticket), 1000);  // retired long before its 1,000 steps
}

TEST_F(ServedTokens, ACancelledRequestInTheInboxLeavesNoPayloadBehind) {
  start();
  std::vector<std::size_t> slots;
  for (int i = 0; i < 6; ++i) slots.push_back(submit(request(i % 2, {1, 2, 3}, 4)));
  std::uint64_t ticket = 0;
  ASSERT_EQ(loop_->submit(request(1, {4}, 4), {}, [](StreamEvent) {}, &ticket), ServingLoop::Submit::kAccepted);
  loop_->cancel(ticket);
  for (auto s : slots) EXPECT_EQ(wait(s).events.back().kind, StreamEvent::Kind::kDone);
  loop_->drain();
  thread_.join();
  EXPECT_EQ(channel_->payloads(), 0u);
}

}  // namespace
}  // namespace computron::server
