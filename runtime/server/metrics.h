// The server's Prometheus metrics: counters, gauges and histograms recorded on the engine's thread
// and written in the Prometheus text format (version 0.0.4) by whichever HTTP thread serves
// GET /metrics. Every name starts with `computron_`; docs/serving.md lists them.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace computron::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds = defaultSecondsBounds());
  void observe(double value);
  // Writes name_bucket{labels,le=...}, name_sum and name_count; `labels` without braces.
  void write(std::string& out, const std::string& name, const std::string& labels) const;
  std::int64_t count() const { return count_; }
  // 1 ms .. 60 s, roughly doubling.
  static std::vector<double> defaultSecondsBounds();

 private:
  std::vector<double> bounds_;
  std::vector<std::int64_t> counts_;  // per bucket (not cumulative); last is +Inf
  double sum_ = 0;
  std::int64_t count_ = 0;
};

// What /metrics shows of one model; the server keeps one per model, by index.
struct ModelMetrics {
  std::map<std::string, std::int64_t> requests;  // outcome -> count (ok, error, cancelled, rejected)
  std::int64_t loads = 0;                        // swaps in (one per model load, all shards)
  std::int64_t load_failures = 0;
  std::int64_t evictions = 0;
  std::int64_t bytes_loaded = 0;
  std::int64_t tokens_generated = 0;
  std::int64_t prompt_tokens = 0;
  Histogram latency;      // arrival to last token
  Histogram ttft;         // arrival to first token
  Histogram tpot;         // (last - first token) / (tokens - 1)
  Histogram load_seconds; // per shard load, issue to done
  Histogram batch_size{{1, 2, 4, 8, 16, 32, 64, 128, 256}};
};

// Label value escaping for the text format (backslash, quote, newline).
std::string promLabel(const std::string& value);

}  // namespace computron::server
