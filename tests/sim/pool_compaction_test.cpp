// The weight pool in a profiled simulation (docs/specs.md "Profiles"): as on the GPUs
// (RealBackend::tryStartLoad), a load whose room needs a compaction that moves a shard a batch
// reads waits for that batch to end, then for the device-local copy of the moved bytes; the moved
// model's next batch waits behind the compaction too.
//
// GPU 0 holds x (opt-1.3b) at offset 0 and y (opt-1.3b) after it, in a budget that fits both and
// a little more. z (opt-2.7b) comes: x is evicted, but neither hole (x's, or the tail) holds z, so y
// must slide down to offset 0 first.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "common/cluster_spec.h"
#include "common/model_spec.h"
#include "sim_test_util.h"
#include "tests/support/cli_runner.h"
#include "tests/support/requests_csv.h"

namespace computron {
namespace {

using fakes::ScratchDir;

struct Span {
  double start_ms = 0, dur_ms = 0;
};

struct PoolRun {
  std::map<std::string, double> start_s, finish_s;  // by request id
  std::map<std::string, std::vector<Span>> loads;    // by model
  std::vector<Span> batches_y;
};

class PoolSimulation {
 public:
  PoolSimulation() {
    nlohmann::json profile = testing::smallProfile();
    nlohmann::json entry = profile["models"][0];
    entry["tp"] = 1;
    entry["pp"] = 1;
    entry["first_batch_extra_ms"] = 0;
    profile["models"] = nlohmann::json::array({entry});
    std::ofstream(dir_.path() / "profile.json") << profile.dump();
  }
  PoolRun run(const std::string& trace) {
    const std::int64_t small = modelPreset("opt-1.3b").shard(1, 1, 0, 0).bytes;
    const std::int64_t big = modelPreset("opt-2.7b").shard(1, 1, 0, 0).bytes;
    nlohmann::json doc = testing::smallScenario();
    doc["duration_s"] = 10;
    doc["cluster"] = {{"preset", "a100-40gb-x4"},
                      {"profile", "profile.json"},
                      {"weight_budget_gb", static_cast<double>(small + big + 64 * kMiB) / 1e9}};
    doc["models"] = nlohmann::json::array();
    for (const auto& [name, spec] : {std::pair{"x", "opt-1.3b"}, {"y", "opt-1.3b"}, {"z", "opt-2.7b"}})
      doc["models"].push_back({{"name", name}, {"spec", spec}, {"tp", 1}, {"pp", 1}, {"gpus", {0}}, {"max_batch", 4}});
    doc["policy"] = {{"name", "computron"}};
    const std::string out = "out-" + std::to_string(runs_++);
    PoolRun r;
    r.finish_s = testing::simulateTrace(dir_.path(), doc, trace, out, "finish_s");
    const fakes::RequestsCsv rows =
        fakes::parseRequestsCsv(fakes::readWholeFile(dir_.path() / out / "requests.csv"));
    for (std::size_t i = 0; i < rows.rows.size(); ++i) r.start_s[rows.at(i, "id")] = std::stod(rows.at(i, "start_s"));
    const auto timeline = nlohmann::json::parse(fakes::readWholeFile(dir_.path() / out / "timeline.json"));
    for (const auto& e : timeline["traceEvents"]) {
      if (!e.contains("cat")) continue;
      const Span s{e["ts"].get<double>() / 1e3, e.value("dur", 0.0) / 1e3};
      const std::string name = e["name"];
      if (e["cat"] == "load") r.loads[name.substr(5)].push_back(s);
      if (e["cat"] == "batch" && name == "y") r.batches_y.push_back(s);
    }
    return r;
  }

 private:
  ScratchDir dir_;
  int runs_ = 0;
};

// x at 1 s, y at 1.5 s; at 3 s y gets a long request (64 output tokens) and z is asked for at
// 3.001 s, while y's batch runs; a second request for y at 3.002 s waits for that batch.
const char* kBusy =
    "0,x,1000000000,16,1\n1,y,1500000000,16,1\n"
    "2,y,3000000000,16,64\n3,z,3001000000,16,1\n4,y,3002000000,16,1\n";
// The same, but y's long request comes after z's: y is idle when z is asked for.
const char* kIdle =
    "0,x,1000000000,16,1\n1,y,1500000000,16,1\n"
    "3,z,3001000000,16,1\n2,y,3001500000,16,64\n4,y,3002000000,16,1\n";
// A batch's span ends with its last token; its GPUs are free after the profile's batch tail.
constexpr double kTailMs = 0.25;

TEST(PoolCompaction, LoadWaitsForTheBusyShardItMovesAndItsNextBatchWaitsForTheMove) {
  PoolSimulation sim;
  const PoolRun busy = sim.run(kBusy);
  ASSERT_EQ(busy.finish_s.size(), 5u);
  ASSERT_EQ(busy.loads.at("z").size(), 1u);
  ASSERT_EQ(busy.batches_y.size(), 3u);  // request 1, request 2, request 4
  const Span z = busy.loads.at("z")[0];
  const Span y_long = busy.batches_y[1];
  const Span y_next = busy.batches_y[2];
  EXPECT_NEAR(z.start_ms, 3001, 0.1);  // the span starts when the engine issued the load (x evicted first)
  // The move: y's 2.6 GB read and written at the A100's HBM bandwidth, once y's batch has ended.
  const double y_bytes = static_cast<double>(modelPreset("opt-1.3b").shard(1, 1, 0, 0).bytes);
  const double move_ms = 2 * y_bytes / clusterPreset("a100-40gb-x4").gpus[0].hbm_bandwidth * 1e3;
  const double y_free_ms = y_long.start_ms + y_long.dur_ms + kTailMs;
  EXPECT_NEAR(y_next.start_ms, y_free_ms + move_ms, 1e-3);
  // The copy itself takes what it takes when y is idle (the move alone before it).
  const PoolRun idle = sim.run(kIdle);
  const Span z_idle = idle.loads.at("z")[0];
  EXPECT_NEAR(z_idle.start_ms, 3001, 0.1);
  const double copy_ms = z_idle.dur_ms - move_ms;
  EXPECT_GT(copy_ms, 200);  // 5.3 GB at the profile's 20 GB/s host link
  EXPECT_NEAR(z.start_ms + z.dur_ms, y_free_ms + move_ms + copy_ms, 1e-3);
}

// A roofline run keeps bytes only: z's load takes as long whether y is busy or not.
TEST(PoolCompaction, WithoutAProfileNoShardIsPlacedOrWaitedFor) {
  ScratchDir dir;
  nlohmann::json doc = testing::smallScenario();
  doc["duration_s"] = 10;
  const std::int64_t small = modelPreset("opt-1.3b").shard(1, 1, 0, 0).bytes;
  const std::int64_t big = modelPreset("opt-2.7b").shard(1, 1, 0, 0).bytes;
  doc["cluster"] = {{"preset", "a100-40gb-x4"}, {"weight_budget_gb", static_cast<double>(small + big + 64 * kMiB) / 1e9}};
  doc["models"] = nlohmann::json::array();
  for (const auto& [name, spec] : {std::pair{"x", "opt-1.3b"}, {"y", "opt-1.3b"}, {"z", "opt-2.7b"}})
    doc["models"].push_back({{"name", name}, {"spec", spec}, {"tp", 1}, {"pp", 1}, {"gpus", {0}}, {"max_batch", 4}});
  doc["policy"] = {{"name", "computron"}};
  auto z_load_ms = [&](const char* trace, const std::string& out) {
    testing::simulateTrace(dir.path(), doc, trace, out, "finish_s");
    const auto timeline = nlohmann::json::parse(fakes::readWholeFile(dir.path() / out / "timeline.json"));
    for (const auto& e : timeline["traceEvents"])
      if (e.value("cat", "") == "load" && e["name"] == "load z") return e["dur"].get<double>() / 1e3;
    return -1.0;
  };
  const double busy = z_load_ms(kBusy, "busy");
  const double idle = z_load_ms(kIdle, "idle");
  ASSERT_GT(busy, 0);
  EXPECT_DOUBLE_EQ(busy, idle);
}

}  // namespace
}  // namespace computron
