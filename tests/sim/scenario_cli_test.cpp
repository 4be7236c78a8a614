// The `computron sim` command end to end: broken scenarios give exit code 2, a message naming the
// JSON path and no output files; the same scenario and seed give byte-identical outputs.
#include <gtest/gtest.h>

#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "sim_test_util.h"
#include "tests/support/cli_runner.h"

namespace computron {
namespace {

namespace fs = std::filesystem;

using fakes::CommandResult;
using TempDir = fakes::ScratchDir;

CommandResult runCommand(const std::string& args) { return fakes::runBinary(COMPUTRON_BINARY, args); }

std::string readFile(const fs::path& p) { return fakes::readWholeFile(p); }

fs::path writeScenario(const TempDir& dir, const nlohmann::json& doc, const std::string& name = "s.json") {
  fs::path p = dir.path() / name;
  std::ofstream(p) << doc.dump(2);
  return p;
}

struct BrokenCase {
  const char* label;
  const char* set;       // --set applied to the small scenario
  const char* message;   // expected in the output
};

class BrokenScenario : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(BrokenScenario, FailsWithItsJsonPathExitCode2AndNoFiles) {
  TempDir dir;
  nlohmann::json doc = testing::smallScenario();
  fs::path out = dir.path() / "out";
  doc["outputs"]["dir"] = out.string();
  fs::path scenario = writeScenario(dir, doc);
  const BrokenCase& c = GetParam();
  CommandResult r = runCommand("sim " + scenario.string() + " --set '" + c.set + "'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(c.message), std::string::npos) << "output: " << r.output;
  EXPECT_FALSE(fs::exists(out)) << "no output files may be written";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BrokenScenario,
    ::testing::Values(
        BrokenCase{"unknown_top_key", "modles=[]", "error: $.modles: unknown key"},
        BrokenCase{"unknown_model_key", "models[0].tpp=2", "error: $.models[0].tpp: unknown key"},
        BrokenCase{"wrong_type", "models[0].tp=\"two\"", "error: $.models[0].tp: expected an integer, got string"},
        BrokenCase{"tp_not_dividing_heads", "models[0].tp=3", "error: $.models[0]"},
        BrokenCase{"missing_gpu", "models[0].gpus=[0,1,2,9]", "error: $.models[0].gpus[3]: GPU 9 does not exist"},
        BrokenCase{"gpu_twice", "models[0].gpus=[0,1,1,2]", "error: $.models[0].gpus[2]: GPU 1 is listed twice"},
        BrokenCase{"all_wrong_size", "models[0].tp=1", "error: $.models[0].gpus: \"all\" places one shard on every GPU"},
        BrokenCase{"shard_too_big", "models[0]={\"spec\":\"opt-66b\",\"gpus\":[0]}",
                   "error: $.models[0]: shard (tp 0, pp 0) holds"},
        BrokenCase{"unknown_preset", "models[0].spec=\"opt-7b\"", "error: $.models[0].spec: unknown model preset 'opt-7b'"},
        BrokenCase{"unknown_policy", "policy.name=\"fifo\"", "error: $.policy.name: unknown policy set 'fifo'"},
        BrokenCase{"negative_duration", "duration_s=-1", "error: $.duration_s: must be between 0 and 1e+07, got -1"},
        BrokenCase{"bad_max_batch", "models[0].max_batch=0", "error: $.models[0].max_batch: must be between 1 and 65536, got 0"},
        BrokenCase{"missing_workload", "workload=null", "error: $.workload"},
        BrokenCase{"missing_trace", "workload={\"type\":\"trace\",\"format\":\"azure\",\"path\":\"nope.csv\"}", "nope.csv"},
        BrokenCase{"bad_override_index", "models[5].tp=2", "error: --set models[5].tp: $.models[5] does not exist"}),
    [](const ::testing::TestParamInfo<BrokenCase>& case_info) { return std::string(case_info.param.label); });

TEST(ScenarioCli, InvalidJsonNamesLineAndColumn) {
  TempDir dir;
  fs::path p = dir.path() / "bad.json";
  std::ofstream(p) << "{\n  \"name\": \"x\",\n  \"seed\": ,\n}\n";
  CommandResult r = runCommand("sim " + p.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find(p.string() + ":3:11: invalid JSON"), std::string::npos) << r.output;
}

TEST(ScenarioCli, MissingFileAndUnknownOption) {
  CommandResult r = runCommand("sim /nonexistent/scenario.json");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("/nonexistent/scenario.json: cannot open file"), std::string::npos) << r.output;
  r = runCommand("sim --frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  r = runCommand("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown command 'frobnicate'"), std::string::npos);
}

TEST(ScenarioCli, HelpAndVersion) {
  CommandResult r = runCommand("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("sim [SCENARIO.json]"), std::string::npos);
  r = runCommand("sim --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--set"), std::string::npos);
  r = runCommand("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("computron "), std::string::npos);
}

TEST(ScenarioCli, SameScenarioAndSeedGiveByteIdenticalOutputs) {
  TempDir dir;
  nlohmann::json doc = testing::smallScenario();
  fs::path scenario = writeScenario(dir, doc);
  fs::path a = dir.path() / "a", b = dir.path() / "b", c = dir.path() / "c";
  ASSERT_EQ(runCommand("sim " + scenario.string() + " --out " + a.string()).exit_code, 0);
  ASSERT_EQ(runCommand("sim " + scenario.string() + " --out " + b.string()).exit_code, 0);
  ASSERT_EQ(runCommand("sim " + scenario.string() + " --out " + c.string() + " --set seed=8").exit_code, 0);
  for (const char* file : {"summary.json", "requests.csv", "timeline.json"}) {
    std::string first = readFile(a / file);
    ASSERT_FALSE(first.empty()) << file;
    // The output folder is not part of the configuration written into summary.json, so the files
    // of two runs compare byte for byte.
    EXPECT_EQ(first, readFile(b / file)) << file;
    EXPECT_NE(first, readFile(c / file)) << file << " should change with the seed";
  }
  nlohmann::json summary = nlohmann::json::parse(readFile(a / "summary.json"));
  nlohmann::json timeline = nlohmann::json::parse(readFile(a / "timeline.json"));  // valid Chrome trace JSON
  EXPECT_TRUE(timeline.contains("traceEvents"));
  EXPECT_EQ(summary["config"]["seed"], 7);
  const std::string rows = readFile(a / "requests.csv");
  EXPECT_EQ(summary["overall"]["requests"].get<std::int64_t>() + 1,
            static_cast<std::int64_t>(std::count(rows.begin(), rows.end(), '\n')));
}

TEST(ScenarioCli, SetOverridesAField) {
  TempDir dir;
  fs::path scenario = writeScenario(dir, testing::smallScenario());
  CommandResult r = runCommand("sim " + scenario.string() + " --no-files --json --set policy.max_loaded_models=3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json summary = nlohmann::json::parse(r.out);
  EXPECT_EQ(summary["config"]["policy"]["max_loaded_models"], 3);
  // Three models fit with a cap of three: each loads once.
  EXPECT_EQ(summary["overall"]["swaps"], 3);
}

// A sweep of the small scenario: two policies, one seed.
fs::path writeSweep(const TempDir& dir) {
  nlohmann::json scenario = testing::smallScenario();
  scenario["duration_s"] = 5;
  fs::path scenario_path = writeScenario(dir, scenario);
  nlohmann::json sweep = {{"name", "cli-test"},
                          {"scenarios", {scenario_path.string()}},
                          {"policies", {"computron", "lfu"}},
                          {"csv", (dir.path() / "sweep.csv").string()}};
  fs::path p = dir.path() / "sweep.json";
  std::ofstream(p) << sweep.dump(2);
  return p;
}

TEST(ScenarioCli, SweepOptionsParseLikeEveryCommand) {
  TempDir dir;
  const fs::path sweep = writeSweep(dir);
  CommandResult r = runCommand("sweep " + sweep.string() + " --threads abc");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("--threads"), std::string::npos) << r.err;
  r = runCommand("sweep " + sweep.string() + " --threads -3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("--threads"), std::string::npos) << r.err;
  r = runCommand("sweep " + sweep.string() + " --frobnicate");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = runCommand("sweep");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("a sweep file is needed"), std::string::npos) << r.err;
  r = runCommand("sweep " + sweep.string() + " --threads=1 --quiet");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.out.find("2 runs; CSV in"), std::string::npos) << r.out;
  EXPECT_EQ(r.err, "");
  EXPECT_TRUE(fs::exists(dir.path() / "sweep.csv"));
  // Progress into a file: plain lines, no carriage returns; the table stays on stdout.
  r = runCommand("sweep " + sweep.string() + " -j 1 --progress-every 0");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.err.find("sweep: 2/2 runs (100%)"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos);
  EXPECT_EQ(r.out.find("sweep:"), std::string::npos) << "progress never goes to stdout";
}

TEST(ScenarioCli, EveryCommandHasHelp) {
  for (const char* command : {"sim", "sweep", "presets", "replay", "bench swap"}) {
    CommandResult r = runCommand(std::string(command) + " --help");
    EXPECT_EQ(r.exit_code, 0) << command << ": " << r.output;
    EXPECT_NE(r.out.find("--help"), std::string::npos) << command << ": " << r.out;
  }
  CommandResult r = runCommand("presets --frobnicate");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos) << r.err;
  r = runCommand("sim --progress-every x");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.err.find("--progress-every"), std::string::npos) << r.err;
}

TEST(ScenarioCli, QuietSimWritesNothingOnStderr) {
  TempDir dir;
  fs::path scenario = writeScenario(dir, testing::smallScenario());
  CommandResult r = runCommand("sim " + scenario.string() + " --no-files --quiet --progress-every 0 --write-workload " +
                               (dir.path() / "w.csv").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("SLO met"), std::string::npos) << "--quiet keeps the table: " << r.out;
}

TEST(ScenarioCli, SimProgressIntoAFileIsPlainLines) {
  TempDir dir;
  fs::path scenario = writeScenario(dir, testing::smallScenario());
  fs::path out = dir.path() / "out";
  CommandResult r = runCommand("sim " + scenario.string() + " --out " + out.string() + " --progress-every 0");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.err.find("sim: 20.0/20.0 s simulated (100%)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("(finished)\n"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << "no carriage returns when stderr is not a terminal";
  EXPECT_EQ(r.out.find("sim:"), std::string::npos) << "progress never goes to stdout";
  // Nor into the output files: they equal those of a quiet run.
  fs::path quiet = dir.path() / "quiet";
  ASSERT_EQ(runCommand("sim " + scenario.string() + " --out " + quiet.string() + " --quiet").exit_code, 0);
  for (const char* file : {"summary.json", "requests.csv", "timeline.json"})
    EXPECT_EQ(readFile(out / file), readFile(quiet / file)) << file;
  // The default interval is 10 s: a short run writes no progress at all.
  r = runCommand("sim " + scenario.string() + " --no-files");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.err, "");
}

TEST(ScenarioCli, SloMetIsADashWithoutAnSlo) {
  TempDir dir;
  nlohmann::json doc = testing::smallScenario();
  doc["slo_ms"] = 0;
  fs::path scenario = writeScenario(dir, doc);
  CommandResult r = runCommand("sim " + scenario.string() + " --no-files --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.out);
  std::string line;
  int rows = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("m-", 0) != 0 && line.rfind("all ", 0) != 0) continue;
    ++rows;
    std::istringstream fields(line);
    std::vector<std::string> f{std::istream_iterator<std::string>(fields), std::istream_iterator<std::string>()};
    ASSERT_EQ(f.size(), 10u) << line;
    EXPECT_EQ(f[7], "-") << line;  // name, requests, mean, p50, p99, ttft, tpot, SLO met, swaps, GB
  }
  EXPECT_EQ(rows, 4) << r.out;
  r = runCommand("sim " + scenario.string() + " --no-files --json --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json summary = nlohmann::json::parse(r.out);
  EXPECT_TRUE(summary["overall"]["slo_attainment"].is_null());
  EXPECT_TRUE(summary["models"][0]["slo_attainment"].is_null());
  EXPECT_TRUE(summary["models"][0]["slo_ms"].is_null());
  // With an SLO, a percentage.
  r = runCommand("sim " + scenario.string() + " --no-files --json --quiet --set slo_ms=500");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  summary = nlohmann::json::parse(r.out);
  EXPECT_TRUE(summary["overall"]["slo_attainment"].is_number());
}

}  // namespace
}  // namespace computron
