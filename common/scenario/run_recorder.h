// Turns what the engine reports into results: a short table on stdout, summary.json,
// requests.csv (one row a request, streamed) and timeline.json (Chrome trace, streamed), the same
// format from the simulator and from a real run so the two compare directly. Memory stays flat in
// the number of requests: latencies go into fixed-size log-bucket histograms, rows go to disk.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/core/engine.h"
#include "common/scenario/scenario.h"

namespace computron {

// Log-bucketed latency histogram: relative error under 0.5%, memory bounded by the range of
// values seen: counters come in blocks of one power of two each, allocated when a value first
// falls there (an empty histogram holds none), so a model that was never asked costs nothing.
class LatencyHistogram {
 public:
  LatencyHistogram();
  void add(Nanos value);
  // `count` samples of `value` at once: exactly as `count` calls of add(value), the mean and the
  // quantiles included (a count of 0 or less adds nothing).
  void add(Nanos value, std::int64_t count);
  std::int64_t count() const { return count_; }
  double mean() const;
  Nanos max() const { return max_; }
  Nanos quantile(double q) const;  // q in [0,1]

 private:
  static int bucketOf(Nanos v);
  static Nanos bucketValue(int b);
  void addToBlocks(int bucket, std::int64_t n);
  // Until kSparseLimit distinct buckets are used, (bucket, count) pairs in bucket order (a model
  // with few requests costs a few hundred bytes); then blocks: blocks_[0] holds the exact buckets
  // of values below 256 ns, blocks_[k] exponent k + 7, each empty until used.
  static constexpr std::size_t kSparseLimit = 32;
  std::vector<std::pair<int, std::int64_t>> sparse_;
  std::vector<std::vector<std::int64_t>> blocks_;
  bool dense_ = false;
  std::int64_t count_ = 0;
  long double sum_ = 0;
  Nanos max_ = 0;
};

class RunRecorder : public EngineObserver {
 public:
  // `backend_name` ("sim" or "cuda"/"host") is written into summary.json.
  RunRecorder(const Scenario& scenario, std::string backend_name);
  ~RunRecorder() override;

  void onRequestDone(const RequestRecord& record) override;
  void onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) override;
  void onEvict(const EvictCommand& cmd, Nanos start, Nanos end) override;
  void onBatch(const ExecuteCommand& cmd, const BatchResult& result) override;
  // Iteration batching: each step counts as busy time; the timeline draws one span per session
  // on each of its GPUs (its first step's start to its last step's end).
  void onStep(const StepCommand& cmd, const StepResult& result) override;
  void onTokenGaps(ModelId m, Nanos gap, std::int64_t count) override;
  // Extra timeline spans a backend wants drawn (e.g. per-path transfers): each on the track
  // named `track` (with further lanes where they overlap), on a process after the GPUs' ones;
  // written when the run finishes, tracks sorted by name.
  void addTimelineSpan(const std::string& track, const std::string& name, Nanos start, Nanos end,
                       const nlohmann::json& args = nlohmann::json::object());

  // Closes the files and writes summary.json; `end` is the time the run ended; `extra` members
  // are merged into the summary.
  nlohmann::json finish(Nanos end, const nlohmann::json& extra = nlohmann::json::object());
  void printTable(const nlohmann::json& summary, std::ostream& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace computron
