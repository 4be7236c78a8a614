#include "sim/compare.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <unordered_set>

#include <boost/program_options.hpp>

#include "common/json_reader.h"
#include "common/scenario/cli_args.h"

namespace computron::sim {
namespace {

namespace fs = std::filesystem;

// Limits and errors compare equal within this, so that "mean=20%" passes an error of exactly 20%
// however the division rounds.
constexpr double kLimitSlack = 1e-12;

bool isRelative(Metric m) { return m != Metric::kSwaps && m != Metric::kKs; }


// One CSV record at a time (RFC 4180 quoting: a quoted field may hold commas, doubled quotes and
// newlines), with the line each record starts on.
class CsvReader {
 public:
  CsvReader(std::istream& in, std::string name) : in_(in), name_(std::move(name)) {}

  // False at the end of the file.
  bool next(std::vector<std::string>& fields) {
    std::string text;
    if (!std::getline(in_, text)) return false;
    record_line_ = ++line_;
    fields.assign(1, std::string());
    bool quoted = false;
    std::size_t i = 0;
    while (true) {
      if (i == text.size() || (!quoted && text[i] == '\r' && i + 1 == text.size())) {
        if (!quoted) return true;
        // A newline inside a quoted field: the record goes on on the next line.
        if (!std::getline(in_, text)) fail("a quoted field is not closed before the end of the file");
        ++line_;
        fields.back() += '\n';
        i = 0;
        continue;
      }
      const char c = text[i++];
      if (quoted) {
        if (c != '"') {
          fields.back() += c;
        } else if (i < text.size() && text[i] == '"') {
          fields.back() += '"';
          ++i;
        } else {
          quoted = false;
          if (i < text.size() && text[i] != ',' && !(text[i] == '\r' && i + 1 == text.size()))
            fail("unexpected character after a closing quote");
        }
      } else if (c == ',') {
        fields.emplace_back();
      } else if (c == '"' && fields.back().empty()) {
        quoted = true;
      } else {
        fields.back() += c;
      }
    }
  }
  std::int64_t line() const { return record_line_; }
  [[noreturn]] void fail(const std::string& message) const {
    throw CompareInputError(name_ + " line " + std::to_string(record_line_) + ": " + message);
  }

 private:
  std::istream& in_;
  std::string name_;
  std::int64_t line_ = 0, record_line_ = 0;
};

void readSummary(RunData& run) {
  const fs::path path = run.dir / "summary.json";
  if (!fs::exists(path))
    throw CompareInputError(path.string() + ": no such file (is " + run.dir.string() + " a run's output folder?)");
  nlohmann::json doc;
  try {
    doc = readJsonFile(path.string());
    JsonReader root(doc, path.string() + ": $");
    if (!root.isObject()) root.fail("expected an object");
    run.scenario = root.has("scenario") && root.at("scenario").isString() ? root.at("scenario").asString() : "";
    run.backend = root.has("backend") && root.at("backend").isString() ? root.at("backend").asString() : "";
    JsonReader models = root.at("models");
    if (!models.isArray()) models.fail("expected an array of models");
    for (std::size_t i = 0; i < models.size(); ++i) {
      JsonReader m = models.at(i);
      const std::string name = m.requireString("name");
      const std::int64_t swaps = m.requireInt("swaps");
      if (swaps < 0) m.at("swaps").fail("must not be negative");
      if (run.samples.count(name)) m.at("name").fail("model '" + name + "' is listed twice");
      run.models.push_back(name);
      run.samples[name].swaps = swaps;
    }
  } catch (const ConfigError& e) {
    throw CompareInputError(e.what());
  }
}

void readRequests(RunData& run) {
  const fs::path path = run.dir / "requests.csv";
  if (!fs::exists(path))
    throw CompareInputError(path.string() + ": no such file (the run wrote no requests.csv: outputs.requests_csv off?)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CompareInputError(path.string() + ": cannot be opened");
  CsvReader csv(in, path.string());
  std::vector<std::string> fields;
  if (!csv.next(fields)) throw CompareInputError(path.string() + ": empty file (no header line)");
  std::map<std::string, std::size_t> column;
  for (std::size_t i = 0; i < fields.size(); ++i) column.emplace(fields[i], i);
  auto required = [&](const char* name) {
    auto it = column.find(name);
    if (it == column.end()) csv.fail(std::string("no column '") + name + "' in the header");
    return it->second;
  };
  const std::size_t model_col = required("model"), latency_col = required("latency_s"), ok_col = required("ok");
  run.has_ttft = column.count("arrival_s") && column.count("first_token_s");
  const std::size_t arrival_col = run.has_ttft ? column["arrival_s"] : 0;
  const std::size_t first_col = run.has_ttft ? column["first_token_s"] : 0;
  const std::size_t width = fields.size();
  auto seconds = [&](const std::vector<std::string>& row, std::size_t col, const std::string& name) {
    std::optional<Nanos> v = parseSecondsText(row[col]);
    if (!v) csv.fail(name + " '" + row[col] + "' is not a number");
    return *v;
  };
  while (csv.next(fields)) {
    if (fields.size() == 1 && fields[0].empty()) csv.fail("empty line");
    if (fields.size() != width)
      csv.fail(std::to_string(fields.size()) + " fields, the header has " + std::to_string(width));
    const std::string& ok = fields[ok_col];
    if (ok != "0" && ok != "1") csv.fail("ok is '" + ok + "', expected 0 or 1");
    auto model = run.samples.find(fields[model_col]);
    if (model == run.samples.end()) csv.fail("model '" + fields[model_col] + "' is not in summary.json");
    if (ok == "0") continue;  // latencies are over served requests
    const Nanos latency = seconds(fields, latency_col, "latency_s");
    if (latency < 0) csv.fail("latency_s is negative");
    model->second.latency.push_back(latency);
    if (run.has_ttft) {
      const Nanos ttft = seconds(fields, first_col, "first_token_s") - seconds(fields, arrival_col, "arrival_s");
      if (ttft < 0) csv.fail("first_token_s is before arrival_s");
      model->second.ttft.push_back(ttft);
    }
  }
  if (in.bad()) throw CompareInputError(path.string() + ": read error");
}

// timeline.json is read as a stream: each event is looked at when it has been parsed and then
// dropped, so memory stays flat however long the run.
void readTimeline(RunData& run) {
  const fs::path path = run.dir / "timeline.json";
  if (!fs::exists(path)) return;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CompareInputError(path.string() + ": cannot be opened");
  const std::string name = path.string();
  std::map<std::int64_t, bool> gpu_process;  // pid -> named "GPU n"
  std::unordered_set<std::int64_t> batches_seen, sessions_seen;
  std::int64_t index = -1;
  auto onEvent = [&](const nlohmann::json& e) {
    ++index;
    auto fail = [&](const std::string& message) {
      throw CompareInputError(name + ": traceEvents[" + std::to_string(index) + "]: " + message);
    };
    const std::string ph = e["ph"].get<std::string>();
    auto pid_it = e.find("pid");
    if (pid_it == e.end() || !pid_it->is_number_integer()) fail("no integer 'pid'");
    const std::int64_t pid = pid_it->get<std::int64_t>();
    auto text = [&](const char* key) {
      auto it = e.find(key);
      if (it == e.end() || !it->is_string()) fail(std::string("no string '") + key + "'");
      return it->get<std::string>();
    };
    if (ph == "M") {
      if (text("name") != "process_name") return;
      auto args = e.find("args");
      if (args == e.end() || !args->is_object() || !args->contains("name") || !(*args)["name"].is_string())
        fail("process_name without args.name");
      gpu_process[pid] = (*args)["name"].get<std::string>().rfind("GPU ", 0) == 0;
      return;
    }
    if (ph != "X") return;
    // Only the GPUs' own tracks: a backend's extra spans are on a process of their own.
    auto gpu = gpu_process.find(pid);
    if (gpu == gpu_process.end() || !gpu->second) return;
    const std::string cat = e.contains("cat") ? text("cat") : std::string();
    if (cat != "load" && cat != "batch" && cat != "session") return;
    const std::string span = text("name");
    std::string model = span;
    if (cat == "load") {
      if (span.rfind("load ", 0) != 0) fail("load span '" + span + "' is not named 'load <model>'");
      model = span.substr(5);
    }
    auto samples = run.samples.find(model);
    if (samples == run.samples.end()) fail(cat + " span '" + span + "': model '" + model + "' is not in summary.json");
    auto dur = e.find("dur");
    if (dur == e.end() || !dur->is_number()) fail("no number 'dur'");
    const double micros = dur->get<double>();
    if (!(micros >= 0) || !std::isfinite(micros)) fail("'dur' is negative or not finite");
    const Nanos d = secondsToNanos(micros * 1e-6);
    auto args = e.find("args");
    if (args != e.end() && args->is_object()) {
      auto ok = args->find("ok");
      if (ok != args->end() && ok->is_boolean() && !ok->get<bool>()) return;  // failed loads and batches
      if (cat == "batch") {
        auto id = args->find("batch");
        // A batch on a group of GPUs has one span on each: counted once.
        if (id != args->end() && id->is_number_integer() && !batches_seen.insert(id->get<std::int64_t>()).second) return;
      }
      if (cat == "session") {
        // Its steps: how many and their summed time (timelines before these fields have neither).
        auto id = args->find("session");
        auto steps = args->find("steps");
        auto steps_us = args->find("steps_us");
        if (steps == args->end() || steps_us == args->end()) return;
        if (!steps->is_number_integer() || steps->get<std::int64_t>() < 0) fail("session 'steps' is not a count");
        if (!steps_us->is_number() || !(steps_us->get<double>() >= 0) || !std::isfinite(steps_us->get<double>()))
          fail("session 'steps_us' is negative or not finite");
        if (id != args->end() && id->is_number_integer() && !sessions_seen.insert(id->get<std::int64_t>()).second) return;
        samples->second.steps.sum += static_cast<long double>(secondsToNanos(steps_us->get<double>() * 1e-6));
        samples->second.steps.count += steps->get<std::int64_t>();
        return;
      }
    }
    if (cat == "session") return;
    (cat == "load" ? samples->second.shard_loads : samples->second.batches).add(d);
  };
  nlohmann::json::parser_callback_t callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (depth > kMaxJsonDepth) throw CompareInputError(name + ": nested deeper than " + std::to_string(kMaxJsonDepth));
    if (event == nlohmann::json::parse_event_t::object_end && depth == 2 && parsed.is_object() && parsed.contains("ph") &&
        parsed["ph"].is_string()) {
      onEvent(parsed);
      return false;  // dropped once counted
    }
    return true;
  };
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(in, callback);
  } catch (const nlohmann::json::exception& e) {
    throw CompareInputError(name + ": not valid JSON (" + e.what() + ")");
  }
  if (!root.is_object() || !root.contains("traceEvents") || !root["traceEvents"].is_array())
    throw CompareInputError(name + ": no traceEvents array (not a computron timeline)");
  run.has_timeline = true;
}

std::string percentText(double fraction) {
  if (std::isinf(fraction)) return fraction > 0 ? "+inf" : "-inf";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%+.2f%%", 100.0 * fraction);
  return buf;
}

std::string limitText(Metric m, double limit) {
  char buf[48];
  if (isRelative(m)) {
    std::snprintf(buf, sizeof buf, "%g%%", 100.0 * limit);
  } else if (m == Metric::kSwaps) {
    std::snprintf(buf, sizeof buf, "+-%g", limit);
  } else {
    std::snprintf(buf, sizeof buf, "%g", limit);
  }
  return buf;
}

const char* metricLabel(Metric m) {
  switch (m) {
    case Metric::kMean: return "mean ms";
    case Metric::kP50: return "p50 ms";
    case Metric::kP90: return "p90 ms";
    case Metric::kP99: return "p99 ms";
    case Metric::kTtft: return "ttft mean ms";
    case Metric::kSwaps: return "swaps";
    case Metric::kLoad: return "shard load ms";
    case Metric::kBatch: return "batch ms";
    case Metric::kStep: return "step ms";
    case Metric::kKs: return "ks distance";
  }
  return "";
}

// What is missing on a side without a value, for messages.
const char* missingWhat(Metric m) {
  switch (m) {
    case Metric::kLoad: return "no shard load";
    case Metric::kBatch: return "no batch";
    case Metric::kStep: return "no step";
    default: return "no served request";
  }
}

// Whether `mc` exceeds `limit`; `why` gets the readable reason.
bool exceeds(const MetricComparison& mc, double limit, std::string& why) {
  if (!mc.available) return false;
  const char* name = metricName(mc.metric);
  if (mc.one_sided) {
    why = std::string(name) + ": " + missingWhat(mc.metric) + " in " + (mc.a ? "B" : "A") + ", " +
          (mc.a ? "A" : "B") + " has some (limit " + limitText(mc.metric, limit) + ")";
    return true;
  }
  if (mc.metric == Metric::kSwaps) {
    const double diff = std::fabs(*mc.b - *mc.a);
    if (diff <= limit) return false;
    char buf[160];
    std::snprintf(buf, sizeof buf, "swaps: %lld in A, %lld in B, %g apart (limit %g)", static_cast<long long>(*mc.a),
                  static_cast<long long>(*mc.b), diff, limit);
    why = buf;
    return true;
  }
  if (!mc.error) return false;  // n/a: both zero or both empty
  const double e = std::fabs(*mc.error);
  if (e <= limit + kLimitSlack) return false;
  if (mc.metric == Metric::kKs) {
    char buf[120];
    std::snprintf(buf, sizeof buf, "ks: distance %.4f exceeds %g", *mc.error, limit);
    why = buf;
  } else {
    why = std::string(name) + ": error " + percentText(*mc.error) + " exceeds " + limitText(mc.metric, limit);
  }
  return true;
}

bool inScope(bool is_overall, bool overall_only) { return is_overall || !overall_only; }

std::string fixedText(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

double round6(double v) { return std::round(v * 1e6) / 1e6; }

nlohmann::ordered_json optionalJson(const std::optional<double>& v, bool integer) {
  if (!v) return nullptr;
  if (integer) return static_cast<std::int64_t>(*v);
  return round6(*v);
}

}  // namespace

std::optional<double> DurationMean::meanMillis() const {
  if (count == 0) return std::nullopt;
  return static_cast<double>(sum / static_cast<long double>(count) / 1e6L);
}

void ModelSamples::add(const ModelSamples& o) {
  latency.insert(latency.end(), o.latency.begin(), o.latency.end());
  ttft.insert(ttft.end(), o.ttft.begin(), o.ttft.end());
  swaps += o.swaps;
  shard_loads.add(o.shard_loads);
  batches.add(o.batches);
  steps.add(o.steps);
}

RunData readRun(const fs::path& dir) {
  if (!fs::exists(dir)) throw CompareInputError(dir.string() + ": no such folder");
  if (!fs::is_directory(dir)) throw CompareInputError(dir.string() + ": not a folder (expected a run's output folder)");
  RunData run;
  run.dir = dir;
  readSummary(run);
  readRequests(run);
  readTimeline(run);
  return run;
}

std::optional<Nanos> parseSecondsText(const std::string& text) {
  // The exact form the recorder writes: [-]digits[.digits], at most nine decimals.
  std::size_t i = 0;
  const bool negative = !text.empty() && text[0] == '-';
  if (negative) ++i;
  const std::size_t int_start = i;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  const std::size_t int_digits = i - int_start;
  std::size_t frac_digits = 0;
  Nanos frac = 0;
  bool exact = int_digits > 0 && int_digits <= 9;
  if (exact && i < text.size() && text[i] == '.') {
    ++i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9' && frac_digits < 9) {
      frac = frac * 10 + (text[i] - '0');
      ++frac_digits;
      ++i;
    }
  }
  if (exact && i == text.size()) {
    for (std::size_t k = frac_digits; k < 9; ++k) frac *= 10;
    const Nanos whole = std::stoll(text.substr(int_start, int_digits));
    const Nanos ns = whole * kNanosPerSecond + frac;
    return negative ? -ns : ns;
  }
  // Anything else strtod reads whole (more decimals, an exponent), rounded to the nanosecond.
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !std::isfinite(v)) return std::nullopt;
  return secondsToNanos(v);
}

Nanos percentile(const std::vector<Nanos>& sorted, double q) {
  const auto n = static_cast<long double>(sorted.size());
  const long double product = static_cast<long double>(q) * n;
  // The slack keeps 0.99 * 100 at rank 99 whichever way the product rounds.
  auto rank = static_cast<std::int64_t>(std::ceil(product - product * 1e-12L));
  rank = std::clamp<std::int64_t>(rank, 1, static_cast<std::int64_t>(sorted.size()));
  return sorted[static_cast<std::size_t>(rank - 1)];
}

double ksDistance(std::vector<Nanos> a, std::vector<Nanos> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  const auto na = static_cast<std::int64_t>(a.size()), nb = static_cast<std::int64_t>(b.size());
  // |F_a - F_b| at each distinct value, after every sample equal to it: |i/na - j/nb|, kept as
  // the integer |i*nb - j*na| so that equal samples give exactly 0.
  std::int64_t i = 0, j = 0;
  long double best = 0;
  while (i < na && j < nb) {
    const Nanos x = std::min(a[static_cast<std::size_t>(i)], b[static_cast<std::size_t>(j)]);
    while (i < na && a[static_cast<std::size_t>(i)] == x) ++i;
    while (j < nb && b[static_cast<std::size_t>(j)] == x) ++j;
    const long double fa = static_cast<long double>(i) * static_cast<long double>(nb);
    const long double fb = static_cast<long double>(j) * static_cast<long double>(na);
    const long double diff = std::fabs(fa - fb);
    best = std::max(best, diff);
  }
  return static_cast<double>(best / (static_cast<long double>(na) * static_cast<long double>(nb)));
}

std::optional<double> relativeError(double a, double b) {
  if (a != 0) return (b - a) / a;
  if (b == 0) return std::nullopt;
  return b > 0 ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
}

const char* metricName(Metric m) {
  switch (m) {
    case Metric::kMean: return "mean";
    case Metric::kP50: return "p50";
    case Metric::kP90: return "p90";
    case Metric::kP99: return "p99";
    case Metric::kTtft: return "ttft";
    case Metric::kSwaps: return "swaps";
    case Metric::kLoad: return "load";
    case Metric::kBatch: return "batch";
    case Metric::kStep: return "step";
    case Metric::kKs: return "ks";
  }
  return "";
}

std::optional<Metric> metricFromName(const std::string& name) {
  for (Metric m : kAllMetrics)
    if (name == metricName(m)) return m;
  return std::nullopt;
}

const MetricComparison& ModelComparison::at(Metric m) const {
  for (const MetricComparison& mc : metrics)
    if (mc.metric == m) return mc;
  throw std::logic_error("compare: no metric " + std::string(metricName(m)));
}

ModelComparison compareSamples(const std::string& name, const ModelSamples& a, const ModelSamples& b, bool ttft,
                               bool timeline) {
  ModelComparison out;
  out.name = name;
  std::vector<Nanos> la = a.latency, lb = b.latency;
  std::sort(la.begin(), la.end());
  std::sort(lb.begin(), lb.end());
  auto meanMillis = [](const std::vector<Nanos>& v) -> std::optional<double> {
    if (v.empty()) return std::nullopt;
    DurationMean m;
    for (Nanos x : v) m.add(x);
    return m.meanMillis();
  };
  auto pct = [](const std::vector<Nanos>& sorted, double q) -> std::optional<double> {
    if (sorted.empty()) return std::nullopt;
    return toMillis(percentile(sorted, q));
  };
  auto valued = [](Metric m, std::optional<double> va, std::optional<double> vb, bool available) {
    MetricComparison mc;
    mc.metric = m;
    mc.available = available;
    if (!available) return mc;
    mc.a = va;
    mc.b = vb;
    mc.one_sided = va.has_value() != vb.has_value();
    if (va && vb) mc.error = relativeError(*va, *vb);
    return mc;
  };
  out.metrics.push_back(valued(Metric::kMean, meanMillis(la), meanMillis(lb), true));
  out.metrics.push_back(valued(Metric::kP50, pct(la, 0.5), pct(lb, 0.5), true));
  out.metrics.push_back(valued(Metric::kP90, pct(la, 0.9), pct(lb, 0.9), true));
  out.metrics.push_back(valued(Metric::kP99, pct(la, 0.99), pct(lb, 0.99), true));
  out.metrics.push_back(ttft ? valued(Metric::kTtft, meanMillis(a.ttft), meanMillis(b.ttft), true)
                             : valued(Metric::kTtft, std::nullopt, std::nullopt, false));
  out.metrics.push_back(
      valued(Metric::kSwaps, static_cast<double>(a.swaps), static_cast<double>(b.swaps), true));
  out.metrics.push_back(valued(Metric::kLoad, a.shard_loads.meanMillis(), b.shard_loads.meanMillis(), timeline));
  out.metrics.push_back(valued(Metric::kBatch, a.batches.meanMillis(), b.batches.meanMillis(), timeline));
  out.metrics.push_back(valued(Metric::kStep, a.steps.meanMillis(), b.steps.meanMillis(), timeline));
  MetricComparison ks;
  ks.metric = Metric::kKs;
  ks.a = static_cast<double>(la.size());
  ks.b = static_cast<double>(lb.size());
  ks.one_sided = la.empty() != lb.empty();
  if (!la.empty() && !lb.empty()) ks.error = ksDistance(std::move(la), std::move(lb));
  out.metrics.push_back(ks);
  return out;
}

Comparison compareRuns(const RunData& a, const RunData& b) {
  Comparison c;
  c.a_dir = a.dir;
  c.b_dir = b.dir;
  c.a_scenario = a.scenario;
  c.b_scenario = b.scenario;
  c.a_backend = a.backend;
  c.b_backend = b.backend;
  if (a.scenario != b.scenario)
    c.warnings.push_back("the runs are of different scenarios: '" + a.scenario + "' (A) and '" + b.scenario + "' (B)");
  std::vector<std::string> common;
  for (const std::string& m : a.models) {
    if (b.samples.count(m)) {
      common.push_back(m);
    } else {
      c.warnings.push_back("model '" + m + "' is only in A (" + a.dir.string() + "); not compared");
    }
  }
  for (const std::string& m : b.models)
    if (!a.samples.count(m)) c.warnings.push_back("model '" + m + "' is only in B (" + b.dir.string() + "); not compared");
  if (common.empty())
    throw CompareInputError("the runs have no model in common (" + a.dir.string() + "/summary.json and " + b.dir.string() +
                            "/summary.json)");
  const bool ttft = a.has_ttft && b.has_ttft;
  const bool timeline = a.has_timeline && b.has_timeline;
  // The folders that lack what a metric needs, named in the note.
  auto lacking = [&](bool a_has, bool b_has, const char* file) {
    std::string out;
    if (!a_has) out += (a.dir / file).string();
    if (!b_has) out += (out.empty() ? "" : " and ") + (b.dir / file).string();
    return out;
  };
  if (!ttft)
    c.notes.push_back("ttft not compared: " + lacking(a.has_ttft, b.has_ttft, "requests.csv") +
                      " has no arrival_s and first_token_s columns");
  if (!timeline)
    c.notes.push_back("load and batch not compared: " + lacking(a.has_timeline, b.has_timeline, "timeline.json") +
                      (a.has_timeline || b.has_timeline ? " is missing" : " are missing"));
  ModelSamples all_a, all_b;
  for (const std::string& m : common) {
    const ModelSamples& sa = a.samples.at(m);
    const ModelSamples& sb = b.samples.at(m);
    c.models.push_back(compareSamples(m, sa, sb, ttft, timeline));
    all_a.add(sa);
    all_b.add(sb);
  }
  c.overall = compareSamples("all", all_a, all_b, ttft, timeline);
  return c;
}

std::map<Metric, double> parseMaxError(const std::string& spec) {
  std::map<Metric, double> limits;
  std::string known;
  for (Metric m : kAllMetrics) known += std::string(known.empty() ? "" : ", ") + metricName(m);
  std::stringstream items(spec);
  std::string item;
  auto trim = [](std::string s) {
    const auto first = s.find_first_not_of(" \t");
    if (first == std::string::npos) return std::string();
    return s.substr(first, s.find_last_not_of(" \t") - first + 1);
  };
  while (std::getline(items, item, ',')) {
    item = trim(item);
    const auto eq = item.find('=');
    if (eq == std::string::npos) throw std::invalid_argument("--max-error: expected metric=value, got '" + item + "'");
    const std::string name = trim(item.substr(0, eq));
    std::string value = trim(item.substr(eq + 1));
    const std::optional<Metric> metric = metricFromName(name);
    if (!metric) throw std::invalid_argument("--max-error: unknown metric '" + name + "' (known: " + known + ")");
    if (limits.count(*metric)) throw std::invalid_argument("--max-error: metric '" + name + "' is given twice");
    const bool percent = !value.empty() && value.back() == '%';
    if (percent) value = trim(value.substr(0, value.size() - 1));
    char* end = nullptr;
    const double v = value.empty() ? -1 : std::strtod(value.c_str(), &end);
    const bool number = !value.empty() && end == value.c_str() + value.size() && std::isfinite(v);
    const std::string what = "--max-error: " + name + "=" + item.substr(eq + 1) + ": ";
    if (isRelative(*metric)) {
      if (!number || v < 0) throw std::invalid_argument(what + "expected a percentage >= 0, e.g. " + name + "=5%");
      limits[*metric] = v / 100.0;
    } else if (*metric == Metric::kSwaps) {
      if (percent || !number || v < 0 || v != std::floor(v))
        throw std::invalid_argument(what + "expected a whole number of swaps >= 0 (the difference allowed), e.g. swaps=1");
      limits[*metric] = v;
    } else {
      if (percent || !number || v < 0 || v > 1)
        throw std::invalid_argument(what + "expected a distance between 0 and 1, e.g. ks=0.1");
      limits[*metric] = v;
    }
  }
  if (!spec.empty() && spec.back() == ',') throw std::invalid_argument("--max-error: empty item after the last ','");
  return limits;
}

std::vector<std::string> exceededLimits(const Comparison& c, const std::map<Metric, double>& limits, bool overall_only) {
  std::vector<std::string> out;
  auto check = [&](const ModelComparison& model, bool is_overall) {
    if (!inScope(is_overall, overall_only)) return;
    for (const auto& [metric, limit] : limits) {
      std::string why;
      if (exceeds(model.at(metric), limit, why))
        out.push_back((is_overall ? std::string("overall") : "model " + model.name) + ": " + why);
    }
  };
  check(c.overall, true);
  for (const ModelComparison& m : c.models) check(m, false);
  return out;
}

std::vector<std::string> skippedLimits(const Comparison& c, const std::map<Metric, double>& limits) {
  std::vector<std::string> out;
  for (const auto& [metric, limit] : limits)
    if (!c.overall.at(metric).available)
      out.push_back(std::string("--max-error ") + metricName(metric) + "=" + limitText(metric, limit) +
                    " not checked: the files do not carry " + metricName(metric));
  return out;
}

nlohmann::ordered_json compareJson(const Comparison& c, const std::map<Metric, double>& limits, bool overall_only,
                           const std::vector<std::string>& exceeded) {
  auto model = [&](const ModelComparison& mc, bool is_overall) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    if (!is_overall) j["name"] = mc.name;
    for (const MetricComparison& m : mc.metrics) {
      const bool integer = m.metric == Metric::kSwaps || m.metric == Metric::kKs;
      nlohmann::ordered_json e = {{"a", optionalJson(m.a, integer)}, {"b", optionalJson(m.b, integer)}};
      if (!m.error) {
        e["error"] = nullptr;
      } else if (std::isinf(*m.error)) {
        e["error"] = *m.error > 0 ? "inf" : "-inf";
      } else {
        e["error"] = *m.error;
      }
      if (!m.available) e["available"] = false;
      auto limit = limits.find(m.metric);
      if (limit != limits.end() && m.available && inScope(is_overall, overall_only)) {
        std::string why;
        e["limit"] = limit->second;
        e["exceeded"] = exceeds(m, limit->second, why);
      }
      j[metricName(m.metric)] = e;
    }
    return j;
  };
  nlohmann::ordered_json out;
  out["a"] = {{"dir", c.a_dir.string()}, {"scenario", c.a_scenario}, {"backend", c.a_backend}};
  out["b"] = {{"dir", c.b_dir.string()}, {"scenario", c.b_scenario}, {"backend", c.b_backend}};
  out["overall"] = model(c.overall, true);
  nlohmann::ordered_json models = nlohmann::ordered_json::array();
  for (const ModelComparison& m : c.models) models.push_back(model(m, false));
  out["models"] = models;
  nlohmann::ordered_json lim = nlohmann::ordered_json::object();
  for (const auto& [metric, limit] : limits) lim[metricName(metric)] = limit;
  out["limits"] = lim;
  out["limits_apply_to"] = overall_only ? "overall" : "overall and each model";
  out["exceeded"] = exceeded;
  out["notes"] = c.notes;
  out["warnings"] = c.warnings;
  return out;
}

std::string compareTable(const Comparison& c, const std::map<Metric, double>& limits, bool overall_only) {
  std::ostringstream out;
  auto runLine = [&](const char* label, const fs::path& dir, const std::string& scenario, const std::string& backend) {
    out << label << dir.string() << "  (scenario " << (scenario.empty() ? "?" : scenario) << ", backend "
        << (backend.empty() ? "?" : backend) << ")\n";
  };
  runLine("A (reference): ", c.a_dir, c.a_scenario, c.a_backend);
  runLine("B (candidate): ", c.b_dir, c.b_scenario, c.b_backend);
  for (const std::string& n : c.notes) out << "note: " << n << "\n";
  out << "\n";
  std::size_t name_width = 5;
  for (const ModelComparison& m : c.models) name_width = std::max(name_width, m.name.size());
  const bool with_limits = !limits.empty();
  auto row = [&](const std::string& model, const std::string& metric, const std::string& a, const std::string& b,
                 const std::string& error, const std::string& limit, const std::string& status) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%-*s  %-13s %14s %14s %10s", static_cast<int>(name_width), model.c_str(), metric.c_str(),
                  a.c_str(), b.c_str(), error.c_str());
    std::string line = buf;
    if (with_limits) {
      std::snprintf(buf, sizeof buf, " %8s  %s", limit.c_str(), status.c_str());
      line += buf;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  };
  row("model", "metric", "A", "B", "error", "limit", "");
  // Batches and steps: a run has one or the other (request-level or iteration batching); the row of
  // the kind neither run has is left out, unless a limit names it.
  auto neither = [&](Metric metric) {
    const MetricComparison& all = c.overall.at(metric);
    return (metric == Metric::kBatch || metric == Metric::kStep) && all.available && !all.a && !all.b &&
           limits.find(metric) == limits.end();
  };
  auto block = [&](const ModelComparison& mc, bool is_overall) {
    for (const MetricComparison& m : mc.metrics) {
      if (neither(m.metric)) continue;
      std::string a, b, error, limit, status;
      if (!m.available) {
        a = b = error = "-";
      } else if (m.metric == Metric::kKs) {
        a = "n=" + std::to_string(static_cast<std::int64_t>(*m.a));
        b = "n=" + std::to_string(static_cast<std::int64_t>(*m.b));
        error = m.error ? fixedText(*m.error, 4) : "n/a";
      } else {
        const int decimals = m.metric == Metric::kSwaps ? 0 : 3;
        a = m.a ? fixedText(*m.a, decimals) : "-";
        b = m.b ? fixedText(*m.b, decimals) : "-";
        error = m.error ? percentText(*m.error) : "n/a";
      }
      auto lim = limits.find(m.metric);
      if (lim != limits.end() && inScope(is_overall, overall_only)) {
        limit = limitText(m.metric, lim->second);
        std::string why;
        status = !m.available ? "not checked" : exceeds(m, lim->second, why) ? "EXCEEDED" : "ok";
      }
      row(mc.name, metricLabel(m.metric), a, b, error, limit, status);
    }
    out << "\n";
  };
  for (const ModelComparison& m : c.models) block(m, false);
  block(c.overall, true);
  out << "error = (B - A) / A, n/a where A and B are both 0 or a side has no sample (-). ks: the sample\n"
         "sizes and the Kolmogorov-Smirnov distance of the latency distributions (served requests).\n"
         "Latencies from requests.csv (exact), swaps from summary.json, shard load, batch and step times\n"
         "(iteration batching: the mean step of the sessions) from timeline.json.\n";
  return out.str();
}

int compareMain(int argc, char** argv) {
  namespace po = boost::program_options;
  const std::string command = "computron compare";
  std::string a_dir, b_dir;
  std::vector<std::string> max_error;
  po::options_description opts("computron compare A B [options]");
  opts.add_options()("help,h", "show this help")(
      "json", po::bool_switch(), "print one JSON object (overall, models, each metric's a, b and error) instead of the table")(
      "max-error", po::value<std::vector<std::string>>(&max_error)->composing(),
      "limits, metric=value comma-separated (mean=5%,p99=10%,swaps=1,ks=0.1): mean, p50, p90, p99, ttft, load, batch, step "
      "a relative error in percent; swaps a difference in count; ks a distance. Exit 1 when one is exceeded. May be "
      "repeated")("overall-only", po::bool_switch(),
                  "apply --max-error to the overall line only (default: overall and each model)");
  const std::string footer =
      "\nCompares two output folders of runs of one scenario: A the reference (e.g. `computron replay`), B the\n"
      "candidate (e.g. `computron sim`). Per model and overall: mean, p50, p90, p99 latency and mean time to first\n"
      "token (requests.csv, served requests), swaps (summary.json), mean shard load, batch and step time (timeline.json),\n"
      "each with A, B and (B - A) / A; and the Kolmogorov-Smirnov distance between the latency distributions.\n"
      "Exit codes: 0 compared (every limit met); 1 a limit exceeded (listed); 2 bad usage or input (a missing\n"
      "folder or summary.json, a malformed requests.csv line, an unknown metric). A model in one run only is a\n"
      "warning; the runs are compared on the models both have. See docs/results.md#comparing-runs.\n";
  po::variables_map vm;
  if (auto code = parseCommandArgs(argc, argv, opts, command, footer,
                                   {{"a", &a_dir, "two run folders are needed: computron compare A B"},
                                    {"b", &b_dir, "two run folders are needed: computron compare A B"}},
                                   vm))
    return *code;
  std::map<Metric, double> limits;
  try {
    std::string spec;
    for (const std::string& s : max_error) spec += (spec.empty() ? "" : ",") + s;
    if (!max_error.empty()) limits = parseMaxError(spec);
  } catch (const std::invalid_argument& e) {
    return usageError(command, e.what(), opts);
  }
  const bool json = vm["json"].as<bool>();
  const bool overall_only = vm["overall-only"].as<bool>();
  Comparison comparison;
  try {
    const RunData a = readRun(a_dir);
    const RunData b = readRun(b_dir);
    comparison = compareRuns(a, b);
  } catch (const CompareInputError& e) {
    std::cerr << command << ": " << e.what() << "\n";
    return 2;
  }
  for (const std::string& w : comparison.warnings) std::cerr << command << ": warning: " << w << "\n";
  for (const std::string& w : skippedLimits(comparison, limits)) std::cerr << command << ": warning: " << w << "\n";
  const std::vector<std::string> exceeded = exceededLimits(comparison, limits, overall_only);
  if (json) {
    std::cout << compareJson(comparison, limits, overall_only, exceeded).dump(2) << "\n";
    for (const std::string& e : exceeded) std::cerr << command << ": exceeded: " << e << "\n";
  } else {
    std::cout << compareTable(comparison, limits, overall_only);
    if (!limits.empty()) {
      if (exceeded.empty()) {
        std::cout << "every limit met (" << (overall_only ? "overall" : "overall and each model") << ")\n";
      } else {
        std::cout << exceeded.size() << (exceeded.size() == 1 ? " limit" : " limits") << " exceeded:\n";
        for (const std::string& e : exceeded) std::cout << "  " << e << "\n";
      }
    }
  }
  return exceeded.empty() ? 0 : 1;
}

}  // namespace computron::sim
