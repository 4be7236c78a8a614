// Request streams: generated (Poisson / Gamma per model, Zipf skew), trace replay (Azure CSV,
// Mooncake JSONL, our own CSV), closed-loop alternation for the swap test, and a writer so a
// generated workload can be saved and replayed. Streams are pulled one request at a time so a
// simulation of millions of requests holds only the next arrival of each model in memory.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "common/json_reader.h"
#include "common/types.h"

namespace computron {

struct Request {
  RequestId id = 0;
  ModelId model = 0;
  Nanos arrival = 0;
  std::int32_t prompt_tokens = 1;
  std::int32_t output_tokens = 1;

  friend bool operator==(const Request&, const Request&) = default;
};

// A time-ordered stream of requests.
class RequestSource {
 public:
  virtual ~RequestSource() = default;
  // The next request in arrival order, or nullopt when none is available now: either the stream
  // is exhausted (see exhausted()) or, for closed-loop sources, it waits for a completion.
  virtual std::optional<Request> next() = 0;
  virtual bool exhausted() const = 0;
  // Closed-loop sources issue the next request when one finishes; open-loop sources ignore this.
  virtual void onRequestDone(const Request& /*request*/, Nanos /*finish*/) {}
};

// Seeded random generator used everywhere: splitmix-seeded mt19937_64 so streams are stable
// across platforms (std distributions are not, so we draw through our own helpers below).
class Rng {
 public:
  explicit Rng(std::uint64_t seed);
  std::uint64_t nextU64() { return engine_(); }
  double uniform01();                 // in (0, 1)
  double exponential(double rate);    // mean 1/rate
  double gamma(double shape, double scale);  // Marsaglia-Tsang
  double normal();
  std::int64_t uniformInt(std::int64_t lo, std::int64_t hi);  // inclusive
  // Derives an independent stream for a sub-component (e.g. per model).
  static std::uint64_t derive(std::uint64_t seed, std::uint64_t stream);

 private:
  std::mt19937_64 engine_;
};

// Token-count distribution: fixed, uniform [min,max], lognormal (mean, cv) clipped to [min,max].
struct TokenDist {
  enum class Kind { kFixed, kUniform, kLognormal } kind = Kind::kFixed;
  double value = 1, min = 1, max = 1, mean = 1, cv = 0;
  std::int32_t sample(Rng& rng) const;
  static TokenDist fromJson(const JsonReader& node);  // {"dist":"fixed","value":N} or a bare integer
  nlohmann::json toJson() const;
};

// Shares of models 0..count-1 under Zipf popularity: share[i] proportional to 1/(i+1)^alpha,
// summing to 1. alpha 0 is an equal split.
std::vector<double> zipfShares(std::size_t count, double alpha);

// Builds the request stream described by a scenario's "workload" object.
//   models:    model names in scenario order (ModelId = index)
//   duration:  generated streams stop at this time (traces: rows past it are dropped; 0 = no cap)
//   base_dir:  relative trace paths resolve against this folder (the scenario's folder)
std::unique_ptr<RequestSource> makeWorkload(const JsonReader& workload, const std::vector<std::string>& models,
                                            std::uint64_t seed, Nanos duration, const std::string& base_dir);

// Refuses (ConfigError) a generated workload that would not end, or not in bounded time: one
// without a duration, or expecting more than 10^8 requests (rate x duration). Scenario
// validation calls it; makeWorkload itself also builds endless streams (for tests and tools).
void checkWorkloadEnds(const JsonReader& workload, std::size_t model_count, Nanos duration);

// Writes a stream as our replayable CSV: `id,model,arrival_ns,prompt_tokens,output_tokens`, the
// model as its name. Returns the number of rows written. makeWorkload reads it back with
// {"type":"trace","format":"computron"}. Pulls until the source is exhausted (so the stream needs a
// duration); a closed-loop source, or a model name unfit for CSV, throws ConfigError.
std::int64_t writeWorkloadCsv(RequestSource& source, const std::vector<std::string>& models, std::ostream& out);

}  // namespace computron
