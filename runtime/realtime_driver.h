// Drives the scheduling core in real time over a RealBackend: delivers each request when the
// clock reaches its arrival, and between arrivals blocks on the backend's completion queue (a
// condition-variable wait with the next arrival as deadline, no polling), so every engine call
// happens on this one thread.
#pragma once

#include <functional>
#include <memory>
#include <optional>

#include "common/core/engine.h"
#include "common/workload.h"
#include "runtime/real_backend.h"

namespace computron::runtime {

struct DriverStats {
  std::int64_t arrivals = 0;
  std::int64_t completed = 0;
  Nanos end_time = 0;
};

class RealtimeDriver final : public EngineObserver {
 public:
  // `downstream` (may be null) receives every engine report; `layers` (may be null) receives
  // layer readiness. The run fails (std::runtime_error) if it lasts longer than `time_limit`.
  RealtimeDriver(RealBackend& backend, EngineConfig config, std::unique_ptr<RequestSource> source,
                 EngineObserver* downstream, Nanos time_limit, BackendListener* layers = nullptr);

  // `stop` (checked between events, at least every kStopCheckInterval): once it returns true no
  // further request arrives (the next one pulled from the source is dropped, uncounted) and the
  // run drains what was admitted. For SIGINT/SIGTERM (common/scenario/interrupt.h's
  // stopRequested); a signal handler cannot wake the completion queue, hence the bounded wait.
  void stopWhen(std::function<bool()> stop) { stop_ = std::move(stop); }
  static constexpr Nanos kStopCheckInterval = 50 * kNanosPerMilli;

  DriverStats run();
  Engine& engine() { return engine_; }

  void onRequestDone(const RequestRecord& record) override;
  void onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) override;
  void onEvict(const EvictCommand& cmd, Nanos start, Nanos end) override;
  void onBatch(const ExecuteCommand& cmd, const BatchResult& result) override;
  void onTokenGaps(ModelId m, Nanos gap, std::int64_t count) override;
  void onStep(const StepCommand& cmd, const StepResult& result) override;

 private:
  class Listener;
  void pullNext();

  RealBackend& backend_;
  std::unique_ptr<RequestSource> source_;
  EngineObserver* downstream_;
  BackendListener* layers_;
  Nanos time_limit_;
  Engine engine_;
  std::optional<Request> next_;
  std::function<bool()> stop_;
  bool stopping_ = false;
  DriverStats stats_;
};

}  // namespace computron::runtime
