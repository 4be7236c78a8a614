#include "sim/sweep.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <boost/program_options.hpp>

#include "common/json_reader.h"
#include "common/scenario/cli_args.h"
#include "common/scenario/interrupt.h"
#include "common/scenario/output_files.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"

namespace computron::sim {
namespace {

constexpr int kMaxSweepThreads = 1024;
constexpr std::size_t kMaxSweepRuns = 1'000'000;

constexpr const char* kPolicyChoiceKeys[] = {"eviction", "queue", "prefetch", "routing", "admission", "placement", "serial_loads", "layer_pipelined"};

// A path that a policy entry would overwrite (mergePolicy drops the scenario's choices; the entry
// names the policy set), so a grid key or `set` override naming it, or any field inside it, would
// be lost: refused with a pointer to `policies`. The path is read by applyOverride itself, on an
// empty document, so every spelling it accepts ("policy.eviction", ".policy.eviction") is seen.
std::optional<std::string> policyChoiceIn(const std::string& path) {
  nlohmann::json probe = nlohmann::json::object();
  try {
    applyOverride(probe, path + "=0");
  } catch (const ConfigError&) {
    return std::nullopt;  // not a path into an object from the root: not a policy field
  }
  const auto policy = probe.find("policy");
  if (policy == probe.end()) return std::nullopt;
  if (!policy->is_object() || policy->empty()) return std::string("policy");
  const std::string& key = policy->begin().key();
  if (key == "name") return key;
  for (const char* k : kPolicyChoiceKeys)
    if (key == k) return key;
  return std::nullopt;
}

std::string policyChoiceError(const std::string& key) {
  const std::string example = key == "name" ? std::string("\"policies\": [\"computron\", \"best\"]")
                                            : "\"policies\": [\"computron\", {\"name\": \"computron\", \"" +
                                                  (key == "policy" ? std::string("eviction") : key) + "\": ...}]";
  return "`" + key + "` is chosen by the `policies` entries, which replace the scenario's policy choices; sweep it there, " +
         "e.g. " + example;
}

std::string csvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string valueText(const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// The scenario's policy with the sweep entry laid over it. The scenario's count cap stays (it is
// part of the experiment); its individual policy choices give way to the entry's set.
nlohmann::json mergePolicy(const nlohmann::json& scenario_policy, const nlohmann::json& entry) {
  nlohmann::json policy = nlohmann::json::object();
  if (scenario_policy.is_string()) policy["name"] = scenario_policy;
  if (scenario_policy.is_object()) policy = scenario_policy;
  for (const char* k : kPolicyChoiceKeys) policy.erase(k);
  if (entry.is_string()) {
    policy["name"] = entry;
  } else {
    for (auto it = entry.begin(); it != entry.end(); ++it)
      if (it.key() != "label") policy[it.key()] = it.value();
  }
  return policy;
}

std::string policyLabel(const nlohmann::json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.contains("label")) return entry["label"].get<std::string>();
  std::string label = entry.value("name", std::string("computron"));
  for (auto it = entry.begin(); it != entry.end(); ++it)
    if (it.key() != "name") label += "+" + it.key() + "=" + valueText(it.value());
  return label;
}

const nlohmann::json& overall(const SweepResult& r) { return r.summary["overall"]; }

}  // namespace

void scaleRates(nlohmann::json& scenario, double scale) {
  nlohmann::json& w = scenario["workload"];
  if (!w.is_object()) throw ConfigError("rate_scale: the scenario's workload is not an object");
  std::string type = w.contains("type") && w["type"].is_string() ? w["type"].get<std::string>() : std::string();
  // A value of the wrong type is left for the scenario's validation to name.
  auto scaled = [scale](nlohmann::json& v) {
    if (v.is_number()) v = v.get<double>() * scale;
  };
  if (type == "poisson" || type == "gamma") {
    if (w.contains("rate")) scaled(w["rate"]);
    if (w.contains("rates") && w["rates"].is_array())
      for (auto& r : w["rates"]) scaled(r);
  } else if (type == "trace") {
    const nlohmann::json& t = w.contains("time_scale") ? w["time_scale"] : nlohmann::json(1.0);
    if (t.is_number()) w["time_scale"] = t.get<double>() / scale;
  } else {
    throw ConfigError("rate_scale: workload type '" + type + "' has no rate to scale");
  }
}

SweepSpec parseSweep(const nlohmann::json& doc, const std::string& base_dir) {
  JsonReader root(doc, "$");
  root.expectObject({"name", "description", "scenarios", "policies", "grid", "seeds", "set", "threads", "csv"});
  SweepSpec spec;
  spec.name = root.getString("name", "sweep");
  if (root.has("name")) checkOutputName(root.at("name"));  // names out/sweeps/<name>.csv
  spec.csv = root.getString("csv", "out/sweeps/" + spec.name + ".csv");
  if (spec.csv.empty()) root.at("csv").fail("must not be empty");
  spec.threads = static_cast<int>(root.getIntIn("threads", 0, 0, kMaxSweepThreads));

  auto scenarios = root.at("scenarios");
  if (!scenarios.isArray() || scenarios.size() == 0) scenarios.fail("expected a non-empty list of scenario files");
  auto policies = root.at("policies");
  if (!policies.isArray() || policies.size() == 0) policies.fail("expected a non-empty list of policy sets");
  std::vector<nlohmann::json> policy_entries;
  std::vector<std::string> labels;
  for (std::size_t i = 0; i < policies.size(); ++i) {
    auto p = policies.at(i);
    if (!p.isString() && !p.isObject()) p.fail("expected a policy set name or a policy object");
    if (p.isObject())
      p.expectObject({"label", "name", "max_loaded_models", "eviction", "queue", "prefetch", "routing", "admission",
                      "lfu_half_life_s", "rate_window_s", "placement", "serial_loads", "layer_pipelined"});
    std::string label = policyLabel(p.json());
    if (std::find(labels.begin(), labels.end(), label) != labels.end()) p.fail("label '" + label + "' is used twice");
    labels.push_back(label);
    policy_entries.push_back(p.json());
  }

  // Grid: keys in file order (nlohmann sorts object keys, which is also deterministic).
  std::vector<std::vector<nlohmann::json>> values;
  if (auto g = root.find("grid")) {
    if (!g->isObject()) g->fail("expected an object of path: [values]");
    for (auto it = g->json().begin(); it != g->json().end(); ++it) {
      JsonReader v(it.value(), g->path() + "." + it.key());
      if (!v.isArray() || v.size() == 0) v.fail("expected a non-empty list of values");
      if (auto key = policyChoiceIn(it.key())) v.fail(policyChoiceError(*key));
      if (it.key() == "rate_scale")
        for (std::size_t j = 0; j < v.size(); ++j) {
          const double scale = v.at(j).asDoubleIn(0, 1e6);
          if (!(scale > 0)) v.at(j).fail("must be greater than 0");
        }
      spec.grid_keys.push_back(it.key());
      values.emplace_back(it.value().begin(), it.value().end());
    }
  }
  std::vector<std::string> fixed_sets;
  if (auto s = root.find("set")) {
    for (std::size_t i = 0; i < s->size(); ++i) {
      const std::string text = s->at(i).asString();
      if (auto key = policyChoiceIn(text.substr(0, text.find('=')))) s->at(i).fail(policyChoiceError(*key));
      fixed_sets.push_back(text);
    }
  }
  std::vector<std::optional<std::uint64_t>> seeds;
  if (auto s = root.find("seeds")) {
    for (std::size_t i = 0; i < s->size(); ++i) {
      seeds.emplace_back(static_cast<std::uint64_t>(s->at(i).asIntIn(0, INT64_MAX)));
    }
  }
  if (seeds.empty()) seeds.emplace_back(std::nullopt);

  // Cartesian product of the grid, last key fastest.
  std::vector<nlohmann::json> points;
  std::size_t total = 1;
  for (const auto& v : values) {
    total *= v.size();
    if (total * seeds.size() * policy_entries.size() * scenarios.size() > kMaxSweepRuns)
      root.at("grid").fail("the sweep would have more than " + std::to_string(kMaxSweepRuns) + " runs");
  }
  for (std::size_t n = 0; n < total; ++n) {
    nlohmann::json point = nlohmann::json::array();
    for (std::size_t k = 0; k < values.size(); ++k) point.push_back(nullptr);
    std::size_t rest = n;
    for (std::size_t k = values.size(); k-- > 0;) {
      point[k] = values[k][rest % values[k].size()];
      rest /= values[k].size();
    }
    points.push_back(point);
  }

  for (std::size_t i = 0; i < scenarios.size(); ++i) {
    std::string file = scenarios.at(i).asString();
    std::filesystem::path path(file);
    if (path.is_relative()) path = std::filesystem::path(base_dir) / path;
    nlohmann::json base;
    try {
      base = readJsonFile(path.string());
    } catch (const ConfigError& e) {
      throw ConfigError(scenarios.at(i).path() + ": " + e.what());
    }
    std::string scenario_dir = path.parent_path().string();
    if (scenario_dir.empty()) scenario_dir = ".";
    for (const auto& point : points) {
      for (const auto& seed : seeds) {
        for (std::size_t p = 0; p < policy_entries.size(); ++p) {
          SweepRun run;
          run.scenario = file;
          run.policy = labels[p];
          run.point = point;
          run.base_dir = scenario_dir;
          nlohmann::json d = base;
          for (const auto& s : fixed_sets) applyOverride(d, s);
          for (std::size_t k = 0; k < spec.grid_keys.size(); ++k) {
            if (spec.grid_keys[k] == "rate_scale") {
              scaleRates(d, point[k].get<double>());
            } else {
              applyOverride(d, spec.grid_keys[k] + "=" + point[k].dump());
            }
          }
          if (seed) d["seed"] = *seed;
          run.seed = d.value("seed", std::uint64_t{1});
          d["policy"] = mergePolicy(d.value("policy", nlohmann::json()), policy_entries[p]);
          run.scenario_doc = std::move(d);
          spec.runs.push_back(std::move(run));
        }
      }
    }
  }
  return spec;
}

SweepSpec loadSweep(const std::string& path) {
  nlohmann::json doc = readJsonFile(path);
  std::string base = std::filesystem::path(path).parent_path().string();
  return parseSweep(doc, base.empty() ? "." : base);
}

std::vector<SweepResult> runSweep(const SweepSpec& spec, int threads, ProgressReporter* progress) {
  std::vector<SweepResult> results(spec.runs.size());
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = std::min<int>(threads, static_cast<int>(std::max<std::size_t>(1, spec.runs.size())));
  std::atomic<std::size_t> next{0};
  std::mutex progress_mutex;
  std::size_t done = 0;
  auto worker = [&]() {
    while (true) {
      std::size_t i = next.fetch_add(1);
      if (i >= spec.runs.size()) return;
      SweepResult& r = results[i];
      r.run = spec.runs[i];
      try {
        Scenario scenario = parseScenario(r.run.scenario_doc, r.run.base_dir);
        scenario.outputs.dir.clear();  // a sweep writes only its CSV
        r.summary = runScenario(scenario, nullptr);
      } catch (const std::exception& e) {
        r.error = e.what();
      }
      std::lock_guard<std::mutex> lock(progress_mutex);
      ++done;
      if (progress) progress->update(static_cast<double>(done));
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  if (progress) progress->finish();
  return results;
}

void writeSweepCsv(const SweepSpec& spec, const std::vector<SweepResult>& results, std::ostream& out) {
  out << "sweep,scenario,policy";
  for (const auto& k : spec.grid_keys) out << ',' << csvField(k);
  out << ",seed,requests,served,failed,rejected,mean_ms,p50_ms,p99_ms,ttft_mean_ms,slo_attainment,goodput_rps,"
         "swaps,evictions,gb_loaded,nvlink_gb,error\n";
  for (const auto& r : results) {
    out << csvField(spec.name) << ',' << csvField(r.run.scenario) << ',' << csvField(r.run.policy);
    for (const auto& v : r.run.point) out << ',' << csvField(valueText(v));
    out << ',' << r.run.seed;
    if (!r.error.empty()) {
      out << ",,,,,,,,,,,,,,," << csvField(r.error) << '\n';
      continue;
    }
    const auto& o = overall(r);
    out << ',' << o["requests"].get<std::int64_t>() << ',' << o["served"].get<std::int64_t>() << ','
        << o["failed"].get<std::int64_t>() << ',' << o.value("rejected", std::int64_t{0}) << ','
        << fixed(o["latency_ms"]["mean"].get<double>(), 3) << ',' << fixed(o["latency_ms"]["p50"].get<double>(), 3)
        << ',' << fixed(o["latency_ms"]["p99"].get<double>(), 3) << ','
        << fixed(o["ttft_ms"]["mean"].get<double>(), 3) << ','
        << (o["slo_attainment"].is_number() ? fixed(o["slo_attainment"].get<double>(), 6) : std::string()) << ','
        << fixed(o["goodput_rps"].get<double>(), 4) << ',' << o["swaps"].get<std::int64_t>() << ','
        << o["evictions"].get<std::int64_t>() << ','
        << fixed(static_cast<double>(o["bytes_loaded"].get<std::int64_t>()) / 1e9, 3) << ','
        << fixed(static_cast<double>(r.summary.value("nvlink_bytes", std::int64_t{0})) / 1e9, 3) << ",\n";
  }
}

void printSweepTable(const SweepSpec& spec, const std::vector<SweepResult>& results, std::ostream& out) {
  // Groups in first-seen order: (scenario, point) -> policy -> runs.
  struct Agg {
    int n = 0, errors = 0, slo_n = 0;  // slo_n: runs with an SLO attainment (a scenario may set no SLO)
    double mean = 0, p99 = 0, slo = 0, swaps = 0, gb = 0, rejected = 0;
  };
  std::vector<std::string> group_order;
  std::map<std::string, std::vector<std::string>> policy_order;
  std::map<std::string, std::map<std::string, Agg>> aggs;
  for (const auto& r : results) {
    std::string group = r.run.scenario;
    for (std::size_t k = 0; k < spec.grid_keys.size(); ++k)
      group += "  " + spec.grid_keys[k] + "=" + valueText(r.run.point[k]);
    if (!aggs.count(group)) group_order.push_back(group);
    auto& pol = policy_order[group];
    if (std::find(pol.begin(), pol.end(), r.run.policy) == pol.end()) pol.push_back(r.run.policy);
    Agg& a = aggs[group][r.run.policy];
    if (!r.error.empty()) {
      ++a.errors;
      continue;
    }
    const auto& o = overall(r);
    ++a.n;
    a.mean += o["latency_ms"]["mean"].get<double>();
    a.p99 += o["latency_ms"]["p99"].get<double>();
    if (o["slo_attainment"].is_number()) {
      a.slo += o["slo_attainment"].get<double>();
      ++a.slo_n;
    }
    a.swaps += static_cast<double>(o["swaps"].get<std::int64_t>());
    a.gb += static_cast<double>(o["bytes_loaded"].get<std::int64_t>()) / 1e9;
    a.rejected += static_cast<double>(o.value("rejected", std::int64_t{0}));
  }
  char line[256];
  for (const auto& group : group_order) {
    out << group << "\n";
    std::snprintf(line, sizeof line, "  %-28s %10s %10s %8s %8s %9s %8s %8s\n", "policy", "mean ms", "p99 ms", "SLO met",
                  "swaps", "GB moved", "rejected", "p99 vs 1st");
    out << line;
    double base_p99 = 0;
    bool first = true;
    for (const auto& policy : policy_order[group]) {
      const Agg& a = aggs[group][policy];
      if (a.n == 0) {
        out << "  " << policy << ": failed (" << a.errors << " errors; see the CSV)\n";
        first = false;
        continue;
      }
      double n = a.n;
      double p99 = a.p99 / n;
      if (first) base_p99 = p99;
      first = false;
      char slo[32];
      if (a.slo_n > 0) {
        std::snprintf(slo, sizeof slo, "%7.2f%%", 100.0 * a.slo / a.slo_n);
      } else {
        std::snprintf(slo, sizeof slo, "%8s", "-");
      }
      std::snprintf(line, sizeof line, "  %-28s %10.1f %10.1f %s %8.1f %9.1f %8.1f %7.2fx\n", policy.c_str(), a.mean / n,
                    p99, slo, a.swaps / n, a.gb / n, a.rejected / n, p99 > 0 && base_p99 > 0 ? base_p99 / p99 : 0.0);
      out << line;
    }
  }
  out << "(averages over seeds; 'p99 vs 1st' is the first policy's p99 over this one's: above 1 is better)\n";
}

int sweepMain(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description opts("computron sweep SWEEP.json [options]");
  std::string path, csv;
  int threads = -1;
  double progress_every_s = 10;
  opts.add_options()("help,h", "show this help")(
      "threads,j", po::value<int>(&threads), "worker threads (default: the sweep's \"threads\", else every core; 0: every core)")(
      "csv", po::value<std::string>(&csv), "where to write the CSV (default: the sweep's \"csv\", else out/sweeps/NAME.csv)")(
      "quiet,q", "no progress or other notes on stderr (the table still goes to stdout)")(
      "no-progress", "no progress on stderr (as --quiet)")(
      "progress-every", po::value<double>(&progress_every_s)->default_value(progress_every_s),
      "seconds between progress lines when stderr is not a terminal");
  po::variables_map vm;
  if (auto done = parseCommandArgs(argc, argv, opts, "computron sweep",
                                   "\nRuns a grid of policy sets x scenario overrides x seeds in the simulator, in parallel threads.\n"
                                   "Writes one CSV row per run (byte-identical for the same sweep) and prints a comparison table.\n"
                                   "The sweep file format is in docs/policies.md; examples in sweeps/.\n",
                                   {{"sweep", &path, "a sweep file is needed"}}, vm))
    return *done;
  if (vm.count("threads") && (threads < 0 || threads > kMaxSweepThreads))
    return usageError("computron sweep", "--threads: must be between 0 (every core) and " + std::to_string(kMaxSweepThreads) +
                      ", got " + std::to_string(threads), opts);
  if (progress_every_s < 0) return usageError("computron sweep", "--progress-every: must be 0 or greater", opts);
  const bool quiet = vm.count("quiet") > 0 || vm.count("no-progress") > 0;
  try {
    SweepSpec spec = loadSweep(path);
    if (vm.count("csv") && csv.empty()) return usageError("computron sweep", "--csv: must not be empty", opts);
    if (!csv.empty()) spec.csv = csv;
    checkOutputFilePath(spec.csv, "CSV");
    if (threads < 0) threads = spec.threads;
    ProgressReporter::Options shown;
    shown.label = "sweep";
    shown.unit = "runs";
    shown.total = static_cast<double>(spec.runs.size());
    shown.line_interval_s = progress_every_s;
    ProgressReporter progress = ProgressReporter::forStderr(shown, quiet);
    std::vector<SweepResult> results = runSweep(spec, threads, &progress);
    if (stopRequested()) {
      std::cerr << "computron sweep: interrupted (signal " << stopSignal() << "); no CSV written\n";
      return 128 + stopSignal();
    }
    std::filesystem::path csv_path(spec.csv);
    std::error_code ec;
    if (csv_path.has_parent_path()) std::filesystem::create_directories(csv_path.parent_path(), ec);
    writeFileWhole(csv_path, [&](std::ostream& out) { writeSweepCsv(spec, results, out); });
    printSweepTable(spec, results, std::cout);
    std::cout << spec.runs.size() << " runs; CSV in " << spec.csv << "\n";
    std::size_t errors = 0;
    for (const auto& r : results)
      if (!r.error.empty()) {
        if (errors++ == 0) std::cerr << "computron sweep: run failed: " << r.error << "\n";
      }
    return errors == 0 ? 0 : 1;
  } catch (const ConfigError& e) {
    std::cerr << "computron sweep: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace computron::sim
