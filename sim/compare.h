// computron compare A B: the relative error between two runs' outputs (summary.json, requests.csv,
// timeline.json), per model and overall, e.g. a GPU replay (A, the reference) against the
// simulator (B) on the same scenario.
//
// The command is compareMain; the pieces below it are pure functions over a run's files, so tests
// call them directly: reading a run (readRun), the statistics (percentile, ksDistance,
// relativeError), the comparison (compareRuns), thresholds (parseMaxError, exceededLimits) and the
// two renderings (compareJson, compareTable). Everything is deterministic: the same folders give
// byte-identical output.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/types.h"

namespace computron::sim {

int compareMain(int argc, char** argv);  // argv[0] is "compare"

// A run's files that cannot be read as computron outputs; the message names the file and the
// field or line. The command exits 2 with it.
class CompareInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A sum and count of durations, for a mean.
struct DurationMean {
  long double sum = 0;  // ns; long double so that millions of long spans cannot overflow
  std::int64_t count = 0;
  void add(Nanos d) {
    sum += static_cast<long double>(d);
    ++count;
  }
  void add(const DurationMean& o) {
    sum += o.sum;
    count += o.count;
  }
  std::optional<double> meanMillis() const;  // nullopt when empty
};

// What one model (or the union of the compared models) did in one run.
struct ModelSamples {
  std::vector<Nanos> latency;  // served requests (ok = 1) of requests.csv, in file order
  std::vector<Nanos> ttft;     // first_token_s - arrival_s of the same requests
  std::int64_t swaps = 0;      // summary.json `swaps` (load episodes)
  DurationMean shard_loads;    // timeline.json spans of cat "load" with ok true, one per shard
  DurationMean batches;        // timeline.json spans of cat "batch" with ok true, once per batch id
  DurationMean steps;          // iteration batching: the steps of "session" spans (args steps, steps_us)
  void add(const ModelSamples& o);
};

struct RunData {
  std::filesystem::path dir;
  std::string scenario, backend;    // from summary.json ("" when absent)
  std::vector<std::string> models;  // summary.json's order
  std::map<std::string, ModelSamples> samples;  // by model name
  bool has_ttft = false;      // requests.csv has arrival_s and first_token_s
  bool has_timeline = false;  // timeline.json exists (and was read)
};

// Reads summary.json and requests.csv (both required) and timeline.json (optional) of `dir`.
// Throws CompareInputError naming the file and the field or line.
RunData readRun(const std::filesystem::path& dir);

// Seconds as written in requests.csv ("12.345678901", also "-1", "1e-3") to nanoseconds, exactly
// for up to nine decimals; nullopt when `text` is not a number.
std::optional<Nanos> parseSecondsText(const std::string& text);

// Nearest-rank percentile of ascending `sorted` (q in [0,1]): the ceil(q * n)-th smallest value,
// as in summary.json. Requires a non-empty vector.
Nanos percentile(const std::vector<Nanos>& sorted, double q);

// The two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)| of the empirical
// distributions, exact (ties handled). Both samples must be non-empty.
double ksDistance(std::vector<Nanos> a, std::vector<Nanos> b);

// (b - a) / a. When a is 0: nullopt ("n/a") if b is 0 too, +-infinity otherwise.
std::optional<double> relativeError(double a, double b);

// The metrics, in report order. Latencies and durations in milliseconds; swaps a count; ks has
// the sample sizes (served requests) as a and b and the distance as its error.
enum class Metric { kMean, kP50, kP90, kP99, kTtft, kSwaps, kLoad, kBatch, kStep, kKs };
constexpr Metric kAllMetrics[] = {Metric::kMean, Metric::kP50,  Metric::kP90,   Metric::kP99,  Metric::kTtft,
                                  Metric::kSwaps, Metric::kLoad, Metric::kBatch, Metric::kStep, Metric::kKs};
const char* metricName(Metric m);  // "mean", ..., the key in --max-error and in the JSON
std::optional<Metric> metricFromName(const std::string& name);

struct MetricComparison {
  Metric metric = Metric::kMean;
  bool available = true;      // false: the files do not carry it (no timeline, no first_token_s)
  std::optional<double> a, b;  // nullopt: no sample on that side (no served request, no load)
  std::optional<double> error;  // relative error (ks: the distance); nullopt: n/a
  // One side has samples and the other none (served requests, loads, batches): a mismatch that
  // fails any limit on the metric.
  bool one_sided = false;
};

struct ModelComparison {
  std::string name;  // "all" for the overall line
  std::vector<MetricComparison> metrics;  // kAllMetrics' order
  const MetricComparison& at(Metric m) const;
};

struct Comparison {
  std::filesystem::path a_dir, b_dir;
  std::string a_scenario, b_scenario, a_backend, b_backend;
  std::vector<ModelComparison> models;  // the models both runs have, in A's order
  ModelComparison overall;              // over those models only
  std::vector<std::string> notes;       // metrics skipped because the files do not carry them
  std::vector<std::string> warnings;    // models only one run has, different scenarios
};

ModelComparison compareSamples(const std::string& name, const ModelSamples& a, const ModelSamples& b, bool ttft,
                               bool timeline);
Comparison compareRuns(const RunData& a, const RunData& b);

// --max-error "mean=5%,p99=10%,swaps=1,ks=0.1": relative metrics (mean, p50, p90, p99, ttft, load,
// batch) in percent ("5%" or "5"), stored as fractions (0.05); swaps an absolute count difference;
// ks an absolute distance in [0, 1]. Throws std::invalid_argument with a message for the user.
std::map<Metric, double> parseMaxError(const std::string& spec);

// The limits `limits` that `c` exceeds, one readable line each ("opt-13b: p99 error +12.30%
// exceeds 10%"); the overall line always, each model's unless `overall_only`. A metric the files
// do not carry is skipped (see skippedLimits); an error of n/a (both sides zero or empty) passes.
std::vector<std::string> exceededLimits(const Comparison& c, const std::map<Metric, double>& limits, bool overall_only);
// Limits on metrics the files do not carry: one warning line each.
std::vector<std::string> skippedLimits(const Comparison& c, const std::map<Metric, double>& limits);

nlohmann::ordered_json compareJson(const Comparison& c, const std::map<Metric, double>& limits, bool overall_only,
                           const std::vector<std::string>& exceeded);
std::string compareTable(const Comparison& c, const std::map<Metric, double>& limits, bool overall_only);

}  // namespace computron::sim
