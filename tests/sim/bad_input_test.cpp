// Adversarial input against the `computron` binary, one case per class of defect: whatever is
// wrong, bad input ends with exit code 2, a message naming the place (JSON path, file:line or
// option) and no output files; write errors end with exit code 1 naming the path and the reason;
// SIGINT and SIGTERM finish the files of what ran and mark the summary interrupted.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "sim_test_util.h"
#include "tests/support/cli_runner.h"
#include "tests/support/requests_csv.h"

namespace computron {
namespace {

namespace fs = std::filesystem;
using fakes::CommandResult;
using fakes::ScratchDir;

CommandResult run(const std::string& args) { return fakes::runBinary(COMPUTRON_BINARY, args); }

// Names every entry under `dir` (to show that nothing was left behind).
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The small scenario with `set` applied through the command line, its outputs in `dir`/out.
struct BadCase {
  const char* label;
  std::string args;     // after "sim SCENARIO"
  std::string message;  // expected on stderr
};

class BadScenarioInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadScenarioInput, ExitsTwoNamingThePlaceWithNoFiles) {
  ScratchDir dir;
  nlohmann::json doc = testing::smallScenario();
  doc["outputs"]["dir"] = (dir.path() / "out").string();
  const fs::path scenario = dir.path() / "s.json";
  std::ofstream(scenario) << doc.dump(2);
  const CommandResult r = run("sim " + scenario.string() + " " + GetParam().args);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find(GetParam().message), std::string::npos) << r.err;
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"s.json"}) << "no output files";
}

INSTANTIATE_TEST_SUITE_P(
    Classes, BadScenarioInput,
    ::testing::Values(
        // Runs that never end on accepted values.
        BadCase{"no_duration", "--set duration_s=0", "$.workload: a generated workload needs the scenario's duration_s"},
        BadCase{"huge_duration", "--set duration_s=1e12", "$.duration_s: must be between 0 and 1e+07"},
        BadCase{"too_many_requests", "--set duration_s=1e7 --set 'workload.rates=[1e5,1e5,1e5]'",
                "$.workload: expects 3e+12 requests"},
        BadCase{"extreme_cv", "--set workload.cv=1e300", "$.workload.cv: must be at most 100"},
        BadCase{"extreme_rate", "--set 'workload.rates=[1e300,1,1]'", "$.workload.rates[0]: must be at most 1e+06"},
        BadCase{"max_batch_near_2_31", "--set 'models[0].max_batch=2147483647'", "$.models[0].max_batch: must be between"},
        BadCase{"count_near_2_31", "--set 'models[0].count=2147483647'", "$.models[0].count: must be between"},
        BadCase{"output_tokens_max", "--set workload.output_tokens=2147483647", "$.workload.output_tokens: must be at most"},
        BadCase{"lognormal_huge_cv", R"(--set 'workload.prompt_tokens={"dist":"lognormal","mean":10,"cv":1e200}')",
                "$.workload.prompt_tokens.cv: must be at most 100"},
        // int64 nanosecond overflow from large but finite values.
        BadCase{"huge_slo", "--set slo_ms=1e300", "$.slo_ms: must be between"},
        BadCase{"huge_fixed_batch", "--set 'models[0].fixed_batch_ms=1e18'", "$.models[0].fixed_batch_ms: must be between"},
        BadCase{"tiny_bandwidth", "--set cluster.host_link_gbps=1e-300", "$.cluster.host_link_gbps: must be between"},
        BadCase{"huge_half_life", "--set policy.lfu_half_life_s=1e300", "$.policy.lfu_half_life_s: must be between"},
        // Silent truncation of integers above 2^32.
        BadCase{"tp_above_2_32", "--set 'models[0].tp=4294967298'", "$.models[0].tp: must be between 1 and 1024"},
        BadCase{"loaded_models_above_2_32", "--set policy.max_loaded_models=4294967298",
                "$.policy.max_loaded_models: must be between"},
        BadCase{"integer_above_int64", "--set seed=18446744073709551615", "$.seed: integer too large"},
        // Errors that used to escape the bad-input path.
        BadCase{"number_out_of_double_range", "--set workload.cv=1e400", "--set workload.cv: the value is a number out of range"},
        BadCase{"multipath_without_nvlink",
                "--set policy.routing=multipath --set cluster.nvlink_gbps=0",
                "$.policy.routing: multipath routing forwards shards over NVLink"},
        BadCase{"empty_out", "--out ''", "--out: must not be empty"},
        // Smaller ones.
        BadCase{"name_escapes_out", "--set name=../../escaped", "$.name: must be 1 to 128 letters"},
        BadCase{"name_with_slash", "--set name=a/b", "$.name:"},
        BadCase{"null_value", "--set workload.cv=null", "$.workload.cv: null is not a value here"},
        BadCase{"deep_set_value", "--set 'workload.x=" + std::string(100, '[') + std::string(100, ']') + "'",
                "nested deeper than 64 levels"},
        BadCase{"nul_in_key", R"(--set 'workload={"type":"gamma","a\u0000b":1}')", "$.workload.a\\x00b: unknown key"}),
    [](const ::testing::TestParamInfo<BadCase>& param) { return std::string(param.param.label); });

// The scenario file itself: nesting that would exhaust the stack, duplicate keys, 1e400.
TEST(BadScenarioFile, DeepDuplicateAndOutOfRangeJsonExitTwo) {
  ScratchDir dir;
  const fs::path deep = dir.path() / "deep.json";
  std::ofstream(deep) << std::string(10000, '[') << std::string(10000, ']');
  CommandResult r = run("sim " + deep.string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find(deep.string() + ": $[0][0]"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("nested deeper than 64 levels"), std::string::npos) << r.err;

  nlohmann::json doc = testing::smallScenario();
  std::string text = doc.dump(2);
  text.insert(text.find("\"seed\""), "\"seed\": 3,\n  ");
  const fs::path dup = dir.path() / "dup.json";
  std::ofstream(dup) << text;
  r = run("sim " + dup.string() + " --no-files");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find(dup.string() + ": $.seed: duplicate key"), std::string::npos) << r.err;

  const fs::path big = dir.path() / "big.json";
  std::ofstream(big) << "{\n  \"seed\": 1e400\n}\n";
  r = run("sim " + big.string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find(big.string() + ":2:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("number overflow"), std::string::npos) << r.err;
}

// A trace whose times would overflow int64 nanoseconds once replayed.
TEST(BadTraces, TimesBeyondTheBoundNameFileAndLine) {
  ScratchDir dir;
  std::ofstream(dir.path() / "ours.csv") << "id,model,arrival_ns,prompt_tokens,output_tokens\n0,m-0,0,1,1\n"
                                            "1,m-0,9000000000000000000,1,1\n";
  std::ofstream(dir.path() / "azure.csv") << "TIMESTAMP,ContextTokens,GeneratedTokens\n1900-01-01 00:00:00,1,1\n"
                                             "2199-12-31 23:59:59,1,1\n";
  std::ofstream(dir.path() / "oneline.csv") << std::string(200000, 'x');
  nlohmann::json doc = testing::smallScenario();
  const fs::path scenario = dir.path() / "s.json";
  std::ofstream(scenario) << doc.dump(2);
  struct Case {
    std::string workload, message;
  };
  for (const Case& c : {Case{R"({"type":"trace","format":"computron","path":"ours.csv"})", "ours.csv:3: arrival_ns is too large"},
                        Case{R"({"type":"trace","format":"azure","path":"azure.csv"})", "azure.csv:3: more than 10000000 s"},
                        Case{R"({"type":"trace","format":"azure","path":"oneline.csv"})", "oneline.csv:1: line longer than"}}) {
    const CommandResult r = run("sim " + scenario.string() + " --no-files --set 'workload=" + c.workload + "'");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
}

// Write errors: a full device and a folder in the way.
TEST(WriteErrors, FullDiskExitsOneNamingThePathAndAFolderIsBadInput) {
  ScratchDir dir;
  CommandResult r = run("sim --no-files -q --write-workload /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.err.find("/dev/full: cannot write (No space left on device)"), std::string::npos) << r.err;

  r = run("sim --no-files -q --write-workload " + dir.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("--write-workload " + dir.path().string() + ": is a folder"), std::string::npos) << r.err;

  const fs::path file = dir.path() / "a-file";
  std::ofstream(file) << "x";
  r = run("sim -q --set duration_s=2 --out " + file.string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find(file.string() + ": exists and is not a folder"), std::string::npos) << r.err;
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"a-file"});
}

// A failed run leaves the outputs of the last good run as they were: no mix of old and new.
TEST(WholeOrAbsent, FailedRunKeepsOldOutputsAndLeavesNoTemporaries) {
  ScratchDir dir;
  const fs::path out = dir.path() / "out";
  CommandResult r = run("sim -q --set duration_s=5 --out " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string summary = fakes::readWholeFile(out / "summary.json");
  r = run("sim -q --set duration_s=6 --set 'models[0].gpus=[0,1,2,9]' --out " + out.string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(fakes::readWholeFile(out / "summary.json"), summary);
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"out"});
  // A second good run replaces the folder whole.
  r = run("sim -q --set duration_s=6 --set 'outputs.timeline=false' --out " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(entries(out), (std::vector<std::string>{"requests.csv", "summary.json"}));
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"out"});
}

// Lets the child run 300 ms more, sends it `signal` and expects it to exit on its own with
// 128 + signal (not to be killed by it).
void stopAndExpectExit(pid_t child, int signal) {
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(child, signal);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 128 + signal);
}

// SIGINT and SIGTERM: exit 128 + signal, files whole, the summary marked interrupted. `args`
// follow the binary; "OUT" stands for the output folder.
void expectCleanStop(int signal, std::vector<std::string> args, const ScratchDir& dir) {
  const fs::path out = dir.path() / "out";
  for (auto& a : args)
    if (a == "OUT") a = out.string();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::vector<char*> argv{const_cast<char*>(COMPUTRON_BINARY)};
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int devnull = ::open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execv(COMPUTRON_BINARY, argv.data());
    _exit(127);
  }
  // Wait until the run has served requests: its staged requests.csv has grown past the header (the
  // stream writes a buffer's worth of rows at a time). A fixed wait is not enough on a loaded
  // machine, where setting up can take seconds after the staged folder appears. At most 120 s.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool served = false;
  while (!served && std::chrono::steady_clock::now() < give_up) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir.path(), ec)) {
      if (e.path().filename().string().rfind("out.tmp-", 0) != 0) continue;
      const auto size = fs::file_size(e.path() / "requests.csv", ec);
      served |= !ec && size > 512;
    }
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(served) << "no request served within 120 s";
  stopAndExpectExit(child, signal);
  if (::testing::Test::HasFatalFailure()) return;
  const nlohmann::json summary = nlohmann::json::parse(fakes::readWholeFile(out / "summary.json"));
  EXPECT_EQ(summary.value("interrupted", false), true);
  EXPECT_GT(summary["overall"]["requests"].get<std::int64_t>(), 0) << "stopped before any request";
  EXPECT_TRUE(nlohmann::json::accept(fakes::readWholeFile(out / "timeline.json")));
  const std::string text = fakes::readWholeFile(out / "requests.csv");
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n') << "a row cut short";
  fakes::RequestsCsv csv;
  ASSERT_NO_THROW(csv = fakes::parseRequestsCsv(text)) << "every row as wide as the header";
  std::set<std::string> ids;
  for (std::size_t i = 0; i < csv.rows.size(); ++i) EXPECT_TRUE(ids.insert(csv.at(i, "id")).second) << "twice: " << csv.at(i, "id");
  EXPECT_EQ(static_cast<std::int64_t>(csv.rows.size()), summary["overall"]["requests"].get<std::int64_t>());
}

void expectSimStops(int signal) {
  ScratchDir dir;
  expectCleanStop(signal, {"sim", "-q", "--set", "duration_s=1000000", "--out", "OUT"}, dir);
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"out"});
}

TEST(Signals, SigintFinishesTheFilesAndExits130) { expectSimStops(SIGINT); }
TEST(Signals, SigtermFinishesTheFilesAndExits143) { expectSimStops(SIGTERM); }

// replay runs in the runtime module (where built as one), which holds its own copy of the stop
// flag: the signal must still stop the replay loop, and every request that arrived ends once.
void expectReplayStops(int signal) {
  ScratchDir dir;
  const nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "stop", "seed": 1, "duration_s": 1000, "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "m", "spec": "opt-125m", "count": 3, "gpus": [0], "max_batch": 4}],
    "workload": {"type": "gamma", "rates": [20, 5, 5], "cv": 1, "prompt_tokens": 8, "output_tokens": 4},
    "policy": {"name": "computron", "max_loaded_models": 2}})");
  std::ofstream(dir.path() / "s.json") << doc.dump();
  expectCleanStop(signal,
                  {"replay", (dir.path() / "s.json").string(), "--device", "host", "-q", "--placeholder-ms", "1",
                   "--out", "OUT"},
                  dir);
  EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"out", "s.json"}));
}

TEST(Signals, ReplaySigintFinishesTheFilesAndExits130) { expectReplayStops(SIGINT); }
TEST(Signals, ReplaySigtermFinishesTheFilesAndExits143) { expectReplayStops(SIGTERM); }

// serve drains on SIGINT/SIGTERM (it writes no files) and says why it ended in its exit code.
void expectServeStops(int signal) {
  ScratchDir dir;
  std::ofstream(dir.path() / "s.json") << R"({"name": "serve", "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "m", "spec": "opt-125m", "count": 2, "gpus": [0]}],
    "workload": {"type": "alternating", "requests": 1}})";
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string scenario = (dir.path() / "s.json").string();
    dup2(out[1], 1);
    close(out[0]);
    const int devnull = ::open("/dev/null", O_WRONLY);
    dup2(devnull, 2);
    execl(COMPUTRON_BINARY, COMPUTRON_BINARY, "serve", scenario.c_str(), "--device", "host", "--port", "0", "-q",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  // The port line says the server listens (and its signal handling is set up right after).
  std::string line;
  char c = 0;
  while (line.find('\n') == std::string::npos && read(out[0], &c, 1) == 1) line += c;
  close(out[0]);
  EXPECT_NE(line.find("serve: listening on http://"), std::string::npos) << line;
  stopAndExpectExit(child, signal);
}

TEST(Signals, ServeSigintDrainsAndExits130) { expectServeStops(SIGINT); }
TEST(Signals, ServeSigtermDrainsAndExits143) { expectServeStops(SIGTERM); }

// Sweeps: numbers that are not numbers, threads above 2^32, and a full disk.
TEST(BadSweep, RatesThreadsAndCsvWrites) {
  ScratchDir dir;
  nlohmann::json scenario = testing::smallScenario();
  scenario["duration_s"] = 2;
  std::ofstream(dir.path() / "s.json") << scenario.dump(2);
  auto sweep = [&](const nlohmann::json& doc) {
    const fs::path p = dir.path() / "sweep.json";
    std::ofstream(p) << doc.dump(2);
    return p.string();
  };
  nlohmann::json doc = {{"name", "t"}, {"scenarios", {"s.json"}}, {"policies", {"computron"}},
                        {"grid", {{"rate_scale", {1, "fast"}}}}, {"csv", (dir.path() / "t.csv").string()}};
  CommandResult r = run("sweep -q " + sweep(doc));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("$.grid.rate_scale[1]: expected a number, got string"), std::string::npos) << r.err;

  doc["grid"] = {{"rate_scale", {1}}};
  doc["threads"] = 4294967297LL;
  r = run("sweep -q " + sweep(doc));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("$.threads: must be between 0 and 1024"), std::string::npos) << r.err;

  doc.erase("threads");
  doc["name"] = "../up";
  r = run("sweep -q " + sweep(doc));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("$.name: must be 1 to 128 letters"), std::string::npos) << r.err;

  doc["name"] = "t";
  r = run("sweep -q --csv /dev/full " + sweep(doc));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.err.find("/dev/full: cannot write (No space left on device)"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.path() / "t.csv"));
}

// Faults injected on the host-memory device: a failed load, a corrupt one, a failed batch and a
// stalled worker; every request that arrived ends exactly once, failures with their reason.
TEST(ReplayFaults, EveryRequestAccountedForExactlyOnce) {
  ScratchDir dir;
  const nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "inject", "seed": 1, "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "m", "spec": "opt-125m", "count": 3, "tp": 2, "gpus": [0, 1], "max_batch": 2}],
    "workload": {"type": "alternating", "requests": 9, "prompt_tokens": 8, "output_tokens": 2},
    "policy": {"name": "computron", "max_loaded_models": 1}})");
  const fs::path scenario = dir.path() / "s.json";
  std::ofstream(scenario) << doc.dump();
  const fs::path out = dir.path() / "out";
  const CommandResult r = run("replay " + scenario.string() + " --device host -q --out " + out.string() +
                              " --inject fail-load=m-1@1 --inject corrupt-load=m-2 --inject fail-batch=m-0@2"
                              " --inject stall=0:20");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json summary = nlohmann::json::parse(fakes::readWholeFile(out / "summary.json"));
  EXPECT_EQ(summary["runtime"]["arrivals"], 9);
  EXPECT_EQ(summary["overall"]["requests"], 9);
  EXPECT_EQ(summary["overall"]["served"].get<int>() + summary["overall"]["failed"].get<int>(), 9);
  fakes::RequestsCsv csv;
  ASSERT_NO_THROW(csv = fakes::parseRequestsCsv(fakes::readWholeFile(out / "requests.csv")));
  std::set<std::string> ids;
  int failed_load = 0, corrupt = 0, failed_batch = 0;
  for (std::size_t i = 0; i < csv.rows.size(); ++i) {
    const std::string& id = csv.at(i, "id");
    const std::string& error = csv.at(i, "error");
    EXPECT_TRUE(ids.insert(id).second) << "twice: " << id;
    failed_load += error.find("failed on its") != std::string::npos;
    corrupt += error.find("checksum") != std::string::npos;
    failed_batch += error.find("injected fault (fail-batch=m-0@2)") != std::string::npos;
    if (csv.at(i, "ok") == "0" && error.empty()) ADD_FAILURE() << "a failure without a reason: request " << id;
  }
  EXPECT_EQ(ids.size(), 9u);
  EXPECT_EQ(failed_load, 1);
  EXPECT_EQ(corrupt, 3);  // every load of m-2 arrives corrupt
  EXPECT_EQ(failed_batch, 1);
}

TEST(ReplayFaults, BadInjectionsAndOptionsAreUsageErrors) {
  ScratchDir dir;
  const fs::path scenario = dir.path() / "s.json";
  nlohmann::json doc = testing::smallScenario();
  std::ofstream(scenario) << doc.dump();
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"--inject fail-load=nope", "--inject fail-load=nope: no model named 'nope'"},
           {"--inject stall=7:10", "--inject stall=7:10: GPU must be an index from 0 to 3"},
           {"--inject fail-batch=m-0@0", "N must be an integer from 1"},
           {"--inject corrupt-load=m-0 --no-verify", "which --no-verify turns off"},
           {"--chunk-mib -5", "--chunk-mib: must be 1 to 4096"},
           {"--time-limit-s 1e300", "--time-limit-s: must be 0.001 to 1e7"},
           {"--threads 4294967297", "--threads"}}) {
    const CommandResult r = run("replay " + scenario.string() + " --device host --no-files " + args);
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.output;
    EXPECT_NE(r.err.find(message), std::string::npos) << args << ": " << r.err;
  }
}

// The outcome of a replay under injected faults: every request once, and how many failed for
// each reason (substrings of requests.csv rows).
struct FaultOutcome {
  int arrivals = -1;
  std::map<std::string, int> failures;
};

FaultOutcome replayWithFaults(const nlohmann::json& doc, const std::string& args, const std::vector<std::string>& reasons) {
  ScratchDir dir;
  const fs::path scenario = dir.path() / "s.json";
  std::ofstream(scenario) << doc.dump();
  const fs::path out = dir.path() / "out";
  const CommandResult r = run("replay " + scenario.string() + " --device host -q --out " + out.string() + " " + args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  FaultOutcome outcome;
  if (r.exit_code != 0) return outcome;
  const nlohmann::json summary = nlohmann::json::parse(fakes::readWholeFile(out / "summary.json"));
  outcome.arrivals = summary["runtime"]["arrivals"].get<int>();
  EXPECT_EQ(summary["overall"]["requests"].get<int>(), outcome.arrivals);
  EXPECT_EQ(summary["overall"]["served"].get<int>() + summary["overall"]["failed"].get<int>(), outcome.arrivals);
  fakes::RequestsCsv csv;
  try {
    csv = fakes::parseRequestsCsv(fakes::readWholeFile(out / "requests.csv"));
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
    return outcome;
  }
  std::set<std::string> ids;
  for (std::size_t i = 0; i < csv.rows.size(); ++i) {
    EXPECT_TRUE(ids.insert(csv.at(i, "id")).second) << "twice: " << csv.at(i, "id");
    const std::string& error = csv.at(i, "error");
    for (const std::string& reason : reasons) outcome.failures[reason] += error.find(reason) != std::string::npos;
  }
  EXPECT_EQ(static_cast<int>(ids.size()), outcome.arrivals);
  return outcome;
}

nlohmann::json faultScenario() {
  return nlohmann::json::parse(R"({
    "name": "faults", "seed": 1, "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "m", "spec": "opt-125m", "count": 3, "tp": 2, "gpus": [0, 1], "max_batch": 2}],
    "workload": {"type": "alternating", "requests": 9, "prompt_tokens": 8, "output_tokens": 2},
    "policy": {"name": "computron", "max_loaded_models": 1}})");
}

// A scenario's `faults` section acts as --inject does, and --inject adds to it.
TEST(ScenarioFaults, SectionAndInjectionsTogetherAccountForEveryRequestOnce) {
  nlohmann::json doc = faultScenario();
  doc["faults"] = nlohmann::json::parse(R"([
    {"kind": "fail-load", "model": "m-1", "nth": 1},
    {"kind": "corrupt-load", "model": "m-2"},
    {"kind": "stall", "gpu": 0, "ms": 20}])");
  const std::vector<std::string> reasons = {"injected fault (fail-load=m-1@1)", "checksum",
                                            "injected fault (fail-batch=m-0@2)"};
  const FaultOutcome o = replayWithFaults(doc, "--inject fail-batch=m-0@2", reasons);
  EXPECT_EQ(o.arrivals, 9);
  EXPECT_EQ(o.failures.at(reasons[0]), 1);
  EXPECT_EQ(o.failures.at(reasons[1]), 3);  // every load of m-2 arrives corrupt
  EXPECT_EQ(o.failures.at(reasons[2]), 1);

  // The same faults from the command line alone give the same outcome.
  const FaultOutcome same = replayWithFaults(
      faultScenario(),
      "--inject fail-load=m-1@1 --inject corrupt-load=m-2 --inject stall=0:20 --inject fail-batch=m-0@2",
      {"failed on its", "checksum", "injected fault (fail-batch=m-0@2)"});
  EXPECT_EQ(same.arrivals, 9);
  EXPECT_EQ(same.failures.at("failed on its"), 1);
  EXPECT_EQ(same.failures.at("checksum"), 3);
  EXPECT_EQ(same.failures.at("injected fault (fail-batch=m-0@2)"), 1);
}

// Without faults nothing fails; the Nth occurrence counts per model.
TEST(ScenarioFaults, NthLoadOfOneModelOnly) {
  nlohmann::json doc = faultScenario();
  const FaultOutcome clean = replayWithFaults(doc, "", {"injected"});
  EXPECT_EQ(clean.arrivals, 9);
  EXPECT_EQ(clean.failures.at("injected"), 0);
  doc["faults"] = nlohmann::json::parse(R"([{"kind": "fail-load", "model": "m-0", "nth": 2}])");
  const FaultOutcome o = replayWithFaults(doc, "", {"injected fault (fail-load=m-0@2)", "injected"});
  EXPECT_EQ(o.failures.at("injected fault (fail-load=m-0@2)"), 1);
  EXPECT_EQ(o.failures.at("injected"), 1);
}

TEST(ScenarioFaults, BadSectionsExitTwoNamingThePath) {
  for (const auto& [faults, message] : std::vector<std::pair<std::string, std::string>>{
           {R"({"kind": "fail-load"})", "$.faults: expected an array"},
           {R"([{"kind": "explode", "model": "m-0"}])", "$.faults[0].kind: unknown fault 'explode'"},
           {R"([{"kind": "fail-load", "model": "nope"}])", "$.faults[0].model: no model named 'nope'"},
           {R"([{"kind": "fail-batch"}])", "$.faults[0].model: required key is missing"},
           {R"([{"kind": "fail-load", "model": "m-0", "nth": 0}])", "$.faults[0].nth: must be between 1 and"},
           {R"([{"kind": "fail-load", "model": "m-0", "ms": 5}])", "$.faults[0].ms: applies to stall faults only"},
           {R"([{"kind": "stall", "gpu": 4, "ms": 5}])", "$.faults[0].gpu: must be between 0 and 3"},
           {R"([{"kind": "stall", "gpu": 0, "ms": 0}])", "$.faults[0].ms: must be between 1 and 3600000"},
           {R"([{"kind": "stall", "gpu": 0, "ms": 5, "model": "m-0"}])", "$.faults[0].model: a stall names a GPU"},
           {R"([{"kind": "stall", "gpu": 0, "ms": 5, "when": 1}])", "$.faults[0].when: unknown key"}}) {
    ScratchDir dir;
    nlohmann::json doc = faultScenario();
    doc["faults"] = nlohmann::json::parse(faults);
    doc["outputs"] = {{"dir", (dir.path() / "out").string()}};
    std::ofstream(dir.path() / "s.json") << doc.dump();
    for (const char* command : {"replay", "sim"}) {
      const std::string extra = std::string(command) == "replay" ? " --device host" : "";
      const CommandResult r = run(std::string(command) + " " + (dir.path() / "s.json").string() + extra + " -q");
      EXPECT_EQ(r.exit_code, 2) << command << " " << faults << ": " << r.output;
      EXPECT_NE(r.err.find(message), std::string::npos) << command << " " << faults << ": " << r.err;
      EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"s.json"}) << "no output files";
    }
  }
  // A corrupt load needs the checksum.
  ScratchDir dir;
  nlohmann::json doc = faultScenario();
  doc["faults"] = nlohmann::json::parse(R"([{"kind": "corrupt-load", "model": "m-1"}])");
  std::ofstream(dir.path() / "s.json") << doc.dump();
  const CommandResult r = run("replay " + (dir.path() / "s.json").string() + " --device host --no-files --no-verify");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("$.faults[0] (corrupt-load=m-1): a corrupt load is found by the checksum, which --no-verify turns off"),
            std::string::npos)
      << r.err;
}

// The simulator has no faults: it runs the scenario without them, says so, and writes the same
// files as without the section (but the effective configuration in summary.json).
TEST(ScenarioFaults, SimWarnsAndRunsWithoutThem) {
  ScratchDir dir;
  nlohmann::json doc = faultScenario();
  const fs::path plain = dir.path() / "plain.json";
  std::ofstream(plain) << doc.dump();
  doc["faults"] = nlohmann::json::parse(R"([{"kind": "fail-batch", "model": "m-0"}, {"kind": "stall", "gpu": 1, "ms": 9}])");
  const fs::path faulty = dir.path() / "faulty.json";
  std::ofstream(faulty) << doc.dump();
  CommandResult r = run("sim -q " + plain.string() + " --out " + (dir.path() / "a").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.err, "");
  r = run("sim -q " + faulty.string() + " --out " + (dir.path() / "b").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.err,
            "warning: $.faults: the simulator ignores the scenario's 2 fault(s); they apply to `computron replay` and "
            "`computron serve` only\n");
  EXPECT_EQ(fakes::readWholeFile(dir.path() / "a" / "requests.csv"), fakes::readWholeFile(dir.path() / "b" / "requests.csv"));
}

}  // namespace
}  // namespace computron
