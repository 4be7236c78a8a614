// Scheduling passes local to a GPU group: on clusters whose models fall into several groups, every
// event's pass visits only the touched group (and groups whose last pass issued commands), and a
// pass over the groups at rest must issue nothing (Engine::checkPassIsLocal, run after every event
// with check_invariants). Also the shipped fleet scenario under every invariant check.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#include "common/scenario/run_recorder.h"
#include "common/scenario/scenario.h"
#include "common/workload.h"
#include "sim/simulator.h"

namespace computron {
namespace {

// `blocks` blocks of 2 GPUs with 3 OPT-1.3B each (2 fit), bursty arrivals.
Scenario blocksScenario(int blocks, const std::string& policy, double duration_s) {
  nlohmann::json models = nlohmann::json::array();
  nlohmann::json rates = nlohmann::json::array();
  for (int m = 0; m < 3 * blocks; ++m) {
    const int b = m % blocks;
    models.push_back({{"name", "m" + std::to_string(m)}, {"spec", "opt-1.3b"}, {"tp", m % 2 == 0 ? 2 : 1},
                      {"gpus", m % 2 == 0 ? nlohmann::json{2 * b, 2 * b + 1} : nlohmann::json{2 * b + (m / blocks) % 2}},
                      {"max_batch", 4}});
    rates.push_back(m % 3 == 0 ? 20.0 : 5.0);
  }
  nlohmann::json doc = {
      {"name", "blocks"},
      {"seed", 7},
      {"duration_s", duration_s},
      {"cluster",
       {{"gpus",
         {{{"name", "gpu"}, {"count", 2 * blocks}, {"memory_gb", 80}, {"weight_budget_gb", 5.5}, {"peak_tflops", 300},
           {"hbm_gbps", 2000}, {"host_link_gbps", 25}}}},
        {"nvlink_gbps", 100}}},
      {"models", models},
      {"workload", {{"type", "gamma"}, {"rates", rates}, {"cv", 4}, {"prompt_tokens", 128}, {"output_tokens", 4}}},
      {"policy", policy},
      {"outputs", {{"dir", ""}}},
  };
  return parseScenario(doc, ".");
}

sim::SimStats runChecked(const Scenario& scenario, bool* local) {
  RunRecorder recorder(scenario, "sim");
  sim::SimOptions options;
  options.check_invariants = true;
  sim::Simulation simulation(scenario.cluster, scenario.engine, scenario.makeWorkload(), &recorder, options);
  if (local) *local = simulation.engine().localPasses();
  return simulation.run();
}

TEST(FleetScale, PassesStayLocalToTheTouchedGroupAndMissNothing) {
  for (const char* policy : {"lru-bytes", "lfu", "gdsf"}) {
    bool local = false;
    const sim::SimStats stats = runChecked(blocksScenario(5, policy, 20), &local);
    EXPECT_TRUE(local) << policy;
    EXPECT_GT(stats.arrivals, 500) << policy;
  }
}

TEST(FleetScale, PoliciesThatReadOtherGroupsKeepPassesOverEveryModel) {
  bool local = true;
  runChecked(blocksScenario(2, "best", 5), &local);
  EXPECT_FALSE(local);
  Scenario capped = blocksScenario(2, "computron", 5);
  capped.engine.policy.max_loaded_models = 3;
  local = true;
  runChecked(capped, &local);
  EXPECT_FALSE(local);
}

TEST(FleetScale, ShippedFleetScenarioKeepsEveryInvariant) {
  Scenario fleet = loadScenario(std::string(COMPUTRON_SOURCE_DIR) + "/scenarios/fleet-64x8-1000models.json",
                                {"duration_s=0.1", "outputs.dir="});
  EXPECT_EQ(fleet.cluster.numGpus(), 512);
  EXPECT_EQ(fleet.engine.models.size(), 1000u);
  bool local = false;
  const sim::SimStats stats = runChecked(fleet, &local);
  EXPECT_TRUE(local);
  EXPECT_GT(stats.arrivals, 0);
}

}  // namespace
}  // namespace computron

namespace computron {
namespace {

// The reference: sort the values, take the rank-th (rank = ceil(q * n), at least 1) and report the
// midpoint of its log-linear bucket (256 exact buckets, then 128 per power of two), capped at the
// maximum.
Nanos referenceQuantile(std::vector<Nanos> values, double q) {
  std::sort(values.begin(), values.end());
  const auto n = static_cast<std::int64_t>(values.size());
  const std::int64_t rank = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::ceil(q * static_cast<double>(n))), 1, n);
  const Nanos v = values[static_cast<std::size_t>(rank - 1)];
  if (v < 256) return v;
  const int e = 63 - std::countl_zero(static_cast<std::uint64_t>(v));
  const std::uint64_t width = 1ULL << (e - 7);
  const std::uint64_t lo = static_cast<std::uint64_t>(v) / width * width;
  return std::min<Nanos>(static_cast<Nanos>(lo + width / 2), values.back());
}

// A model with few distinct latencies keeps (bucket, count) pairs; past 32 buckets the histogram
// turns dense. Both give the reference's quantiles exactly, before and after the switch.
TEST(LatencyHistogramTest, SparseAndDenseGiveTheSameQuantiles) {
  Rng rng(5);
  LatencyHistogram h;
  std::vector<Nanos> values;
  for (int i = 0; i < 5000; ++i) {
    const Nanos v = i % 7 == 0 ? static_cast<Nanos>(rng.uniform01() * 300)
                               : static_cast<Nanos>(std::exp(rng.uniform01() * 25.0));  // up to ~7e10 ns
    h.add(v);
    values.push_back(v);
    if (i < 60 || i % 500 == 0) {
      for (double q : {0.0, 0.01, 0.5, 0.9, 0.99, 1.0})
        ASSERT_EQ(h.quantile(q), referenceQuantile(values, q)) << "after " << i + 1 << " values, q " << q;
    }
  }
  EXPECT_EQ(h.count(), 5000);
  EXPECT_EQ(h.max(), *std::max_element(values.begin(), values.end()));
}

}  // namespace
}  // namespace computron
