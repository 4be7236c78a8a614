#include "runtime/server/serving_loop.h"

#include <algorithm>

namespace computron::server {

// Forwards every command to the real backend and tells the loop when a batch starts, so it can
// time the batch's tokens.
class ServingLoop::TimedBackend final : public Backend {
 public:
  TimedBackend(runtime::RealBackend& inner, ServingLoop& loop) : inner_(inner), loop_(loop) {}
  void load(const LoadCommand& cmd) override { inner_.load(cmd); }
  void evict(const EvictCommand& cmd) override { inner_.evict(cmd); }
  void execute(const ExecuteCommand& cmd) override {
    loop_.onExecute(cmd);
    inner_.execute(cmd);
  }
  // Iteration batching: sessions' steps go to the runtime as in `replay`; their tokens stream as
  // each step ends (ServingLoop::onStep, or the TokenChannel with real execution).
  bool supportsSteps() const override { return inner_.supportsSteps(); }
  void step(const StepCommand& cmd) override {
    loop_.onStepStart(cmd);
    inner_.step(cmd);
  }

 private:
  runtime::RealBackend& inner_;
  ServingLoop& loop_;
};

ServingLoop::ServingLoop(EngineConfig config, runtime::RealBackend& backend, LoopOptions options)
    : config_(std::move(config)), backend_(backend), options_(std::move(options)),
      pending_(config_.models.size(), 0), status_(config_.models.size()), metrics_(config_.models.size()),
      gpu_used_(config_.gpu_weight_budget.size(), 0) {}

ServingLoop::~ServingLoop() = default;

ServingLoop::Submit ServingLoop::enqueue(Incoming in, std::uint64_t* ticket) {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (draining_.load()) return Submit::kDraining;
    auto& pending = pending_[static_cast<std::size_t>(in.request.model)];
    if (pending >= options_.max_pending_per_model) return Submit::kQueueFull;
    ++pending;
    in.request.id = next_id_++;
    if (ticket != nullptr) *ticket = static_cast<std::uint64_t>(in.request.id);
    // Filed before the engine can see the request, so its batch always finds it.
    if (in.payload && options_.tokens) options_.tokens->put(in.request.id, in.payload);
    inbox_.push_back(std::move(in));
  }
  backend_.wakeDispatch();
  return Submit::kAccepted;
}

ServingLoop::Submit ServingLoop::submit(CompletionRequest request, std::vector<std::int32_t> tokens, EmitFn emit,
                                        std::uint64_t* ticket) {
  Incoming in;
  in.request.model = request.model;
  in.request.prompt_tokens = static_cast<std::int32_t>(request.prompt.size());
  in.request.output_tokens = static_cast<std::int32_t>(request.max_tokens);
  in.tokens = std::move(tokens);
  in.emit = std::move(emit);
  if (options_.tokens) {
    auto payload = std::make_shared<runtime::RequestPayload>();
    payload->prompt = request.prompt;
    payload->temperature = request.temperature;
    payload->top_p = request.top_p;
    payload->top_k = request.top_k;
    payload->seed = request.seed;
    payload->stop_ids = request.stop_token_ids;
    const auto m = static_cast<std::size_t>(request.model);
    if (!request.ignore_eos && m < options_.eos_ids.size())
      payload->stop_ids.insert(payload->stop_ids.end(), options_.eos_ids[m].begin(), options_.eos_ids[m].end());
    in.payload = std::move(payload);
    in.tokens.clear();
  }
  return enqueue(std::move(in), ticket);
}

ServingLoop::Submit ServingLoop::requestLoad(ModelId model) {
  Incoming in;
  in.request.model = model;
  in.request.prompt_tokens = 1;
  in.request.output_tokens = 1;
  return enqueue(std::move(in), nullptr);
}

std::future<std::optional<std::string>> ServingLoop::requestEvict(ModelId model) {
  std::promise<std::optional<std::string>> answer;
  auto future = answer.get_future();
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    if (draining_.load()) {
      answer.set_value("the server is shutting down");
      return future;
    }
    evicts_.emplace_back(model, std::move(answer));
  }
  backend_.wakeDispatch();
  return future;
}

void ServingLoop::cancel(std::uint64_t ticket, bool served) {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    cancelled_.emplace_back(ticket, served);
  }
  backend_.wakeDispatch();
}

void ServingLoop::drain() {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    draining_.store(true);
  }
  backend_.wakeDispatch();
}

void ServingLoop::finished(ModelId model) {
  std::lock_guard<std::mutex> lock(inbox_mutex_);
  --pending_[static_cast<std::size_t>(model)];
}

void ServingLoop::onExecute(const ExecuteCommand& cmd) {
  const Nanos now = backend_.clock().now();
  runtime::PlaceholderTimes times;
  const bool predicted = static_cast<bool>(options_.predicted_times);
  if (predicted) times = options_.predicted_times(cmd);
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    metrics_[static_cast<std::size_t>(cmd.model)].batch_size.observe(static_cast<double>(cmd.requests.size()));
  }
  if (!predicted || options_.tokens) return;
  for (std::size_t i = 0; i < cmd.requests.size(); ++i) {
    auto it = active_.find(cmd.requests[i].id);
    if (it == active_.end()) continue;
    Active& a = it->second;
    a.timed = true;
    a.first = now + times.first_token;
    a.finish = now + (i < times.finish.size() ? std::max(times.finish[i], times.first_token) : times.first_token);
    if (a.sent + 1 < a.tokens.size()) timers_.emplace(tokenTime(a, a.sent), it->first);
  }
}

Nanos ServingLoop::tokenTime(const Active& a, std::size_t k) {
  const auto steps = static_cast<Nanos>(a.tokens.size() - 1);
  return a.first + (a.finish - a.first) * static_cast<Nanos>(k) / std::max<Nanos>(1, steps);
}

void ServingLoop::fireTokens(Nanos now) {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    const RequestId id = timers_.begin()->second;
    timers_.erase(timers_.begin());
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    Active& a = it->second;
    StreamEvent ev;
    while (a.sent + 1 < a.tokens.size() && tokenTime(a, a.sent) <= now) ev.tokens.push_back(a.tokens[a.sent++]);
    if (!ev.tokens.empty() && !a.cancelled && a.emit) a.emit(std::move(ev));
    if (a.sent + 1 < a.tokens.size()) timers_.emplace(tokenTime(a, a.sent), id);
  }
}

void ServingLoop::takeDelivered() {
  if (!options_.tokens) return;
  for (const runtime::TokenDelivery& d : options_.tokens->take()) {
    auto it = active_.find(d.request);
    if (it == active_.end()) continue;
    Active& a = it->second;
    if (a.stopped || static_cast<int>(a.tokens.size()) >= a.max_tokens) continue;
    a.tokens.push_back(d.token);
    a.stopped = d.stop;
    if (a.cancelled || !a.emit) {
      a.sent = a.tokens.size();
      continue;
    }
    StreamEvent ev;
    ev.tokens.push_back(d.token);
    a.sent = a.tokens.size();
    a.emit(std::move(ev));
  }
}

void ServingLoop::onRequestDone(const RequestRecord& record) {
  // The executor delivered every token of a batch before it reported the batch done.
  takeDelivered();
  auto it = active_.find(record.request.id);
  if (it == active_.end()) return;
  Active a = std::move(it->second);
  active_.erase(it);
  if (options_.tokens) options_.tokens->erase(record.request.id);
  if (!a.emit) ++answered_internal_;
  std::string outcome = record.ok ? "ok" : (record.rejected ? "rejected" : "error");
  if (a.cancelled && !(a.served && record.ok)) outcome = "cancelled";
  if (a.emit) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    ModelMetrics& m = metrics_[static_cast<std::size_t>(a.model)];
    ++m.requests[outcome];
    if (record.ok) {
      m.latency.observe(toSeconds(record.finish - record.request.arrival));
      m.ttft.observe(toSeconds(record.first_token - record.request.arrival));
      if (a.tokens.size() > 1)
        m.tpot.observe(toSeconds(record.finish - record.first_token) / static_cast<double>(a.tokens.size() - 1));
      m.tokens_generated += static_cast<std::int64_t>(a.tokens.size());
      m.prompt_tokens += record.request.prompt_tokens;
    }
  }
  finished(a.model);
  if (!a.emit || a.cancelled) return;
  if (record.ok) {
    StreamEvent rest;
    rest.tokens.assign(a.tokens.begin() + static_cast<std::ptrdiff_t>(a.sent), a.tokens.end());
    if (!rest.tokens.empty()) a.emit(std::move(rest));
    StreamEvent done;
    done.kind = StreamEvent::Kind::kDone;
    done.finish_reason = a.stopped ? "stop" : "length";
    done.engine_latency = record.finish - record.request.arrival;
    a.emit(std::move(done));
  } else {
    StreamEvent err;
    err.kind = StreamEvent::Kind::kError;
    // A model that lost a GPU (its rank died) stays unavailable: 503, not a server fault.
    const bool unavailable = engine_ != nullptr && !engine_->modelAvailable(record.request.model);
    err.error.status = record.rejected || unavailable ? 503 : 500;
    err.error.type = record.rejected ? "server_overloaded" : "server_error";
    if (unavailable) err.error.code = "model_unavailable";
    err.error.message = record.rejected ? "rejected by admission control: the request can no longer meet its SLO"
                                        : "the request failed: " + record.error;
    a.emit(std::move(err));
  }
}

void ServingLoop::onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) {
  std::lock_guard<std::mutex> lock(state_mutex_);
  ModelMetrics& m = metrics_[static_cast<std::size_t>(cmd.model)];
  if (ok) {
    m.bytes_loaded += cmd.bytes;
    m.load_seconds.observe(toSeconds(end - start));
  } else if (cmd.shard == 0) {
    ++m.load_failures;
  }
}

void ServingLoop::onEvict(const EvictCommand& cmd, Nanos /*start*/, Nanos /*end*/) {
  if (cmd.shard != 0) return;
  std::lock_guard<std::mutex> lock(state_mutex_);
  ++metrics_[static_cast<std::size_t>(cmd.model)].evictions;
}

void ServingLoop::onBatch(const ExecuteCommand& /*cmd*/, const BatchResult& /*result*/) {}

// A session's step starts: its sequences are the batch the metric counts.
void ServingLoop::onStepStart(const StepCommand& cmd) {
  std::lock_guard<std::mutex> lock(state_mutex_);
  metrics_[static_cast<std::size_t>(cmd.model)].batch_size.observe(
      static_cast<double>(cmd.prefill.empty() ? cmd.decode.size() : cmd.prefill.size()));
}

// A session's step ended: with the placeholder, each of its sequences has made token
// `generated` (its first, for a joiner's prefill), which goes out now; the last token still waits
// for the request's end (onRequestDone). Real execution streams from the TokenChannel instead.
void ServingLoop::onStep(const StepCommand& cmd, const StepResult& result) {
  if (!result.ok || options_.tokens) return;
  auto emitUpTo = [&](const StepSequence& s) {
    auto it = active_.find(s.request.id);
    if (it == active_.end()) return;
    Active& a = it->second;
    if (a.real || a.tokens.empty()) return;
    StreamEvent ev;
    const std::size_t upto = std::min(static_cast<std::size_t>(s.generated) + 1, a.tokens.size() - 1);
    while (a.sent < upto) ev.tokens.push_back(a.tokens[a.sent++]);
    if (!ev.tokens.empty() && !a.cancelled && a.emit) a.emit(std::move(ev));
  };
  for (const StepSequence& s : cmd.prefill) emitUpTo(s);
  for (const StepSequence& s : cmd.decode) emitUpTo(s);
}

void ServingLoop::publish(const Engine& engine) {
  std::vector<std::int64_t> pending;
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    pending = pending_;
  }
  std::lock_guard<std::mutex> lock(state_mutex_);
  for (std::size_t m = 0; m < status_.size(); ++m) {
    const ModelRuntimeState& s = engine.model(static_cast<ModelId>(m));
    status_[m].residency = s.residency;
    status_[m].queued = static_cast<std::int64_t>(s.queue.size());
    status_[m].pending = pending[m];
    status_[m].loads = s.loads;
    status_[m].unavailable = engine.unavailableReason(static_cast<ModelId>(m));
  }
  for (std::size_t g = 0; g < gpu_used_.size(); ++g) gpu_used_[g] = engine.gpuBytesUsed(static_cast<GpuId>(g));
}

std::vector<ModelStatus> ServingLoop::status() const {
  std::lock_guard<std::mutex> lock(state_mutex_);
  return status_;
}

void ServingLoop::countHttpResponse(int status) {
  std::lock_guard<std::mutex> lock(state_mutex_);
  ++http_responses_[status];
}

void ServingLoop::run() {
  if (options_.tokens) options_.tokens->setWake([this] { backend_.wakeDispatch(); });
  TimedBackend timed(backend_, *this);
  const runtime::SteadyClock& clock = backend_.clock();
  Engine engine(config_, timed, clock, this);
  engine_ = &engine;
  runtime::EngineListener listener(engine);
  std::deque<Incoming> incoming;
  std::vector<std::pair<std::uint64_t, bool>> cancelled;
  std::vector<std::pair<ModelId, std::promise<std::optional<std::string>>>> evicts;
  publish(engine);
  for (;;) {
    bool drained = false;
    {
      std::lock_guard<std::mutex> lock(inbox_mutex_);
      incoming.swap(inbox_);
      cancelled.swap(cancelled_);
      evicts.swap(evicts_);
      drained = draining_.load() && incoming.empty();
    }
    // A cancel finds its request in this batch of the inbox, or already in the engine.
    for (const auto& [ticket, served] : cancelled) {
      const auto id = static_cast<RequestId>(ticket);
      bool found = false;
      for (auto& in : incoming) {
        if (in.request.id == id && in.emit) {
          in.emit = nullptr;  // never reaches the engine
          found = true;
          {
            std::lock_guard<std::mutex> lock(state_mutex_);
            ++metrics_[static_cast<std::size_t>(in.request.model)].requests["cancelled"];
          }
          finished(in.request.model);
          if (options_.tokens) options_.tokens->erase(in.request.id);
          in.request.id = -1;
        }
      }
      if (!found) {
        auto it = active_.find(id);
        if (it != active_.end()) {
          it->second.cancelled = true;
          it->second.served = served;
          if (it->second.payload) it->second.payload->cancelled.store(true);
          // Still queued: it leaves the engine now (onRequestDone counts it cancelled); in a
          // batch already: it is served and nothing more is sent.
          engine.cancelQueued(it->second.model, id);
        }
      }
    }
    cancelled.clear();
    for (auto& in : incoming) {
      if (in.request.id < 0) continue;
      in.request.arrival = clock.now();
      Active a;
      a.model = in.request.model;
      a.real = static_cast<bool>(in.payload);
      a.payload = in.payload;
      a.max_tokens = in.request.output_tokens;
      a.tokens = std::move(in.tokens);
      a.emit = std::move(in.emit);
      active_.emplace(in.request.id, std::move(a));
      engine.onArrival(in.request);
    }
    incoming.clear();
    // Admin evicts after the arrivals of this round: a request that came first keeps its model.
    for (auto& [model, answer] : evicts) answer.set_value(engine.evictOnDemand(model));
    evicts.clear();
    const Nanos now = clock.now();
    if (auto wake = engine.nextWake(); wake && *wake <= now) {
      engine.onTimer();
      continue;
    }
    fireTokens(now);
    takeDelivered();
    publish(engine);
    if (drained && active_.empty() && engine.requestsInFlight() == 0 && backend_.idle()) {
      std::lock_guard<std::mutex> lock(inbox_mutex_);  // none can arrive once draining; answer any left
      for (auto& [model, answer] : evicts_) answer.set_value("the server is shutting down");
      evicts_.clear();
      break;
    }
    Nanos deadline = now + kNanosPerSecond;
    if (!timers_.empty()) deadline = std::min(deadline, timers_.begin()->first);
    if (auto wake = engine.nextWake()) deadline = std::min(deadline, *wake);
    backend_.dispatch(deadline, listener);
  }
  engine_ = nullptr;
  if (options_.tokens) options_.tokens->setWake(nullptr);
}

std::string ServingLoop::metricsText() const {
  std::lock_guard<std::mutex> lock(state_mutex_);
  std::string out;
  auto family = [&](const std::string& name, const std::string& type, const std::string& help) {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto label = [&](std::size_t m) { return "model=\"" + promLabel(config_.models[m].name) + "\""; };
  const std::size_t n = config_.models.size();
  family("computron_requests_total", "counter", "Requests answered, by model and outcome (ok, error, cancelled, rejected).");
  for (std::size_t m = 0; m < n; ++m) {
    for (const char* outcome : {"ok", "error", "cancelled", "rejected"}) {
      auto it = metrics_[m].requests.find(outcome);
      out += "computron_requests_total{" + label(m) + ",outcome=\"" + outcome + "\"} " +
             std::to_string(it == metrics_[m].requests.end() ? 0 : it->second) + "\n";
    }
  }
  family("computron_queue_length", "gauge", "Requests waiting in the engine's queue of the model.");
  for (std::size_t m = 0; m < n; ++m) out += "computron_queue_length{" + label(m) + "} " + std::to_string(status_[m].queued) + "\n";
  family("computron_requests_pending", "gauge", "Requests accepted by the server and not yet answered.");
  for (std::size_t m = 0; m < n; ++m)
    out += "computron_requests_pending{" + label(m) + "} " + std::to_string(status_[m].pending) + "\n";
  family("computron_model_residency", "gauge", "1 for the model's current residency state, 0 for the others.");
  for (std::size_t m = 0; m < n; ++m) {
    for (Residency r : {Residency::kOffloaded, Residency::kLoading, Residency::kResident, Residency::kEvicting}) {
      out += "computron_model_residency{" + label(m) + ",state=\"" + residencyName(r) + "\"} " +
             (status_[m].residency == r ? "1" : "0") + "\n";
    }
  }
  family("computron_model_loads_total", "counter", "Times the model was loaded onto its GPUs (swaps in).");
  for (std::size_t m = 0; m < n; ++m) out += "computron_model_loads_total{" + label(m) + "} " + std::to_string(status_[m].loads) + "\n";
  family("computron_model_load_failures_total", "counter", "Failed model loads.");
  for (std::size_t m = 0; m < n; ++m)
    out += "computron_model_load_failures_total{" + label(m) + "} " + std::to_string(metrics_[m].load_failures) + "\n";
  family("computron_model_evictions_total", "counter", "Times the model was evicted from its GPUs (swaps out).");
  for (std::size_t m = 0; m < n; ++m)
    out += "computron_model_evictions_total{" + label(m) + "} " + std::to_string(metrics_[m].evictions) + "\n";
  family("computron_loaded_bytes_total", "counter", "Weight bytes copied onto GPUs by successful shard loads.");
  for (std::size_t m = 0; m < n; ++m)
    out += "computron_loaded_bytes_total{" + label(m) + "} " + std::to_string(metrics_[m].bytes_loaded) + "\n";
  family("computron_generation_tokens_total", "counter", "Output tokens of requests served.");
  for (std::size_t m = 0; m < n; ++m)
    out += "computron_generation_tokens_total{" + label(m) + "} " + std::to_string(metrics_[m].tokens_generated) + "\n";
  family("computron_prompt_tokens_total", "counter", "Prompt tokens of requests served.");
  for (std::size_t m = 0; m < n; ++m)
    out += "computron_prompt_tokens_total{" + label(m) + "} " + std::to_string(metrics_[m].prompt_tokens) + "\n";
  family("computron_request_latency_seconds", "histogram", "Arrival at the engine to the last token.");
  for (std::size_t m = 0; m < n; ++m) metrics_[m].latency.write(out, "computron_request_latency_seconds", label(m));
  family("computron_time_to_first_token_seconds", "histogram", "Arrival at the engine to the first token.");
  for (std::size_t m = 0; m < n; ++m) metrics_[m].ttft.write(out, "computron_time_to_first_token_seconds", label(m));
  family("computron_time_per_output_token_seconds", "histogram", "First to last token over the tokens after the first.");
  for (std::size_t m = 0; m < n; ++m) metrics_[m].tpot.write(out, "computron_time_per_output_token_seconds", label(m));
  family("computron_shard_load_seconds", "histogram", "One shard's load, issue to done (checksum included).");
  for (std::size_t m = 0; m < n; ++m) metrics_[m].load_seconds.write(out, "computron_shard_load_seconds", label(m));
  family("computron_batch_size", "histogram", "Requests per batch started.");
  for (std::size_t m = 0; m < n; ++m) metrics_[m].batch_size.write(out, "computron_batch_size", label(m));
  family("computron_gpu_weight_bytes", "gauge", "Weight bytes held on the GPU (loading, resident or being evicted).");
  for (std::size_t g = 0; g < gpu_used_.size(); ++g)
    out += "computron_gpu_weight_bytes{gpu=\"" + std::to_string(g) + "\"} " + std::to_string(gpu_used_[g]) + "\n";
  family("computron_gpu_weight_budget_bytes", "gauge", "The GPU's weight budget from the scenario.");
  for (std::size_t g = 0; g < config_.gpu_weight_budget.size(); ++g)
    out += "computron_gpu_weight_budget_bytes{gpu=\"" + std::to_string(g) + "\"} " +
           std::to_string(config_.gpu_weight_budget[g]) + "\n";
  family("computron_http_responses_total", "counter", "HTTP responses sent, by status code.");
  for (const auto& [code, count] : http_responses_)
    out += "computron_http_responses_total{code=\"" + std::to_string(code) + "\"} " + std::to_string(count) + "\n";
  return out;
}

}  // namespace computron::server
