// Helpers for simulator tests that look at the engine's reports: a recorder of requests and loads,
// and a run with the engine's invariants checked after every event.
#pragma once

#include <map>
#include <utility>
#include <vector>

#include "common/core/engine.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"

namespace computron::testing {

// Each request's record by id, and each model's successful shard loads (start, end) in order.
class LoadRecorder : public EngineObserver {
 public:
  void onRequestDone(const RequestRecord& record) override { requests[record.request.id] = record; }
  void onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) override {
    if (ok) loads[cmd.model].push_back({start, end});
  }
  std::map<RequestId, RequestRecord> requests;
  std::map<ModelId, std::vector<std::pair<Nanos, Nanos>>> loads;
};

// Simulates `s`, reporting to `observer`, with Engine::checkInvariants after every event.
inline sim::SimStats simulateObserved(const Scenario& s, EngineObserver& observer) {
  sim::SimOptions options;
  options.check_invariants = true;
  sim::Simulation simulation(s.cluster, s.engine, s.makeWorkload(), &observer, options);
  return simulation.run();
}

}  // namespace computron::testing
