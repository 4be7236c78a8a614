// Fakes for driving the scheduling core by hand in tests: a backend that records the commands it
// is given (the test delivers completions itself), a clock the test moves, and an observer that
// keeps every finished request.
#pragma once

#include <string>
#include <vector>

#include "common/core/backend.h"
#include "common/core/engine.h"

namespace computron::fakes {

// A request of `prompt` + `output` tokens (1 + 1 unless given).
inline Request makeRequest(RequestId id, ModelId model, Nanos arrival, std::int32_t prompt = 1, std::int32_t output = 1) {
  Request r;
  r.id = id;
  r.model = model;
  r.arrival = arrival;
  r.prompt_tokens = prompt;
  r.output_tokens = output;
  return r;
}

// A batch that ran from `start` and ended every request at `end`.
inline BatchResult batchDoneAt(const ExecuteCommand& cmd, Nanos start, Nanos end) {
  BatchResult r;
  r.batch = cmd.batch;
  r.start = start;
  r.first_token = end;
  r.finish.assign(cmd.requests.size(), end);
  return r;
}

// Records commands, in order, both as values and as one readable log line each
// ("load M/S", "evict M/S", "run M xN", "step M prefill xN" / "step M decode xN").
class RecordingBackend : public Backend {
 public:
  void load(const LoadCommand& cmd) override {
    log.push_back("load " + std::to_string(cmd.model) + "/" + std::to_string(cmd.shard));
    loads.push_back(cmd);
  }
  void evict(const EvictCommand& cmd) override {
    log.push_back("evict " + std::to_string(cmd.model) + "/" + std::to_string(cmd.shard));
    evicts.push_back(cmd);
  }
  void execute(const ExecuteCommand& cmd) override {
    log.push_back("run " + std::to_string(cmd.model) + " x" + std::to_string(cmd.requests.size()));
    runs.push_back(cmd);
  }
  bool supportsSteps() const override { return true; }
  void step(const StepCommand& cmd) override {
    log.push_back("step " + std::to_string(cmd.model) + (cmd.prefill.empty() ? " decode x" + std::to_string(cmd.decode.size())
                                                                              : " prefill x" + std::to_string(cmd.prefill.size())));
    steps.push_back(cmd);
  }
  std::vector<std::string> log;
  std::vector<StepCommand> steps;
  std::vector<LoadCommand> loads;
  std::vector<EvictCommand> evicts;
  std::vector<ExecuteCommand> runs;
};

// Time moves only when the test sets `t`.
class ManualClock : public Clock {
 public:
  Nanos now() const override { return t; }
  Nanos t = 0;
};

// Keeps every finished request's record, in completion order.
class RecordCollector : public EngineObserver {
 public:
  void onRequestDone(const RequestRecord& record) override { records.push_back(record); }
  std::vector<RequestRecord> records;
};

}  // namespace computron::fakes
