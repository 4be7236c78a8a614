// Sweeps: the same sweep gives the same CSV whatever the thread count; the grid expands in
// order; policy entries merge over the scenario's policy; rate scaling.
#include <gtest/gtest.h>

#include <sstream>

#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "sim/sweep.h"

namespace computron::sim {
namespace {

nlohmann::json smallSweep() {
  return nlohmann::json::parse(R"({
    "name": "test",
    "scenarios": ["scenarios/random-3models-rates10-1-1-cv4.json"],
    "policies": ["computron", "best", {"label": "belady", "name": "computron", "eviction": "belady"}],
    "grid": {"duration_s": [10], "rate_scale": [1, 2]},
    "seeds": [1, 2]
  })");
}

std::string csvOf(const SweepSpec& spec, int threads) {
  std::ostringstream out;
  writeSweepCsv(spec, runSweep(spec, threads, nullptr), out);
  return out.str();
}

TEST(PolicySweep, SameSweepSameCsvWhateverTheThreads) {
  SweepSpec spec = parseSweep(smallSweep(), COMPUTRON_SOURCE_DIR);
  ASSERT_EQ(spec.runs.size(), 2u * 2u * 3u);
  std::string one = csvOf(spec, 1);
  std::string four = csvOf(spec, 4);
  EXPECT_EQ(one, four);
  EXPECT_EQ(one, csvOf(spec, 3));
  // Header plus one row a run, none failed.
  EXPECT_EQ(std::count(one.begin(), one.end(), '\n'), 13);
  EXPECT_EQ(one.find("unknown"), std::string::npos) << one;
  std::ostringstream table;
  printSweepTable(spec, runSweep(spec, 2, nullptr), table);
  EXPECT_NE(table.str().find("belady"), std::string::npos);
}

TEST(PolicySweep, GridOrderAndPolicyMerge) {
  SweepSpec spec = parseSweep(smallSweep(), COMPUTRON_SOURCE_DIR);
  // Grid point, then seed, then policy, fastest last.
  EXPECT_EQ(spec.runs[0].point, nlohmann::json::parse("[10, 1]"));
  EXPECT_EQ(spec.runs[0].policy, "computron");
  EXPECT_EQ(spec.runs[1].policy, "best");
  EXPECT_EQ(spec.runs[3].seed, 2u);
  EXPECT_EQ(spec.runs[6].point, nlohmann::json::parse("[10, 2]"));
  // The scenario's count cap survives; the set and its overrides replace the choices.
  const auto& policy = spec.runs[2].scenario_doc["policy"];
  EXPECT_EQ(policy["max_loaded_models"], 2);
  EXPECT_EQ(policy["eviction"], "belady");
  // Rates doubled at rate_scale 2.
  EXPECT_EQ(spec.runs[6].scenario_doc["workload"]["rates"], nlohmann::json::parse("[20.0, 2.0, 2.0]"));
  Scenario s = parseScenario(spec.runs[2].scenario_doc, spec.runs[2].base_dir);
  EXPECT_EQ(s.engine.policy.eviction, "belady");
  EXPECT_EQ(s.engine.policy.queue, "fcfs");
  EXPECT_TRUE(s.engine.future != nullptr);
}

TEST(PolicySweep, ScaleRatesOfATrace) {
  nlohmann::json doc = {{"workload", {{"type", "trace"}, {"time_scale", 3.0}}}};
  scaleRates(doc, 1.5);
  EXPECT_DOUBLE_EQ(doc["workload"]["time_scale"].get<double>(), 2.0);
  nlohmann::json closed = {{"workload", {{"type", "alternating"}}}};
  EXPECT_THROW(scaleRates(closed, 2), ConfigError);
}

TEST(PolicySweep, BadPolicyNamesItsPath) {
  nlohmann::json doc = smallSweep();
  doc["policies"] = nlohmann::json::parse(R"([{"name": "computron", "eviction": "fifo"}])");
  SweepSpec spec = parseSweep(doc, COMPUTRON_SOURCE_DIR);
  try {
    parseScenario(spec.runs[0].scenario_doc, spec.runs[0].base_dir);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("$.policy.eviction"), std::string::npos) << e.what();
  }
}

TEST(PolicySweep, PolicyChoicesInGridOrSetAreRefusedWithTheirPath) {
  // A policy entry replaces the scenario's choices, so these would be dropped without a word.
  nlohmann::json doc = smallSweep();
  doc["grid"]["policy.layer_pipelined"] = {false, true};
  try {
    parseSweep(doc, COMPUTRON_SOURCE_DIR);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("$.grid.policy.layer_pipelined"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("policies"), std::string::npos) << e.what();
  }
  doc = smallSweep();
  doc["set"] = {"duration_s=5", "policy.eviction=lru"};
  try {
    parseSweep(doc, COMPUTRON_SOURCE_DIR);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("$.set[1]"), std::string::npos) << e.what();
  }
  // Other policy fields (the count cap) and other keys stay allowed.
  doc = smallSweep();
  doc["set"] = {"policy.max_loaded_models=1"};
  doc["grid"]["policy.max_loaded_models"] = {1, 2};
  EXPECT_NO_THROW(parseSweep(doc, COMPUTRON_SOURCE_DIR));
}

TEST(PolicySweep, NestedDottedAndNamePolicyChoicesAreRefusedToo) {
  // Every spelling the override syntax reads as a policy choice: a nested placement field, a
  // leading '.', the policy set's name.
  struct Case {
    const char* key;
    bool refused;
  };
  const Case cases[] = {{"policy.placement.group_gpus", true}, {"policy.placement.policy", true},
                        {".policy.eviction", true},            {".policy", true},
                        {"policy.name", true},                 {".policy.name", true},
                        {"policy.max_loaded_models", false},   {".policy.max_loaded_models", false},
                        {"policy.lfu_half_life_s", false}};
  for (const Case& c : cases) {
    const std::string key = c.key;
    nlohmann::json grid = smallSweep();
    grid["grid"][key] = {1, 2};
    nlohmann::json set = smallSweep();
    set["set"] = {"duration_s=5", key + "=1"};
    if (!c.refused) {
      EXPECT_NO_THROW(parseSweep(grid, COMPUTRON_SOURCE_DIR)) << key;
      EXPECT_NO_THROW(parseSweep(set, COMPUTRON_SOURCE_DIR)) << key;
      continue;
    }
    try {
      parseSweep(grid, COMPUTRON_SOURCE_DIR);
      ADD_FAILURE() << "grid " << key << ": expected a ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("$.grid." + key), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("policies"), std::string::npos) << e.what();
    }
    try {
      parseSweep(set, COMPUTRON_SOURCE_DIR);
      ADD_FAILURE() << "set " << key << ": expected a ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("$.set[1]"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("policies"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace computron::sim
