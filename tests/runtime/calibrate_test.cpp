// `computron calibrate` on the host-memory device with the placeholder execution: the whole
// measuring path (host store, loads of every route, batches, reloads, the profile written whole)
// runs without a GPU. The checks are on the profile's shape, never on the times.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/cli/cli.h"
#include "tests/support/cli_runner.h"
#if __has_include("common/profile.h")
#include "common/profile.h"
#define COMPUTRON_TEST_PROFILE_READER 1
#endif

namespace computron::runtime {
namespace {

struct CalibrateRun {
  int exit_code = -1;
  std::string out, err;
};

// calibrateMain in this process, stdout and stderr captured.
CalibrateRun calibrate(std::vector<std::string> args) {
  args.insert(args.begin(), "calibrate");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  CalibrateRun r;
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  r.exit_code = calibrateMain(static_cast<int>(args.size()), argv.data());
  r.err = testing::internal::GetCapturedStderr();
  r.out = testing::internal::GetCapturedStdout();
  return r;
}

nlohmann::json readJson(const std::filesystem::path& path) { return nlohmann::json::parse(fakes::readWholeFile(path)); }

void expectGrid(const nlohmann::json& grid, const std::string& tokens_key, const std::vector<int>& batch,
                const std::vector<int>& tokens) {
  EXPECT_EQ(grid["batch"].get<std::vector<int>>(), batch);
  EXPECT_EQ(grid[tokens_key].get<std::vector<int>>(), tokens);
  ASSERT_EQ(grid["ms"].size(), batch.size());
  for (const auto& row : grid["ms"]) {
    ASSERT_EQ(row.size(), tokens.size());
    for (const auto& v : row) {
      EXPECT_TRUE(std::isfinite(v.get<double>()));
      EXPECT_GT(v.get<double>(), 0);
    }
  }
}

const std::vector<std::string> kSmallGrid = {"--device", "host", "--batches", "1,2", "--prompt-tokens", "8,32",
                                             "--contexts", "8,16", "--decode-tokens", "4", "--repeats", "1",
                                             "--warmup", "1"};

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

TEST(Calibrate, HostDeviceWritesTheRequestedGridsAndLinks) {
  fakes::ScratchDir dir;
  const auto profile_path = dir.path() / "sub" / "profile.json";
  const CalibrateRun r = calibrate(with(kSmallGrid, {"--models", "opt-125m", "--layouts", "1x1,2x1", "--out", profile_path.string()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("calibrate ["), std::string::npos) << "progress lines on stderr";
  // The grid holds every batch size up to max_batch (2): no fresh size to time a graph's capture.
  EXPECT_NE(r.err.find("opt-125m TP=1 PP=1: decode graph capture not measured"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("opt-125m TP=2 PP=1"), std::string::npos) << r.out;
  // Prompts of 8 and 32 tokens: too short for the prefill shape, and the table says so.
  EXPECT_NE(r.out.find("prefill shape: not measured (the largest batch needs two prompts of at least 256 tokens)"),
            std::string::npos)
      << r.out;

  const nlohmann::json p = readJson(profile_path);
  EXPECT_EQ(p["format"], "computron-profile");
  EXPECT_EQ(p["version"], 1);
  const nlohmann::json& prov = p["provenance"];
  for (const char* key : {"tool", "date", "build", "host", "device", "execution", "gpu", "gpu_count", "driver",
                          "cuda_runtime", "repeats", "warmup", "gap_ms", "decode_tokens", "max_context", "seconds"})
    EXPECT_TRUE(prov.contains(key)) << key;
  EXPECT_EQ(prov["tool"], "computron calibrate");
  // The command line, quoted as a shell takes it back (`profile merge` copies it into runs).
  ASSERT_TRUE(prov.contains("command"));
  EXPECT_EQ(prov["command"].get<std::string>().rfind("computron calibrate ", 0), 0u) << prov["command"];
  EXPECT_NE(prov["command"].get<std::string>().find("--repeats 1"), std::string::npos) << prov["command"];
  EXPECT_EQ(prov["device"], "host");
  EXPECT_EQ(prov["execution"], "placeholder");
  EXPECT_EQ(prov["gpu_count"], 2);
  EXPECT_EQ(prov["repeats"], 1);
  EXPECT_EQ(prov["warmup"], 1);
  EXPECT_EQ(prov["gap_ms"], 0);  // no idle gaps on the host device (no power limit to wait out)
  EXPECT_EQ(prov["decode_tokens"], 4);
  EXPECT_EQ(prov["max_context"], 33);  // the grids' largest request: 32 prompt tokens + 1
  ASSERT_TRUE(prov.contains("host_store"));
  EXPECT_GT(prov["host_store"]["bytes"].get<std::int64_t>(), 0);
  ASSERT_TRUE(p.contains("realtime"));
  EXPECT_GE(p["realtime"]["wake_ms"].get<double>(), 0.0);

  ASSERT_TRUE(p.contains("links"));
  const nlohmann::json& links = p["links"];
  for (const char* key : {"host_link_gbps", "nvlink_gbps"}) {
    ASSERT_TRUE(links.contains(key)) << key;
    EXPECT_GT(links[key].get<double>(), 0) << key;
  }
  for (const char* key : {"host_link_latency_us", "evict_us"}) {
    ASSERT_TRUE(links.contains(key)) << key;
    EXPECT_GE(links[key].get<double>(), 0) << key;
  }
  std::set<std::string> routes;
  std::set<int> concurrent;
  for (const auto& m : links["measurements"]) {
    routes.insert(m["route"].get<std::string>());
    concurrent.insert(m["concurrent"].get<int>());
    EXPECT_GT(m["bytes"].get<std::int64_t>(), 0);
    EXPECT_GE(m["ms"].get<double>(), 0);
  }
  EXPECT_EQ(routes, (std::set<std::string>{"direct", "direct-same-gpu", "multipath", "from_device", "evict"}));
  // Two loads issued together onto GPU 0: whether they ran in issue order (either answer is a
  // measurement; the host device's copies decide it).
  ASSERT_TRUE(links.contains("loads_in_order"));
  EXPECT_TRUE(links["loads_in_order"].is_boolean());
  EXPECT_EQ(concurrent, (std::set<int>{1, 2}));

  ASSERT_EQ(p["models"].size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const nlohmann::json& m = p["models"][i];
    EXPECT_EQ(m["spec"], "opt-125m");
    EXPECT_EQ(m["tp"], i == 0 ? 1 : 2);
    EXPECT_EQ(m["pp"], 1);
    expectGrid(m["prefill"], "prompt_tokens", {1, 2}, {8, 32});
    expectGrid(m["decode"], "context", {1, 2}, {10, 18});  // C + decode tokens / 2
    EXPECT_GT(m["batch_tail_ms"].get<double>(), 0);
    EXPECT_GE(m["first_batch_extra_ms"].get<double>(), 0);
    EXPECT_EQ(m["decode_graph_ms"].get<double>(), 0);
  }
#ifdef COMPUTRON_TEST_PROFILE_READER
  const Profile read = readProfileFile(profile_path.string());
  ASSERT_NE(read.find("opt-125m", 2, 1), nullptr);
  EXPECT_TRUE(read.links.host_link_gbps.has_value());
#endif
  // Written whole: nothing staged is left beside it.
  for (const auto& entry : std::filesystem::directory_iterator(profile_path.parent_path()))
    EXPECT_EQ(entry.path().filename(), "profile.json");
}

TEST(Calibrate, ScenarioModelsCapTheBatchGridAndNoLoadsLeavesLinksOut) {
  fakes::ScratchDir dir;
  const auto scenario = dir.path() / "scenario.json";
  std::ofstream(scenario) << R"({
    "name": "calibrate-test", "duration_s": 1, "cluster": {"preset": "h200x2"},
    "models": [{"name": "small", "spec": "opt-125m", "count": 2, "tp": 1, "pp": 1, "max_batch": 3}],
    "workload": {"type": "gamma", "rates": [1, 1], "cv": 1, "prompt_tokens": 8, "output_tokens": 1}
  })";
  const auto profile_path = dir.path() / "profile.json";
  const CalibrateRun r = calibrate({scenario.string(), "--device", "host", "--batches", "1,2,4", "--prompt-tokens", "8,32", "--contexts",
                           "8,16", "--decode-tokens", "4", "--repeats", "1", "--warmup", "0", "--no-loads", "-q", "--out",
                           profile_path.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "") << "--quiet";
  // max_batch 3: the grid stops at 2, and size 3 (fresh) times a decode graph's capture.
  const CalibrateRun loud = calibrate({scenario.string(), "--device", "host", "--batches", "1,2,4", "--prompt-tokens", "8,32",
                                       "--contexts", "8,16", "--decode-tokens", "4", "--repeats", "1", "--warmup", "0",
                                       "--no-loads", "--out", (dir.path() / "loud.json").string()});
  ASSERT_EQ(loud.exit_code, 0) << loud.err;
  EXPECT_NE(loud.err.find("opt-125m TP=1 PP=1: decode graph at B=3: first decode "), std::string::npos) << loud.err;
  EXPECT_EQ(loud.err.find("decode graph at B=2"), std::string::npos) << "grid sizes are not fresh";
  const nlohmann::json p = readJson(profile_path);
  EXPECT_FALSE(p.contains("links"));
  ASSERT_EQ(p["models"].size(), 1u) << "the two copies share one layout";
  expectGrid(p["models"][0]["prefill"], "prompt_tokens", {1, 2}, {8, 32});
  expectGrid(p["models"][0]["decode"], "context", {1, 2}, {10, 18});
  EXPECT_GE(p["models"][0]["decode_graph_ms"].get<double>(), 0);
#ifdef COMPUTRON_TEST_PROFILE_READER
  EXPECT_NE(readProfileFile(profile_path.string()).find("opt-125m", 1, 1), nullptr);
#endif
}

TEST(Calibrate, BadOptionsExitTwoNamingTheOption) {
  fakes::ScratchDir dir;
  const std::string out = (dir.path() / "p.json").string();
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{"--device", "host"}, "--models"},
      {{"--device", "host", "--models", "opt-nope"}, "--models"},
      {{"--device", "host", "--models", "opt-125m,opt-125m"}, "--models"},
      {{"--device", "host", "--models", "opt-125m", "--layouts", "2"}, "--layouts"},
      {{"--device", "host", "--models", "opt-125m", "--layouts", "0x1"}, "--layouts"},
      {{"--device", "host", "--models", "opt-125m", "--layouts", "4x1"}, "--layouts"},  // h200x2 has two GPUs
      {{"--device", "host", "--models", "opt-125m", "--layouts", "5x1", "--set", "cluster.preset=h200x4"}, "--layouts"},
      {{"--device", "host", "--models", "opt-125m", "--batches", "2,1"}, "--batches"},
      {{"--device", "host", "--models", "opt-125m", "--batches", "1,1"}, "--batches"},
      {{"--device", "host", "--models", "opt-125m", "--prompt-tokens", "8,0"}, "--prompt-tokens"},
      {{"--device", "host", "--models", "opt-125m", "--contexts", "8,x"}, "--contexts"},
      {{"--device", "host", "--models", "opt-125m", "--decode-tokens", "1"}, "--decode-tokens"},
      {{"--device", "host", "--models", "opt-125m", "--repeats", "0"}, "--repeats"},
      {{"--device", "host", "--models", "opt-125m", "--gap-ms", "-1"}, "--gap-ms"},
      {{"--device", "host", "--models", "opt-125m", "--gap-ms", "-2"}, "--gap-ms"},
      {{"--device", "host", "--models", "opt-125m", "--gap-ms", "60001"}, "--gap-ms"},
      {{"--device", "host", "--models", "opt-125m", "--prompt-tokens", "64", "--max-context", "64"}, "--prompt-tokens"},
      {{"--device", "host", "--models", "opt-125m", "--prompt-tokens", "8", "--contexts", "60", "--max-context", "64"},
       "--contexts"},
      {{"--device", "host", "--models", "opt-125m", "--prompt-tokens", "4096"}, "--prompt-tokens"},  // 2048 positions
      {{"--device", "host", "--models", "opt-125m", "--execution", "real"}, "--execution"},
      {{"--device", "host", "--models", "opt-125m", "--execution", "fast"}, "--execution"},
      {{"--device", "tpu", "--models", "opt-125m"}, "--device"},
      {{"--device", "host", "--models", "opt-125m", "--no-such-option"}, "no-such-option"},
  };
  for (const Case& c : cases) {
    const CalibrateRun r = calibrate(with(c.args, {"--out", out}));
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    EXPECT_EQ(r.exit_code, 2) << joined << "\n" << r.err;
    EXPECT_NE(r.err.find(c.names), std::string::npos) << joined << "\n" << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << joined;
  }
}

}  // namespace
}  // namespace computron::runtime
