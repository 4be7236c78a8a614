// `computron compare A B`: the statistics on hand-computed values, a run against itself (zero
// error, KS 0, exit 0), a run against a copy with latencies scaled by 1.2 (mean error 20%, exit 1
// or 0 by the limit), thresholds per model and overall, and bad input (exit 2 naming the file).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sim/compare.h"
#include "tests/support/cli_runner.h"

namespace computron {
namespace {

namespace fs = std::filesystem;

using fakes::CommandResult;
using fakes::ScratchDir;
using sim::Metric;

CommandResult runCompare(const std::string& args) { return fakes::runBinary(COMPUTRON_BINARY, "compare " + args); }

constexpr const char* kHeader =
    "id,model,arrival_s,start_s,first_token_s,finish_s,latency_s,prompt_tokens,output_tokens,waited_for_load,ok,error\n";

// A run folder by hand: summary.json with `swaps` per model, requests.csv with one served request
// per (model, latency in seconds) at arrival 0 and first token at half the latency; no timeline.
struct Request {
  std::string model;
  std::string latency;  // seconds, as written
  bool ok = true;
};
fs::path writeRun(const fs::path& dir, const std::vector<std::pair<std::string, int>>& models,
                  const std::vector<Request>& requests) {
  fs::create_directories(dir);
  nlohmann::json summary = {{"scenario", "hand"}, {"backend", "sim"}, {"models", nlohmann::json::array()}};
  for (const auto& [name, swaps] : models) summary["models"].push_back({{"name", name}, {"swaps", swaps}});
  std::ofstream(dir / "summary.json") << summary.dump(2) << "\n";
  std::ofstream csv(dir / "requests.csv");
  csv << kHeader;
  int id = 0;
  for (const Request& r : requests) {
    const double seconds = std::strtod(r.latency.c_str(), nullptr);  // 0 for a deliberately bad one
    char first[32];
    std::snprintf(first, sizeof first, "%.9f", seconds / 2);
    csv << id++ << ',' << r.model << ",0.000000000,0.000000000," << first << ',' << r.latency << ',' << r.latency
        << ",64,1,0," << (r.ok ? 1 : 0) << ",\n";
  }
  return dir;
}

// A small simulated run of a shipped scenario, shortened.
fs::path simulate(const fs::path& dir, const std::string& extra = "") {
  const std::string scenario = std::string(COMPUTRON_SOURCE_DIR) + "/scenarios/random-3models-rates1-1-1-cv1.json";
  CommandResult r = fakes::runBinary(COMPUTRON_BINARY, "sim " + scenario + " --quiet --set duration_s=10 --out " +
                                                           dir.string() + " " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return dir;
}

// Rewrites requests.csv of `dir` with every latency_s multiplied by 6/5 (to the nanosecond).
void scaleLatencies(const fs::path& dir) {
  std::ifstream in(dir / "requests.csv");
  std::string line, out;
  std::getline(in, line);
  out += line + "\n";
  // The latency column by name (the fields here are never quoted).
  std::size_t latency_col = 0;
  {
    std::stringstream header(line);
    std::string name;
    for (std::size_t i = 0; std::getline(header, name, ','); ++i)
      if (name == "latency_s") latency_col = i;
  }
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, ',')) f.push_back(field);
    if (line.back() == ',') f.emplace_back();
    const auto ns = *sim::parseSecondsText(f[latency_col]);
    const long long scaled = static_cast<long long>(std::llround(static_cast<double>(ns) * 1.2));
    char buf[40];
    std::snprintf(buf, sizeof buf, "%lld.%09lld", scaled / 1'000'000'000, scaled % 1'000'000'000);
    f[latency_col] = buf;
    for (std::size_t i = 0; i < f.size(); ++i) out += (i ? "," : "") + f[i];
    out += "\n";
  }
  in.close();
  std::ofstream(dir / "requests.csv") << out;
}

nlohmann::json parseJson(const CommandResult& r) {
  try {
    return nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.output;
    return nlohmann::json::object();
  }
}

// ---- the statistics ----

TEST(CompareStats, KsDistanceOfHandComputedSamples) {
  // F_a steps at 1,2,3,4 (quarters), F_b at 2.5,3.5,5 (thirds): the largest gap is at 2, 2/4 - 0.
  EXPECT_DOUBLE_EQ(sim::ksDistance({1000, 2000, 3000, 4000}, {2500, 3500, 5000}), 0.5);
  // Ties: at 1, F_a = 2/3 and F_b = 1/3; at 2 both are 1.
  EXPECT_DOUBLE_EQ(sim::ksDistance({1, 1, 2}, {2, 1, 2}), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(sim::ksDistance({5, 3, 9}, {9, 5, 3}), 0.0);
  EXPECT_DOUBLE_EQ(sim::ksDistance({1, 2}, {3, 4, 5}), 1.0);
  EXPECT_DOUBLE_EQ(sim::ksDistance({7}, {7}), 0.0);
}

TEST(CompareStats, PercentileIsNearestRank) {
  std::vector<Nanos> v;
  for (Nanos i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_EQ(sim::percentile(v, 0.5), 50);
  EXPECT_EQ(sim::percentile(v, 0.9), 90);
  EXPECT_EQ(sim::percentile(v, 0.99), 99);
  EXPECT_EQ(sim::percentile(v, 1.0), 100);
  EXPECT_EQ(sim::percentile({10, 20, 30}, 0.5), 20);
  EXPECT_EQ(sim::percentile({10, 20, 30}, 0.99), 30);
  EXPECT_EQ(sim::percentile({42}, 0.01), 42);
}

TEST(CompareStats, SecondsTextIsExact) {
  EXPECT_EQ(sim::parseSecondsText("0.100000000"), Nanos{100'000'000});
  EXPECT_EQ(sim::parseSecondsText("12.000000001"), Nanos{12'000'000'001});
  EXPECT_EQ(sim::parseSecondsText("3"), Nanos{3'000'000'000});
  EXPECT_EQ(sim::parseSecondsText("-1.5"), Nanos{-1'500'000'000});
  EXPECT_EQ(sim::parseSecondsText("1e-3"), Nanos{1'000'000});
  EXPECT_EQ(sim::parseSecondsText("0.0000000004"), Nanos{0});
  EXPECT_FALSE(sim::parseSecondsText(""));
  EXPECT_FALSE(sim::parseSecondsText("abc"));
  EXPECT_FALSE(sim::parseSecondsText("1.5s"));
  EXPECT_FALSE(sim::parseSecondsText(" 1"));
}

TEST(CompareStats, RelativeErrorAgainstZero) {
  EXPECT_DOUBLE_EQ(*sim::relativeError(100, 120), 0.2);
  EXPECT_DOUBLE_EQ(*sim::relativeError(100, 90), -0.1);
  EXPECT_FALSE(sim::relativeError(0, 0));
  EXPECT_TRUE(std::isinf(*sim::relativeError(0, 3)));
}

TEST(CompareStats, MaxErrorSpec) {
  auto limits = sim::parseMaxError("mean=5%,p99=10, swaps=1,ks=0.1,load=2.5%");
  EXPECT_DOUBLE_EQ(limits.at(Metric::kMean), 0.05);
  EXPECT_DOUBLE_EQ(limits.at(Metric::kP99), 0.10);
  EXPECT_DOUBLE_EQ(limits.at(Metric::kSwaps), 1);
  EXPECT_DOUBLE_EQ(limits.at(Metric::kKs), 0.1);
  EXPECT_DOUBLE_EQ(limits.at(Metric::kLoad), 0.025);
  EXPECT_EQ(limits.size(), 5u);
  auto message = [](const std::string& spec) {
    try {
      sim::parseMaxError(spec);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("latency=5%").find("unknown metric 'latency'"), std::string::npos);
  EXPECT_NE(message("mean").find("expected metric=value"), std::string::npos);
  EXPECT_NE(message("mean=-1%").find("percentage"), std::string::npos);
  EXPECT_NE(message("swaps=1%").find("whole number"), std::string::npos);
  EXPECT_NE(message("swaps=1.5").find("whole number"), std::string::npos);
  EXPECT_NE(message("ks=2").find("between 0 and 1"), std::string::npos);
  EXPECT_NE(message("mean=5%,mean=6%").find("twice"), std::string::npos);
  EXPECT_NE(message("mean=5%,").find("empty"), std::string::npos);
}

// ---- hand-written runs ----

TEST(CompareRuns, KsOfHandWrittenCsvs) {
  ScratchDir dir;
  // m: A {0.1, 0.2, 0.3, 0.4}, B {0.25, 0.35, 0.5} (KS 0.5); a failed request in B is not counted.
  const fs::path a = writeRun(dir.path() / "a", {{"m", 2}},
                              {{"m", "0.100000000"}, {"m", "0.200000000"}, {"m", "0.300000000"}, {"m", "0.400000000"}});
  const fs::path b = writeRun(dir.path() / "b", {{"m", 3}},
                              {{"m", "0.250000000"}, {"m", "0.350000000"}, {"m", "9.000000000", false}, {"m", "0.500000000"}});
  const sim::Comparison c = sim::compareRuns(sim::readRun(a), sim::readRun(b));
  ASSERT_EQ(c.models.size(), 1u);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kKs).error, 0.5);
  EXPECT_EQ(*c.overall.at(Metric::kKs).a, 4);
  EXPECT_EQ(*c.overall.at(Metric::kKs).b, 3);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kMean).a, 250.0);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kMean).b, 1100.0 / 3.0);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kP50).a, 200.0);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kP50).b, 350.0);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kSwaps).error, 0.5);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kTtft).a, 125.0);
  EXPECT_FALSE(c.overall.at(Metric::kLoad).available);  // no timeline.json
  ASSERT_EQ(c.notes.size(), 1u);
  EXPECT_NE(c.notes[0].find("/a/timeline.json and " + b.string() + "/timeline.json are missing"), std::string::npos)
      << c.notes[0];

  CommandResult r = runCompare(a.string() + " " + b.string() + " --json");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json j = parseJson(r);
  EXPECT_DOUBLE_EQ(j["overall"]["ks"]["error"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["models"][0]["ks"]["error"].get<double>(), 0.5);
  EXPECT_EQ(j["models"][0]["name"], "m");
  EXPECT_EQ(j["overall"]["load"]["available"], false);
  // 0.5 passes ks=0.5 and fails ks=0.4.
  EXPECT_EQ(runCompare(a.string() + " " + b.string() + " --max-error ks=0.5").exit_code, 0);
  r = runCompare(a.string() + " " + b.string() + " --max-error ks=0.4");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.out.find("ks: distance 0.5000 exceeds 0.4"), std::string::npos) << r.out;
}

TEST(CompareRuns, ExactTwentyPercentAndLimitsPerModelOrOverall) {
  ScratchDir dir;
  // x is 20% slower in B, y 20% faster with the same total: overall mean error 0.
  const fs::path a = writeRun(dir.path() / "a", {{"x", 1}, {"y", 1}},
                              {{"x", "0.100000000"}, {"x", "0.200000000"}, {"x", "0.300000000"}, {"y", "0.600000000"}});
  const fs::path b = writeRun(dir.path() / "b", {{"x", 1}, {"y", 1}},
                              {{"x", "0.120000000"}, {"x", "0.240000000"}, {"x", "0.360000000"}, {"y", "0.480000000"}});
  const sim::Comparison c = sim::compareRuns(sim::readRun(a), sim::readRun(b));
  ASSERT_EQ(c.models.size(), 2u);
  EXPECT_DOUBLE_EQ(*c.models[0].at(Metric::kMean).error, 0.2);
  EXPECT_DOUBLE_EQ(*c.models[1].at(Metric::kMean).error, -0.2);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kMean).error, 0.0);
  EXPECT_DOUBLE_EQ(*c.models[0].at(Metric::kP99).error, 0.2);

  const std::string ab = a.string() + " " + b.string();
  CommandResult r = runCompare(ab + " --max-error mean=5%");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.out.find("model x: mean: error +20.00% exceeds 5%"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model y: mean: error -20.00% exceeds 5%"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("overall: mean"), std::string::npos) << r.out;
  EXPECT_EQ(runCompare(ab + " --max-error mean=5% --overall-only").exit_code, 0);
  EXPECT_EQ(runCompare(ab + " --max-error mean=20%").exit_code, 0);  // exactly at the limit
  EXPECT_EQ(runCompare(ab + " --max-error mean=19.9%").exit_code, 1);
  // Swaps: equal, so any count passes.
  EXPECT_EQ(runCompare(ab + " --max-error swaps=0").exit_code, 0);
}

TEST(CompareRuns, ZeroReferenceIsNotApplicableUnlessTheCandidateDiffers) {
  ScratchDir dir;
  const fs::path a = writeRun(dir.path() / "a", {{"m", 0}, {"idle", 0}}, {{"m", "0.100000000"}});
  const fs::path b = writeRun(dir.path() / "b", {{"m", 2}, {"idle", 0}}, {{"m", "0.100000000"}, {"idle", "0.300000000"}});
  CommandResult r = runCompare(a.string() + " " + b.string() + " --json --max-error swaps=5,mean=50%");
  nlohmann::json j = parseJson(r);
  EXPECT_EQ(j["models"][0]["swaps"]["error"], "inf");
  EXPECT_EQ(j["models"][0]["swaps"]["exceeded"], false);  // the limit on swaps is a count: 2 <= 5
  EXPECT_TRUE(j["models"][1]["swaps"]["error"].is_null());
  // idle served nothing in A, one request in B: no mean to compare, a mismatch that fails.
  EXPECT_TRUE(j["models"][1]["mean"]["a"].is_null());
  EXPECT_TRUE(j["models"][1]["mean"]["error"].is_null());
  EXPECT_EQ(j["models"][1]["mean"]["exceeded"], true);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.err.find("model idle: mean: no served request in A"), std::string::npos) << r.err;
}

TEST(CompareRuns, TimelineCountsGpuSpansOnceAndSkipsFailedAndBackendSpans) {
  ScratchDir dir;
  const fs::path a = writeRun(dir.path() / "a", {{"m", 1}}, {{"m", "0.100000000"}});
  std::ofstream(a / "timeline.json")
      << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
         "{\"ph\":\"M\",\"pid\":0,\"name\":\"process_name\",\"args\":{\"name\":\"GPU 0\"}},\n"
         "{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"GPU 1\"}},\n"
         "{\"ph\":\"M\",\"pid\":2,\"name\":\"process_name\",\"args\":{\"name\":\"runtime transfers and layers\"}},\n"
         "{\"ph\":\"X\",\"pid\":0,\"tid\":1000,\"name\":\"load m\",\"cat\":\"load\",\"ts\":0.000,\"dur\":300.000,"
         "\"args\":{\"shard\":0,\"bytes\":1,\"ok\":true}},\n"
         "{\"ph\":\"X\",\"pid\":1,\"tid\":1000,\"name\":\"load m\",\"cat\":\"load\",\"ts\":0.000,\"dur\":100.000,"
         "\"args\":{\"shard\":1,\"bytes\":1,\"ok\":true}},\n"
         "{\"ph\":\"X\",\"pid\":1,\"tid\":1001,\"name\":\"load m\",\"cat\":\"load\",\"ts\":0.000,\"dur\":900.000,"
         "\"args\":{\"shard\":1,\"bytes\":1,\"ok\":false}},\n"
         "{\"ph\":\"X\",\"pid\":0,\"tid\":0,\"name\":\"m\",\"cat\":\"batch\",\"ts\":400.000,\"dur\":10.500,"
         "\"args\":{\"batch\":1,\"size\":1,\"ok\":true}},\n"
         "{\"ph\":\"X\",\"pid\":1,\"tid\":0,\"name\":\"m\",\"cat\":\"batch\",\"ts\":400.000,\"dur\":10.500,"
         "\"args\":{\"batch\":1,\"size\":1,\"ok\":true}},\n"
         "{\"ph\":\"X\",\"pid\":0,\"tid\":0,\"name\":\"m\",\"cat\":\"batch\",\"ts\":500.000,\"dur\":20.500,"
         "\"args\":{\"batch\":2,\"size\":1,\"ok\":true}},\n"
         "{\"ph\":\"X\",\"pid\":2,\"tid\":0,\"name\":\"load m\",\"cat\":\"load\",\"ts\":0.000,\"dur\":5000.000,\"args\":{}}\n"
         "]}\n";
  const sim::RunData run = sim::readRun(a);
  EXPECT_TRUE(run.has_timeline);
  const sim::ModelSamples& m = run.samples.at("m");
  EXPECT_EQ(m.shard_loads.count, 2);  // one per shard and GPU; the failed one and the backend's left out
  EXPECT_DOUBLE_EQ(*m.shard_loads.meanMillis(), 0.2);
  EXPECT_EQ(m.batches.count, 2);  // batch 1 ran on two GPUs: once
  EXPECT_DOUBLE_EQ(*m.batches.meanMillis(), 0.0155);

  std::ofstream(a / "timeline.json")
      << "{\"traceEvents\":[\n{\"ph\":\"M\",\"pid\":0,\"name\":\"process_name\",\"args\":{\"name\":\"GPU 0\"}},\n"
         "{\"ph\":\"X\",\"pid\":0,\"tid\":0,\"name\":\"q\",\"cat\":\"batch\",\"ts\":0,\"dur\":1,\"args\":{}}]}\n";
  CommandResult r = runCompare(a.string() + " " + a.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find((a / "timeline.json").string() + ": traceEvents[1]: batch span 'q': model 'q' is not in summary.json"),
            std::string::npos)
      << r.err;
}

// ---- simulated runs ----

TEST(CompareCli, RunAgainstItselfHasZeroErrorEverywhere) {
  ScratchDir dir;
  const fs::path run = simulate(dir.path() / "run");
  const std::string limits = " --max-error mean=0%,p50=0%,p90=0%,p99=0%,ttft=0%,swaps=0,load=0%,batch=0%,ks=0";
  CommandResult r = runCompare(run.string() + " " + run.string() + " --json" + limits);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.err, "");
  nlohmann::json j = parseJson(r);
  ASSERT_EQ(j["models"].size(), 3u);
  std::vector<nlohmann::json> lines = {j["overall"]};
  for (const auto& m : j["models"]) lines.push_back(m);
  for (const auto& line : lines) {
    for (Metric m : sim::kAllMetrics) {
      const nlohmann::json& e = line[sim::metricName(m)];
      if (m == Metric::kStep) {  // request-level batches: no session, so no step on either side
        EXPECT_TRUE(e["a"].is_null() && e["b"].is_null() && e["error"].is_null()) << e.dump();
        continue;
      }
      ASSERT_TRUE(e["error"].is_number()) << sim::metricName(m) << ": " << e.dump();
      EXPECT_EQ(e["error"].get<double>(), 0.0) << sim::metricName(m);
      EXPECT_EQ(e["a"], e["b"]) << sim::metricName(m);
      EXPECT_EQ(e["exceeded"], false);
    }
  }
  EXPECT_GT(j["overall"]["swaps"]["a"].get<int>(), 0);
  EXPECT_GT(j["overall"]["load"]["a"].get<double>(), 0.0);
  EXPECT_GT(j["overall"]["batch"]["a"].get<double>(), 0.0);
  EXPECT_TRUE(j["exceeded"].empty());

  // The table: every error +0.00%, KS 0.0000, and the same bytes twice.
  CommandResult t = runCompare(run.string() + " " + run.string());
  EXPECT_EQ(t.exit_code, 0) << t.output;
  EXPECT_NE(t.out.find("+0.00%"), std::string::npos) << t.out;
  EXPECT_EQ(t.out.find("n/a\n"), std::string::npos) << t.out;
  EXPECT_EQ(runCompare(run.string() + " " + run.string()).out, t.out);
}

// Iteration batching: the mean step of the sessions, each session once (a TP 2 session has a span
// on each GPU); failed sessions, and sessions of timelines without step times, left out.
TEST(CompareRuns, StepTimeIsTheMeanStepOfTheSessions) {
  ScratchDir dir;
  auto write = [&](const std::string& name, const std::string& spans) {
    const fs::path run = writeRun(dir.path() / name, {{"m", 1}}, {{"m", "0.100000000"}});
    std::ofstream(run / "timeline.json") << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
                                            "{\"ph\":\"M\",\"pid\":0,\"name\":\"process_name\",\"args\":{\"name\":\"GPU 0\"}},\n"
                                            "{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"GPU 1\"}}"
                                         << spans << "]}\n";
    return run;
  };
  auto session = [](int pid, int id, int steps, const std::string& steps_us, bool ok) {
    return ",\n{\"ph\":\"X\",\"pid\":" + std::to_string(pid) +
           ",\"tid\":0,\"name\":\"m\",\"cat\":\"session\",\"ts\":0,\"dur\":900000,\"args\":{\"session\":" +
           std::to_string(id) + ",\"steps\":" + std::to_string(steps) + ",\"steps_us\":" + steps_us +
           ",\"prefill_steps\":1,\"prefill_us\":1000.000,\"max_sequences\":4,\"ok\":" + (ok ? "true" : "false") + "}}";
  };
  // A: session 1 on GPUs 0 and 1 (4 steps, 40 ms), session 2 (6 steps, 80 ms), a failed one, and
  // one from a timeline without step times: 10 steps in 120 ms, 12 ms a step.
  const fs::path a = write("a", session(0, 1, 4, "40000.000", true) + session(1, 1, 4, "40000.000", true) +
                                    session(0, 2, 6, "80000.000", true) + session(0, 3, 5, "999000.000", false) +
                                    ",\n{\"ph\":\"X\",\"pid\":0,\"tid\":0,\"name\":\"m\",\"cat\":\"session\",\"ts\":0,"
                                    "\"dur\":5,\"args\":{\"session\":4,\"steps\":3,\"max_sequences\":1,\"ok\":true}}\n");
  const sim::RunData run_a = sim::readRun(a);
  const sim::ModelSamples& m = run_a.samples.at("m");
  EXPECT_EQ(m.steps.count, 10);
  EXPECT_DOUBLE_EQ(*m.steps.meanMillis(), 12.0);
  EXPECT_EQ(m.batches.count, 0);  // sessions are not batches
  // B: 10 steps in 144 ms: +20%.
  const fs::path b = write("b", session(0, 7, 10, "144000.000", true) + "\n");
  const sim::Comparison c = sim::compareRuns(sim::readRun(a), sim::readRun(b));
  EXPECT_NEAR(*c.overall.at(Metric::kStep).error, 0.2, 1e-12);
  EXPECT_DOUBLE_EQ(*c.overall.at(Metric::kStep).b, 14.4);
  // A bad step count names the file and the event.
  const fs::path bad = write("bad", session(0, 1, -2, "1.000", true) + "\n");
  try {
    sim::readRun(bad);
    ADD_FAILURE() << "a negative step count was read";
  } catch (const sim::CompareInputError& e) {
    EXPECT_NE(std::string(e.what()).find("session 'steps' is not a count"), std::string::npos) << e.what();
  }
}

// An iteration-batching run against itself: every step error zero.
TEST(CompareCli, IterationRunAgainstItselfHasZeroStepError) {
  ScratchDir dir;
  const fs::path run = simulate(dir.path() / "run", "--set policy.batching='\"iteration\"' --set workload.output_tokens=8");
  CommandResult r = runCompare(run.string() + " " + run.string() + " --json --max-error step=0%");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json j = parseJson(r);
  EXPECT_GT(j["overall"]["step"]["a"].get<double>(), 0.0);
  EXPECT_EQ(j["overall"]["step"]["error"].get<double>(), 0.0);
  EXPECT_TRUE(j["overall"]["batch"]["a"].is_null());  // no request-level batch
}

TEST(CompareCli, LatenciesScaledByOnePointTwoGiveTwentyPercent) {
  ScratchDir dir;
  const fs::path a = simulate(dir.path() / "a");
  const fs::path b = dir.path() / "b";
  fs::copy(a, b);
  scaleLatencies(b);
  const std::string ab = a.string() + " " + b.string();
  CommandResult r = runCompare(ab + " --json --max-error mean=5%");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  nlohmann::json j = parseJson(r);
  EXPECT_NEAR(j["overall"]["mean"]["error"].get<double>(), 0.2, 1e-9);
  EXPECT_NEAR(j["overall"]["p99"]["error"].get<double>(), 0.2, 1e-9);
  for (const auto& m : j["models"]) EXPECT_NEAR(m["mean"]["error"].get<double>(), 0.2, 1e-9) << m["name"];
  EXPECT_EQ(j["overall"]["swaps"]["error"].get<double>(), 0.0);  // only latencies changed
  EXPECT_EQ(j["overall"]["ttft"]["error"].get<double>(), 0.0);
  EXPECT_GT(j["overall"]["ks"]["error"].get<double>(), 0.0);
  EXPECT_EQ(j["exceeded"].size(), 4u) << j["exceeded"].dump();  // overall and three models
  EXPECT_NE(r.err.find("exceeded: overall: mean: error +20.00% exceeds 5%"), std::string::npos) << r.err;

  CommandResult ok = runCompare(ab + " --max-error mean=25%");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.out.find("every limit met"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("+20.00%"), std::string::npos) << ok.out;
}

TEST(CompareCli, OtherPolicyDiffersAndMissingTimelineSkipsLoadAndBatch) {
  ScratchDir dir;
  const fs::path a = simulate(dir.path() / "a");
  const fs::path b = simulate(dir.path() / "b", "--set policy.name=best-serial");
  fs::remove(b / "timeline.json");
  CommandResult r = runCompare(a.string() + " " + b.string() + " --max-error load=1%");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.out.find("note: load and batch not compared: " + b.string() + "/timeline.json is missing"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.err.find("--max-error load=1% not checked"), std::string::npos) << r.err;
}

// ---- bad input: exit 2, the file named ----

TEST(CompareCli, BadInputExitsTwoNamingTheFile) {
  ScratchDir dir;
  const fs::path a = writeRun(dir.path() / "a", {{"m", 1}}, {{"m", "0.100000000"}});
  const std::string as = a.string();

  CommandResult r = runCompare(as + " " + (dir.path() / "nope").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find((dir.path() / "nope").string() + ": no such folder"), std::string::npos) << r.err;

  fs::create_directories(dir.path() / "empty");
  r = runCompare(as + " " + (dir.path() / "empty").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find((dir.path() / "empty" / "summary.json").string() + ": no such file"), std::string::npos) << r.err;

  const fs::path bad_csv = writeRun(dir.path() / "bad_csv", {{"m", 1}}, {{"m", "0.100000000"}, {"m", "0.200000000"}});
  {
    std::ofstream(bad_csv / "requests.csv", std::ios::app) << "2,m,0,0,0,0,0.1,64,1\n";
  }
  r = runCompare(as + " " + bad_csv.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find((bad_csv / "requests.csv").string() + " line 4: 9 fields, the header has 12"), std::string::npos)
      << r.err;

  const fs::path bad_number = writeRun(dir.path() / "bad_number", {{"m", 1}}, {{"m", "fast"}});
  r = runCompare(as + " " + bad_number.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("requests.csv line 2: latency_s 'fast' is not a number"), std::string::npos) << r.err;

  const fs::path no_swaps = writeRun(dir.path() / "no_swaps", {{"m", 1}}, {});
  std::ofstream(no_swaps / "summary.json") << R"({"models": [{"name": "m"}]})";
  r = runCompare(as + " " + no_swaps.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find((no_swaps / "summary.json").string() + ": $.models[0].swaps: required key is missing"),
            std::string::npos)
      << r.err;

  const fs::path stranger = writeRun(dir.path() / "stranger", {{"m", 1}}, {{"m", "0.1"}, {"z", "0.1"}});
  r = runCompare(as + " " + stranger.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("requests.csv line 3: model 'z' is not in summary.json"), std::string::npos) << r.err;

  fs::copy(a, dir.path() / "bad_timeline", fs::copy_options::recursive);
  std::ofstream(dir.path() / "bad_timeline" / "timeline.json") << "{\"traceEvents\":[\n{\"ph\":";
  r = runCompare(as + " " + (dir.path() / "bad_timeline").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find((dir.path() / "bad_timeline" / "timeline.json").string() + ": not valid JSON"), std::string::npos)
      << r.err;

  r = runCompare(as + " " + as + " --max-error latency=5%");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown metric 'latency'"), std::string::npos) << r.err;

  r = runCompare(as);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("two run folders are needed"), std::string::npos) << r.err;
}

TEST(CompareCli, ModelInOneRunOnlyIsAWarning) {
  ScratchDir dir;
  const fs::path a = writeRun(dir.path() / "a", {{"m", 1}, {"extra", 1}}, {{"m", "0.100000000"}, {"extra", "0.5"}});
  const fs::path b = writeRun(dir.path() / "b", {{"m", 1}}, {{"m", "0.100000000"}});
  CommandResult r = runCompare(a.string() + " " + b.string() + " --json --max-error mean=0%");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.err.find("warning: model 'extra' is only in A"), std::string::npos) << r.err;
  nlohmann::json j = parseJson(r);
  ASSERT_EQ(j["models"].size(), 1u);
  EXPECT_EQ(j["overall"]["mean"]["a"].get<double>(), 100.0);  // overall over the common models
  EXPECT_EQ(j["warnings"].size(), 1u);

  const fs::path other = writeRun(dir.path() / "other", {{"q", 1}}, {{"q", "0.1"}});
  r = runCompare(a.string() + " " + other.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no model in common"), std::string::npos) << r.err;
}

TEST(CompareCli, QuotedCsvFieldsWithCommasAndNewlines) {
  ScratchDir dir;
  const fs::path a = writeRun(dir.path() / "a", {{"m,1", 1}}, {});
  {
    std::ofstream csv(a / "requests.csv");
    csv << kHeader << "0,\"m,1\",0,0,0.05,0.1,0.100000000,64,1,0,1,\n"
        << "1,\"m,1\",0,0,0,0.2,0.200000000,64,1,0,0,\"refused, \"\"twice\"\"\nsecond line\"\n"
        << "2,\"m,1\",0,0,0.05,0.3,0.300000000,64,1,0,1,\n";
  }
  const sim::RunData run = sim::readRun(a);
  EXPECT_EQ(run.samples.at("m,1").latency, (std::vector<Nanos>{100'000'000, 300'000'000}));
  std::ofstream(a / "requests.csv", std::ios::app) << "3,\"m,1\"x,0,0,0,0,0,64,1,0,1,\n";
  CommandResult r = runCompare(a.string() + " " + a.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("requests.csv line 6: unexpected character after a closing quote"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace computron
