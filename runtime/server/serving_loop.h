// The engine's side of `computron serve`: the one thread that owns the Engine. HTTP threads hand it
// requests through an inbox (a mutex-guarded queue) and wake its dispatch wait; it feeds them to
// the engine as arrivals, streams each request's tokens back through the request's own callback,
// and publishes what /v1/models and /metrics show (residency, queues, counters, histograms).
//
// Tokens, two ways:
// - Real execution (`LoopOptions::tokens` set): each request's prompt ids and sampling go to the
//   executors through the TokenChannel, and the tokens come back from it as each decode step
//   ends; the loop streams them as they arrive. A stop id ends the request's stream early
//   (finish reason `stop`); its batch runs on for the others.
// - Placeholder execution: with iteration batching, each session step's sequences get their next
//   token as the step ends (onStep). A request-level batch is reported once, when it is done
//   (first token time and per-request finish). So the loop predicts each request's token times
//   when its batch starts, from the same placeholder cost the backend runs (`LoopOptions::predicted_times`): the
//   first token at the end of the prefill, the rest evenly up to the finish; the last token is
//   held until the engine reports the request done, so a stream never ends before its request
//   does. Without a prediction every token goes out when the request is done.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/core/engine.h"
#include "runtime/real_backend.h"
#include "runtime/token_channel.h"
#include "runtime/server/api.h"
#include "runtime/server/metrics.h"

namespace computron::server {

// What the loop reports to a request's owner, on the engine's thread (the callback must not block).
struct StreamEvent {
  enum class Kind { kTokens, kDone, kError };
  Kind kind = Kind::kTokens;
  std::vector<std::int32_t> tokens;  // kTokens: the next tokens, in order
  ApiError error;                    // kError
  std::string finish_reason;         // kDone: "length" (max_tokens reached) or "stop" (a stop id)
  Nanos engine_latency = -1;         // kDone: the engine's own, arrival at the engine to finish
};
using EmitFn = std::function<void(StreamEvent)>;

struct LoopOptions {
  // Requests accepted but not answered, per model; beyond it submit() answers kQueueFull (429).
  int max_pending_per_model = 256;
  // Predicted batch times (offsets from the batch's start), for streaming; unset: none.
  std::function<runtime::PlaceholderTimes(const ExecuteCommand&)> predicted_times;
  // Real execution: the channel shared with the executors (RealExecutionOptions::tokens). Set, the
  // tokens a client receives are the model's own, and predicted_times is not used.
  std::shared_ptr<runtime::TokenChannel> tokens;
  // Per model (indexed by ModelId; may be shorter): the ids that end a request unless it asks
  // `ignore_eos` (the tokenizer's or config's end-of-sequence ids).
  std::vector<std::vector<std::int32_t>> eos_ids;
  // Real execution: prompt + max_tokens at most this many (the executors' --max-context); 0: the
  // models' own positions only.
  int max_context = 0;
};

struct ModelStatus {
  Residency residency = Residency::kOffloaded;
  std::int64_t queued = 0;   // in the engine's queue
  std::int64_t pending = 0;  // accepted by the server, not yet answered
  std::int64_t loads = 0;
  // Why the model cannot be served any more (a GPU it needs was lost); empty while it can.
  std::string unavailable;
};

class ServingLoop final : public EngineObserver {
 public:
  ServingLoop(EngineConfig config, runtime::RealBackend& backend, LoopOptions options);
  ~ServingLoop() override;

  enum class Submit { kAccepted, kQueueFull, kDraining };
  // Any thread. On kAccepted, *ticket names the request for cancel(); `emit` then receives its
  // tokens and exactly one kDone or kError.
  Submit submit(CompletionRequest request, std::vector<std::int32_t> tokens, EmitFn emit, std::uint64_t* ticket);
  // Any thread: the owner has gone. A request still in the inbox never reaches the engine; one
  // queued in the engine leaves its queue (Engine::cancelQueued); one already in a batch is
  // served, but nothing more is emitted (with real execution on one GPU the executor drops it at
  // its next decode step).
  // served: the owner ended the request itself (a stop string) and it counts as `ok`, not
  // `cancelled`.
  void cancel(std::uint64_t ticket, bool served = false);
  // Any thread: an internal one-token request that makes the model resident (admin load).
  Submit requestLoad(ModelId model);
  // Any thread: asks the engine to evict the model now (admin evict). The future holds nothing
  // when the eviction started, else why not (Engine::evictOnDemand; "the server is shutting down"
  // once draining).
  std::future<std::optional<std::string>> requestEvict(ModelId model);
  // Any thread: stop taking requests; run() returns once every accepted one is answered.
  void drain();
  bool draining() const { return draining_.load(); }

  std::vector<ModelStatus> status() const;
  std::string metricsText() const;
  void countHttpResponse(int status);
  const EngineConfig& config() const { return config_; }

  // The engine's thread: runs until drain() and every accepted request is answered.
  void run();

  // EngineObserver (the engine's thread).
  void onRequestDone(const RequestRecord& record) override;
  void onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) override;
  void onEvict(const EvictCommand& cmd, Nanos start, Nanos end) override;
  void onBatch(const ExecuteCommand& cmd, const BatchResult& result) override;
  void onStep(const StepCommand& cmd, const StepResult& result) override;

 private:
  class TimedBackend;
  struct Incoming {
    Request request;
    std::vector<std::int32_t> tokens;
    EmitFn emit;  // empty: internal (admin load)
    std::shared_ptr<const runtime::RequestPayload> payload;  // real execution: filed in the channel
  };
  struct Active {
    ModelId model = 0;
    std::vector<std::int32_t> tokens;  // placeholder: all of them; real: those delivered so far
    std::size_t sent = 0;
    EmitFn emit;
    bool cancelled = false;
    bool served = false;    // cancelled by its owner after it got what it wanted (counted ok)
    bool real = false;      // tokens come from the TokenChannel
    bool stopped = false;   // real: a stop id was delivered; nothing more is sent
    std::shared_ptr<const runtime::RequestPayload> payload;  // real: its cancelled flag reaches the executor
    int max_tokens = 0;
    bool timed = false;  // token times predicted (its batch started)
    Nanos first = 0;
    Nanos finish = 0;
  };

  void onExecute(const ExecuteCommand& cmd);
  void onStepStart(const StepCommand& cmd);
  // When token `k` of `a` is due (only for k < tokens - 1: the last waits for the request's end).
  static Nanos tokenTime(const Active& a, std::size_t k);
  void fireTokens(Nanos now);
  // Real execution: streams what the executors delivered since the last call.
  void takeDelivered();
  void publish(const Engine& engine);
  const Engine* engine_ = nullptr;  // the engine thread's, while run() runs
  Submit enqueue(Incoming in, std::uint64_t* ticket);
  void finished(ModelId model);

  EngineConfig config_;
  runtime::RealBackend& backend_;
  LoopOptions options_;
  std::atomic<bool> draining_{false};

  mutable std::mutex inbox_mutex_;  // inbox_, pending_, cancelled_, next_id_
  std::deque<Incoming> inbox_;
  std::vector<std::int64_t> pending_;       // per model
  std::vector<std::pair<std::uint64_t, bool>> cancelled_;  // (ticket, served), for the engine's thread
  std::vector<std::pair<ModelId, std::promise<std::optional<std::string>>>> evicts_;  // admin evicts
  RequestId next_id_ = 1;

  // The engine's thread only.
  std::map<RequestId, Active> active_;
  std::multimap<Nanos, RequestId> timers_;  // next token due
  std::int64_t answered_internal_ = 0;

  mutable std::mutex state_mutex_;  // what the HTTP threads read: status_, metrics_, gpu figures
  std::vector<ModelStatus> status_;
  std::vector<ModelMetrics> metrics_;
  std::vector<std::int64_t> gpu_used_;
  std::map<int, std::int64_t> http_responses_;
};

}  // namespace computron::server
