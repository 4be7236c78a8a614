#include "common/workload.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <limits>
#include <queue>
#include <sstream>
#include <utility>

#include "common/trace_readers.h"

namespace computron {

// ---------------------------------------------------------------------------------------------
// Random numbers. Only the raw mt19937_64 output is used (its sequence is fixed by the C++
// standard); every distribution is computed here so a seed gives the same stream everywhere.

namespace {

constexpr std::uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ULL;

// The splitmix64 output function: a bijection that scatters nearby inputs.
std::uint64_t splitmix64Mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

Rng::Rng(std::uint64_t seed) : engine_(splitmix64Mix(seed)) {}

std::uint64_t Rng::derive(std::uint64_t seed, std::uint64_t stream) {
  // Output number stream+1 of a splitmix64 generator started at `seed`.
  return splitmix64Mix(seed + kGoldenGamma * (stream + 1));
}

double Rng::uniform01() {
  // 53 random bits, centred in their interval so that neither 0 nor 1 can come out.
  return (static_cast<double>(nextU64() >> 11) + 0.5) * 0x1.0p-53;
}

double Rng::exponential(double rate) { return -std::log(uniform01()) / rate; }

double Rng::normal() {
  // Marsaglia's polar method: needs only log and sqrt, no trigonometry.
  while (true) {
    const double u = 2 * uniform01() - 1;
    const double v = 2 * uniform01() - 1;
    const double s = u * u + v * v;
    if (s > 0 && s < 1) return u * std::sqrt(-2 * std::log(s) / s);
  }
}

double Rng::gamma(double shape, double scale) {
  if (shape < 1) {
    // Gamma(k) = Gamma(k + 1) * U^(1/k) (Marsaglia and Tsang's boost for small shapes).
    const double boosted = gamma(shape + 1, scale);
    const double u = uniform01();
    return boosted * std::exp(std::log(u) / shape);
  }
  // Marsaglia and Tsang (2000), "A simple method for generating gamma variables".
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9 * d);
  while (true) {
    double x = 0, v = 0;
    do {
      x = normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = uniform01();
    if (u < 1 - 0.0331 * (x * x) * (x * x)) return d * v * scale;
    if (std::log(u) < 0.5 * x * x + d * (1 - v + std::log(v))) return d * v * scale;
  }
}

std::int64_t Rng::uniformInt(std::int64_t lo, std::int64_t hi) {
  const std::uint64_t span = static_cast<std::uint64_t>(hi) - static_cast<std::uint64_t>(lo) + 1;
  if (span == 0) return static_cast<std::int64_t>(nextU64());  // the whole 64-bit range
  // Reject the low 2^64 mod span values so every residue is equally likely.
  const std::uint64_t threshold = (0 - span) % span;
  std::uint64_t x = nextU64();
  while (x < threshold) x = nextU64();
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(lo) + x % span);
}

std::vector<double> zipfShares(std::size_t count, double alpha) {
  std::vector<double> shares(count);
  double total = 0;
  for (std::size_t i = 0; i < count; ++i) total += shares[i] = std::pow(static_cast<double>(i + 1), -alpha);
  for (double& share : shares) share /= total;
  return shares;
}

// ---------------------------------------------------------------------------------------------
// Validation helpers: each names the offending value's JSON path.

namespace {

// Bounds (docs/scenario.md): generous for real workloads, small enough that a run ends and
// every time stays far inside int64 nanoseconds.
constexpr double kMaxRate = 1e6;                 // requests/s, per model and in total
constexpr double kMaxCv = 100;                   // of inter-arrival gaps and lognormal token counts
constexpr double kMaxZipfAlpha = 100;
constexpr double kMaxExpectedRequests = 1e8;     // total rate x duration of a generated workload
constexpr std::int64_t kMaxRequestCount = 1'000'000'000;  // alternating requests, trace max_requests
constexpr double kMaxTimeScale = 1e6;

std::string formatBound(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

double positiveNumber(const JsonReader& node, double max) {
  const double value = node.asDouble();
  if (!(value > 0)) node.fail("must be greater than 0");
  if (value > max) node.fail("must be at most " + formatBound(max));
  return value;
}

double nonNegativeNumber(const JsonReader& node, double max) {
  const double value = node.asDouble();
  if (value < 0) node.fail("must not be negative");
  if (value > max) node.fail("must be at most " + formatBound(max));
  return value;
}

std::int64_t nonNegativeInt(const JsonReader& node, std::int64_t max) { return node.asIntIn(0, max); }

std::int32_t tokenCount(const JsonReader& node) {
  const std::int64_t value = node.asInt();
  if (value < 1) node.fail("must be at least 1");
  if (value > kMaxRequestTokens) node.fail("must be at most " + std::to_string(kMaxRequestTokens));
  return static_cast<std::int32_t>(value);
}

// Shortest readable form for messages: 10, 0.875, 3.0000002.
std::string formatNumber(double value) {
  std::ostringstream out;
  out << std::setprecision(15) << value;
  return out.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Token counts.

std::int32_t TokenDist::sample(Rng& rng) const {
  switch (kind) {
    case Kind::kFixed:
      return static_cast<std::int32_t>(value);
    case Kind::kUniform:
      return static_cast<std::int32_t>(rng.uniformInt(static_cast<std::int64_t>(min), static_cast<std::int64_t>(max)));
    case Kind::kLognormal: {
      // exp(N(mu, sigma^2)) has mean exp(mu + sigma^2/2) and CV sqrt(exp(sigma^2) - 1).
      const double sigma2 = std::log1p(cv * cv);
      const double mu = std::log(mean) - sigma2 / 2;
      const double x = std::exp(mu + std::sqrt(sigma2) * rng.normal());
      if (std::isnan(x)) return static_cast<std::int32_t>(min);  // never with the bounded cv; kept as a floor
      return static_cast<std::int32_t>(std::llround(std::clamp(x, min, max)));
    }
  }
  return 1;
}

TokenDist TokenDist::fromJson(const JsonReader& node) {
  TokenDist dist;
  if (node.isNumber()) {
    dist.value = dist.min = dist.max = tokenCount(node);
    return dist;
  }
  if (!node.isObject())
    node.fail("expected a token count or an object such as {\"dist\":\"uniform\",\"min\":16,\"max\":512}");
  const std::string name = node.requireString("dist");
  if (name == "fixed") {
    node.expectObject({"dist", "value"});
    dist.value = dist.min = dist.max = tokenCount(node.at("value"));
  } else if (name == "uniform") {
    node.expectObject({"dist", "min", "max"});
    dist.kind = Kind::kUniform;
    dist.min = tokenCount(node.at("min"));
    dist.max = tokenCount(node.at("max"));
  } else if (name == "lognormal") {
    node.expectObject({"dist", "mean", "cv", "min", "max"});
    dist.kind = Kind::kLognormal;
    dist.mean = positiveNumber(node.at("mean"), static_cast<double>(kMaxRequestTokens));
    dist.cv = nonNegativeNumber(node.at("cv"), kMaxCv);
    dist.min = node.has("min") ? tokenCount(node.at("min")) : 1;
    dist.max = node.has("max") ? tokenCount(node.at("max")) : static_cast<double>(kMaxRequestTokens);
  } else {
    node.at("dist").fail("unknown distribution '" + name + "' (allowed: fixed, uniform, lognormal)");
  }
  if (dist.max < dist.min) node.at("max").fail("must be at least min (" + formatNumber(dist.min) + ")");
  return dist;
}

nlohmann::json TokenDist::toJson() const {
  auto integer = [](double v) { return static_cast<std::int64_t>(v); };
  switch (kind) {
    case Kind::kFixed:
      return {{"dist", "fixed"}, {"value", integer(value)}};
    case Kind::kUniform:
      return {{"dist", "uniform"}, {"min", integer(min)}, {"max", integer(max)}};
    case Kind::kLognormal:
      return {{"dist", "lognormal"}, {"mean", mean}, {"cv", cv}, {"min", integer(min)}, {"max", integer(max)}};
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Sources.

namespace {

// Sub-streams of the scenario seed: each kind of random choice has its own generator, so
// changing one (say, the prompt distribution) leaves the others' draws as they were.
enum SeedStream : std::uint64_t { kArrivalStream = 1, kTokenStream = 2, kAssignStream = 3 };

Rng modelRng(std::uint64_t seed, SeedStream stream, ModelId model) {
  return Rng(Rng::derive(Rng::derive(seed, stream), static_cast<std::uint64_t>(model)));
}

bool pastDuration(Nanos t, Nanos duration) { return duration > 0 && t >= duration; }

// Open-loop Poisson or Gamma arrivals, one independent renewal process per model. Only the next
// arrival of each model is held, so memory does not grow with the number of requests.
class GeneratedSource final : public RequestSource {
 public:
  GeneratedSource(const std::vector<double>& rates, double cv, TokenDist prompt, TokenDist output, std::uint64_t seed,
                  Nanos duration)
      : prompt_(prompt), output_(output), duration_(duration) {
    models_.reserve(rates.size());  // two generator states each (5 KB): no copies while growing
    for (std::size_t m = 0; m < rates.size(); ++m) {
      const auto model = static_cast<ModelId>(m);
      models_.push_back({modelRng(seed, kArrivalStream, model), modelRng(seed, kTokenStream, model), rates[m], cv});
      scheduleNext(model);
    }
  }

  std::optional<Request> next() override {
    if (pending_.empty()) return std::nullopt;
    const auto [arrival, model] = pending_.top();
    pending_.pop();
    ModelStream& stream = models_[static_cast<std::size_t>(model)];
    Request request;
    request.id = next_id_++;
    request.model = model;
    request.arrival = arrival;
    request.prompt_tokens = prompt_.sample(stream.tokens);
    request.output_tokens = output_.sample(stream.tokens);
    scheduleNext(model);
    return request;
  }

  bool exhausted() const override { return pending_.empty(); }

 private:
  struct ModelStream {
    Rng arrivals;
    Rng tokens;
    double rate;  // requests per second
    double cv;    // of the inter-arrival gaps; 1 is Poisson
    double clock_s = 0;

    double nextGap() {
      if (cv == 1) return arrivals.exponential(rate);
      // Gamma with shape k = 1/CV^2 and scale theta = CV^2/rate: mean k*theta = 1/rate, CV 1/sqrt(k).
      return arrivals.gamma(1 / (cv * cv), cv * cv / rate);
    }
  };

  void scheduleNext(ModelId model) {
    ModelStream& stream = models_[static_cast<std::size_t>(model)];
    stream.clock_s += stream.nextGap();  // kept in seconds so rounding errors do not accumulate
    const Nanos arrival = secondsToNanos(stream.clock_s);
    if (!pastDuration(arrival, duration_)) pending_.emplace(arrival, model);
  }

  TokenDist prompt_, output_;
  Nanos duration_;
  std::vector<ModelStream> models_;
  // Earliest (arrival, model) first, so simultaneous arrivals come out in model order.
  std::priority_queue<std::pair<Nanos, ModelId>, std::vector<std::pair<Nanos, ModelId>>, std::greater<>> pending_;
  RequestId next_id_ = 0;
};

// A replayed trace, fully prepared in memory (traces are small).
class TraceSource final : public RequestSource {
 public:
  explicit TraceSource(std::vector<Request> requests) : requests_(std::move(requests)) {}

  std::optional<Request> next() override {
    if (exhausted()) return std::nullopt;
    return requests_[next_++];
  }
  bool exhausted() const override { return next_ == requests_.size(); }

 private:
  std::vector<Request> requests_;
  std::size_t next_ = 0;
};

// The seed paper's swap test: request i goes to model i % models, and is issued only once the
// request before it has finished (plus a think time), so exactly one request is ever in flight.
class AlternatingSource final : public RequestSource {
 public:
  AlternatingSource(std::int64_t requests, std::size_t models, Nanos think_time, TokenDist prompt, TokenDist output,
                    std::uint64_t seed, Nanos duration)
      : total_(requests),
        models_(static_cast<std::int64_t>(models)),
        think_time_(think_time),
        prompt_(prompt),
        output_(output),
        tokens_(Rng::derive(seed, kTokenStream)),
        duration_(duration) {}

  std::optional<Request> next() override {
    if (!released_) return std::nullopt;
    released_ = false;
    Request request;
    request.id = issued_++;
    request.model = static_cast<ModelId>(request.id % models_);
    request.arrival = release_time_;
    request.prompt_tokens = prompt_.sample(tokens_);
    request.output_tokens = output_.sample(tokens_);
    in_flight_ = request.id;
    return request;
  }

  bool exhausted() const override { return stopped_ || (issued_ == total_ && !released_); }

  void onRequestDone(const Request& request, Nanos finish) override {
    if (!in_flight_ || request.id != *in_flight_) return;  // not the request this source is waiting on
    in_flight_.reset();
    if (issued_ == total_) return;
    const Nanos release = addSaturating(finish, think_time_);
    if (pastDuration(release, duration_)) {
      stopped_ = true;
      return;
    }
    release_time_ = release;
    released_ = true;
  }

 private:
  std::int64_t total_;
  std::int64_t models_;
  Nanos think_time_;
  TokenDist prompt_, output_;
  Rng tokens_;
  Nanos duration_;
  std::int64_t issued_ = 0;
  bool released_ = true;  // a request is ready to be taken; the first one is, at t=0
  Nanos release_time_ = 0;
  std::optional<RequestId> in_flight_;
  bool stopped_ = false;
};

// ---------------------------------------------------------------------------------------------
// Building sources from JSON.

TokenDist tokenDistOr(const JsonReader& workload, const std::string& key, std::int32_t fallback) {
  if (auto node = workload.find(key)) return TokenDist::fromJson(*node);
  TokenDist dist;
  dist.value = dist.min = dist.max = fallback;
  return dist;
}

std::optional<TokenDist> optionalTokenDist(const JsonReader& workload, const std::string& key) {
  if (auto node = workload.find(key)) return TokenDist::fromJson(*node);
  return std::nullopt;
}

std::vector<double> perModelRates(const JsonReader& workload, std::size_t model_count) {
  const auto total = workload.find("rate");
  const auto explicit_rates = workload.find("rates");
  if (total && explicit_rates)
    workload.fail("give either \"rate\" (a total split by zipf_alpha) or \"rates\" (one per model), not both");
  if (explicit_rates) {
    if (auto alpha = workload.find("zipf_alpha")) alpha->fail("only used with \"rate\"; \"rates\" are per model");
    if (explicit_rates->size() != model_count)
      explicit_rates->fail("expected " + std::to_string(model_count) + " rates (one per model), got " +
                           std::to_string(explicit_rates->size()));
    std::vector<double> rates;
    double sum = 0;
    for (std::size_t m = 0; m < model_count; ++m) sum += rates.emplace_back(positiveNumber(explicit_rates->at(m), kMaxRate));
    if (sum > kMaxRate) explicit_rates->fail("add up to more than " + formatBound(kMaxRate) + " requests/s");
    return rates;
  }
  if (!total) workload.fail("needs \"rate\" (total requests/s) or \"rates\" (requests/s per model)");
  const double rate = positiveNumber(*total, kMaxRate);
  const auto alpha = workload.find("zipf_alpha");
  std::vector<double> rates = zipfShares(model_count, alpha ? nonNegativeNumber(*alpha, kMaxZipfAlpha) : 0.0);
  for (double& share : rates) share *= rate;
  return rates;
}

std::unique_ptr<RequestSource> makeGenerated(const JsonReader& workload, bool gamma, std::size_t model_count,
                                             std::uint64_t seed, Nanos duration) {
  std::vector<std::string> keys = {"type", "rate", "rates", "zipf_alpha", "prompt_tokens", "output_tokens"};
  if (gamma) keys.emplace_back("cv");
  workload.expectObject(keys);
  const std::vector<double> rates = perModelRates(workload, model_count);
  const auto cv_node = workload.find("cv");
  const double cv = cv_node ? positiveNumber(*cv_node, kMaxCv) : 1.0;
  return std::make_unique<GeneratedSource>(rates, cv, tokenDistOr(workload, "prompt_tokens", 1),
                                           tokenDistOr(workload, "output_tokens", 1), seed, duration);
}

// How trace requests are spread over the scenario's models.
class ModelAssignment {
 public:
  static ModelAssignment fromJson(const JsonReader& workload, const std::string& format, std::size_t model_count) {
    ModelAssignment assignment;
    if (format == "computron") {
      for (const char* key : {"assign", "zipf_alpha", "split"})
        if (auto node = workload.find(key))
          node->fail("not used with \"format\":\"computron\" (rows name their model)");
      assignment.kind_ = Kind::kFromTrace;
      return assignment;
    }
    const std::string assign = workload.getString("assign", "round_robin");
    if (assign != "zipf" && workload.has("zipf_alpha"))
      workload.at("zipf_alpha").fail("only used with \"assign\":\"zipf\"");
    if (assign != "split" && workload.has("split")) workload.at("split").fail("only used with \"assign\":\"split\"");
    assignment.model_count_ = static_cast<ModelId>(model_count);
    if (assign == "round_robin") {
      assignment.kind_ = Kind::kRoundRobin;
    } else if (assign == "zipf") {
      const auto alpha = workload.find("zipf_alpha");
      assignment.setShares(zipfShares(model_count, alpha ? nonNegativeNumber(*alpha, kMaxZipfAlpha) : 1.0));
    } else if (assign == "split") {
      const JsonReader split = workload.at("split");
      if (split.size() != model_count)
        split.fail("expected " + std::to_string(model_count) + " fractions (one per model), got " +
                   std::to_string(split.size()));
      std::vector<double> shares;
      double sum = 0;
      for (std::size_t m = 0; m < model_count; ++m) sum += shares.emplace_back(nonNegativeNumber(split.at(m), 1.0));
      if (std::fabs(sum - 1) > 1e-6) split.fail("fractions must add up to 1, got " + formatNumber(sum));
      assignment.setShares(shares);
    } else {
      workload.at("assign").fail("unknown assignment '" + assign + "' (allowed: zipf, round_robin, split)");
    }
    return assignment;
  }

  // The model of the index-th replayed request; `traced` is the model the trace names, if any.
  ModelId modelFor(std::size_t index, ModelId traced, Rng& rng) const {
    switch (kind_) {
      case Kind::kFromTrace:
        return traced;
      case Kind::kRoundRobin:
        return static_cast<ModelId>(index % static_cast<std::size_t>(model_count_));
      case Kind::kShares: {
        const double u = rng.uniform01();
        const auto above = std::upper_bound(cumulative_.begin(), cumulative_.end(), u);
        // u * sum can round up to the very end; the last model with a share takes it.
        return std::min(static_cast<ModelId>(above - cumulative_.begin()), last_with_share_);
      }
    }
    return 0;
  }

 private:
  enum class Kind { kFromTrace, kRoundRobin, kShares };

  // Each request independently picks model m with probability shares[m] (a seeded thinning
  // of the trace, which keeps its burstiness in every model's share).
  void setShares(const std::vector<double>& shares) {
    kind_ = Kind::kShares;
    double sum = 0;
    for (std::size_t m = 0; m < shares.size(); ++m) {
      sum += shares[m];
      cumulative_.push_back(sum);
      if (shares[m] > 0) last_with_share_ = static_cast<ModelId>(m);
    }
    for (double& c : cumulative_) c /= sum;
  }

  Kind kind_ = Kind::kRoundRobin;
  ModelId model_count_ = 1;
  std::vector<double> cumulative_;
  ModelId last_with_share_ = 0;
};

std::string resolvePath(const std::string& base_dir, const std::string& path) {
  std::filesystem::path p(path);
  if (p.is_relative() && !base_dir.empty()) p = std::filesystem::path(base_dir) / p;
  return p.lexically_normal().string();
}

// t x time_scale, or nullopt when that passes kMaxInputTime.
std::optional<Nanos> scaleTime(Nanos t, double time_scale) {
  if (time_scale == 1) return t <= kMaxInputTime ? std::optional<Nanos>(t) : std::nullopt;  // exact
  const double scaled = static_cast<double>(t) * time_scale;
  if (!(scaled <= static_cast<double>(kMaxInputTime))) return std::nullopt;
  return std::llround(scaled);
}

std::unique_ptr<RequestSource> makeTrace(const JsonReader& workload, const std::vector<std::string>& models,
                                         std::uint64_t seed, Nanos duration, const std::string& base_dir) {
  workload.expectObject({"type", "format", "path", "assign", "zipf_alpha", "split", "time_scale", "start_s",
                         "max_requests", "prompt_tokens", "output_tokens"});
  const std::string format = workload.requireString("format");
  if (format != "azure" && format != "mooncake" && format != "computron")
    workload.at("format").fail("unknown trace format '" + format + "' (allowed: azure, mooncake, computron)");
  const std::string path = workload.requireString("path");
  if (path.empty()) workload.at("path").fail("must not be empty");
  const ModelAssignment assignment = ModelAssignment::fromJson(workload, format, models.size());
  const auto time_scale_node = workload.find("time_scale");
  const double time_scale = time_scale_node ? positiveNumber(*time_scale_node, kMaxTimeScale) : 1.0;
  const auto start_node = workload.find("start_s");
  const double start_s = start_node ? nonNegativeNumber(*start_node, kMaxInputSeconds) : 0.0;
  const auto max_node = workload.find("max_requests");
  const std::int64_t max_requests = max_node ? nonNegativeInt(*max_node, kMaxRequestCount) : 0;
  const std::optional<TokenDist> prompt = optionalTokenDist(workload, "prompt_tokens");
  const std::optional<TokenDist> output = optionalTokenDist(workload, "output_tokens");

  const TraceFile file{resolvePath(base_dir, path), path};
  const std::vector<TraceRecord> records = format == "azure"      ? readAzureTrace(file)
                                           : format == "mooncake" ? readMooncakeTrace(file)
                                                                  : readComputronTrace(file, models);

  const Nanos start = secondsToNanos(start_s);
  auto first = std::lower_bound(records.begin(), records.end(), start,
                                [](const TraceRecord& record, Nanos t) { return record.time < t; });
  if (first == records.end())  // only possible with a start_s past the last row
    workload.at("start_s").fail("no trace requests at or after " + formatNumber(start_s) + " s (the last is at " +
                                formatNumber(toSeconds(records.back().time)) + " s)");

  Rng assign_rng(Rng::derive(seed, kAssignStream));
  Rng prompt_rng(Rng::derive(Rng::derive(seed, kTokenStream), 0));
  Rng output_rng(Rng::derive(Rng::derive(seed, kTokenStream), 1));
  std::vector<Request> requests;
  for (auto it = first; it != records.end(); ++it) {
    const std::optional<Nanos> scaled = scaleTime(it->time - start, time_scale);
    if (!scaled) {
      if (duration > 0) break;  // past any duration
      workload.at("time_scale").fail("stretches the trace past " + formatBound(kMaxInputSeconds) + " s");
    }
    const Nanos arrival = *scaled;
    if (pastDuration(arrival, duration)) break;
    if (max_requests > 0 && static_cast<std::int64_t>(requests.size()) == max_requests) break;
    Request request;
    request.id = static_cast<RequestId>(requests.size());
    request.model = assignment.modelFor(requests.size(), it->model, assign_rng);
    request.arrival = arrival;
    // A request always has a prompt token and generates at least one token.
    request.prompt_tokens = prompt ? prompt->sample(prompt_rng) : std::max(it->prompt_tokens, 1);
    request.output_tokens = output ? output->sample(output_rng) : std::max(it->output_tokens, 1);
    requests.push_back(request);
  }
  return std::make_unique<TraceSource>(std::move(requests));
}

std::unique_ptr<RequestSource> makeAlternating(const JsonReader& workload, std::size_t model_count, std::uint64_t seed,
                                               Nanos duration) {
  workload.expectObject({"type", "requests", "think_time_ms", "prompt_tokens", "output_tokens"});
  const std::int64_t count = workload.at("requests").asIntIn(1, kMaxRequestCount);
  const auto think_node = workload.find("think_time_ms");
  const double think_ms = think_node ? nonNegativeNumber(*think_node, kMaxInputSeconds * 1e3) : 0.0;
  return std::make_unique<AlternatingSource>(count, model_count, std::llround(think_ms * kNanosPerMilli),
                                             tokenDistOr(workload, "prompt_tokens", 1),
                                             tokenDistOr(workload, "output_tokens", 1), seed, duration);
}

}  // namespace

std::unique_ptr<RequestSource> makeWorkload(const JsonReader& workload, const std::vector<std::string>& models,
                                            std::uint64_t seed, Nanos duration, const std::string& base_dir) {
  if (models.empty()) workload.fail("the scenario has no models to send requests to");
  const std::string type = workload.requireString("type");
  if (type == "poisson" || type == "gamma")
    return makeGenerated(workload, type == "gamma", models.size(), seed, duration);
  if (type == "trace") return makeTrace(workload, models, seed, duration, base_dir);
  if (type == "alternating") return makeAlternating(workload, models.size(), seed, duration);
  workload.at("type").fail("unknown workload type '" + type + "' (allowed: poisson, gamma, trace, alternating)");
}

void checkWorkloadEnds(const JsonReader& workload, std::size_t model_count, Nanos duration) {
  const std::string type = workload.requireString("type");
  if (type != "poisson" && type != "gamma") return;  // traces and closed loops end by themselves
  // A generated stream is endless; the scenario's duration stops it, so one is needed.
  if (duration <= 0)
    workload.fail("a generated workload needs the scenario's duration_s (greater than 0) to end its arrivals");
  double total_rate = 0;
  for (double rate : perModelRates(workload, model_count)) total_rate += rate;
  const double expected = total_rate * toSeconds(duration);
  if (expected > kMaxExpectedRequests)
    workload.fail("expects " + formatBound(expected) + " requests (rate x duration_s), more than " +
                  formatBound(kMaxExpectedRequests));
}

std::int64_t writeWorkloadCsv(RequestSource& source, const std::vector<std::string>& models, std::ostream& out) {
  for (const auto& name : models)
    if (name.empty() || name.find_first_of(",\"\r\n") != std::string::npos)
      throw ConfigError("model name '" + name +
                        "' cannot be written to a CSV trace (empty, or has a comma, quote or line break)");
  out << "id,model,arrival_ns,prompt_tokens,output_tokens\n";
  std::int64_t rows = 0;
  while (auto request = source.next()) {
    out << request->id << ',' << models.at(static_cast<std::size_t>(request->model)) << ',' << request->arrival << ','
        << request->prompt_tokens << ',' << request->output_tokens << '\n';
    ++rows;
  }
  if (!source.exhausted())
    throw ConfigError(
        "a closed-loop workload (such as \"alternating\") issues requests as earlier ones finish "
        "and cannot be saved as a trace");
  return rows;
}

}  // namespace computron
