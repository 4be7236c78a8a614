#include "runtime/realtime_driver.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace computron::runtime {

class RealtimeDriver::Listener final : public BackendListener {
 public:
  Listener(Engine& engine, BackendListener* layers) : engine_(engine), layers_(layers) {}
  void loadDone(OpId op, bool ok, const std::string& error) override { engine_.onLoadDone(op, ok, error); }
  void evictDone(OpId op) override { engine_.onEvictDone(op); }
  void batchDone(const BatchResult& result) override { engine_.onBatchDone(result); }
  void stepDone(const StepResult& result) override { engine_.onStepDone(result); }
  void gpuLost(GpuId gpu, const std::string& reason) override { engine_.onGpuLost(gpu, reason); }
  void layerReady(const LayerReady& ready) override {
    if (layers_ != nullptr) layers_->layerReady(ready);
  }

 private:
  Engine& engine_;
  BackendListener* layers_;
};

RealtimeDriver::RealtimeDriver(RealBackend& backend, EngineConfig config, std::unique_ptr<RequestSource> source,
                               EngineObserver* downstream, Nanos time_limit, BackendListener* layers)
    : backend_(backend), source_(std::move(source)), downstream_(downstream), layers_(layers),
      time_limit_(time_limit), engine_(std::move(config), backend, backend.clock(), this) {}

void RealtimeDriver::pullNext() {
  if (!next_ && !stopping_) next_ = source_->next();
}

void RealtimeDriver::onRequestDone(const RequestRecord& record) {
  ++stats_.completed;
  if (downstream_ != nullptr) downstream_->onRequestDone(record);
  source_->onRequestDone(record.request, record.finish);
  pullNext();
}
void RealtimeDriver::onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) {
  if (downstream_ != nullptr) downstream_->onLoad(cmd, start, end, ok);
}
void RealtimeDriver::onEvict(const EvictCommand& cmd, Nanos start, Nanos end) {
  if (downstream_ != nullptr) downstream_->onEvict(cmd, start, end);
}
void RealtimeDriver::onBatch(const ExecuteCommand& cmd, const BatchResult& result) {
  if (downstream_ != nullptr) downstream_->onBatch(cmd, result);
}
void RealtimeDriver::onStep(const StepCommand& cmd, const StepResult& result) {
  if (downstream_ != nullptr) downstream_->onStep(cmd, result);
}
void RealtimeDriver::onTokenGaps(ModelId m, Nanos gap, std::int64_t count) {
  if (downstream_ != nullptr) downstream_->onTokenGaps(m, gap, count);
}

DriverStats RealtimeDriver::run() {
  Listener listener(engine_, layers_);
  backend_.restartClock();  // request arrival times count from here
  const SteadyClock& clock = backend_.clock();
  pullNext();
  for (;;) {
    const Nanos now = clock.now();
    if (stop_ && !stopping_ && stop_()) {
      stopping_ = true;  // no more arrivals; what was admitted drains
      next_.reset();
    }
    if (!next_ && (stopping_ || source_->exhausted()) && engine_.requestsInFlight() == 0 && backend_.idle()) break;
    // Before the arrivals and wake-ups: while they keep coming the run still stops at its limit.
    if (now > time_limit_) {
      throw std::runtime_error("replay: not finished after " + std::to_string(toSeconds(time_limit_)) + " s (" +
                               std::to_string(engine_.requestsInFlight()) + " requests in flight)");
    }
    if (next_ && next_->arrival <= now) {
      Request r = *next_;
      next_.reset();
      ++stats_.arrivals;
      engine_.onArrival(r);
      pullNext();
      continue;
    }
    if (auto wake = engine_.nextWake(); wake && *wake <= now) {
      engine_.onTimer();  // a batch due to start behind its model's load
      continue;
    }
    // Wait for a completion, but no longer than the next arrival, the engine's wake-up or the time limit.
    Nanos deadline = next_ ? next_->arrival : time_limit_ + kNanosPerMilli;
    if (auto wake = engine_.nextWake()) deadline = std::min(deadline, *wake);
    if (stop_ && !stopping_) deadline = std::min(deadline, now + kStopCheckInterval);
    backend_.dispatch(deadline, listener);
  }
  stats_.end_time = clock.now();
  return stats_;
}

}  // namespace computron::runtime
