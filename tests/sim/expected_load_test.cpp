// The expected load per model that placement reads (and summary.json shows under
// config.policy.placement.models[].expected_load): a total `rate` is split by the same Zipf shares
// the workload draws each request's model with, so the loads add up to the rate and match the
// requests the run then generates.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "common/scenario/scenario.h"
#include "common/workload.h"

namespace computron {
namespace {

nlohmann::json zipfScenario(double rate, double alpha, int models) {
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "expected-load-test", "seed": 5, "duration_s": 200,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "opt", "spec": "opt-1.3b", "count": 1, "tp": 1, "pp": 1, "gpus": [0], "max_batch": 8}],
    "workload": {"type": "poisson", "prompt_tokens": 16, "output_tokens": 1},
    "policy": {"name": "computron", "placement": "greedy"},
    "outputs": {"dir": ""}
  })");
  doc["models"][0]["count"] = models;
  doc["workload"]["rate"] = rate;
  doc["workload"]["zipf_alpha"] = alpha;
  return doc;
}

std::vector<double> expectedLoads(const Scenario& s) {
  std::vector<double> loads;
  for (const auto& m : s.effective["policy"]["placement"]["models"]) loads.push_back(m["expected_load"].get<double>());
  return loads;
}

// Rate 11 over three models with alpha 1: weights 1, 1/2, 1/3 sum to 11/6, so 6, 3 and 2 req/s.
TEST(ExpectedLoad, TotalRateSplitByZipfShares) {
  const auto loads = expectedLoads(parseScenario(zipfScenario(11, 1.0, 3), "."));
  ASSERT_EQ(loads.size(), 3u);
  EXPECT_NEAR(loads[0], 6.0, 1e-9);
  EXPECT_NEAR(loads[1], 3.0, 1e-9);
  EXPECT_NEAR(loads[2], 2.0, 1e-9);
}

TEST(ExpectedLoad, AlphaZeroSplitsEquallyAndLoadsAddUpToTheRate) {
  for (double alpha : {0.0, 0.5, 1.0, 2.0}) {
    const auto loads = expectedLoads(parseScenario(zipfScenario(12, alpha, 4), "."));
    ASSERT_EQ(loads.size(), 4u);
    EXPECT_NEAR(std::accumulate(loads.begin(), loads.end(), 0.0), 12.0, 1e-9) << "alpha " << alpha;
    const std::vector<double> shares = zipfShares(4, alpha);
    for (std::size_t m = 0; m < 4; ++m) EXPECT_NEAR(loads[m], 12.0 * shares[m], 1e-9) << "alpha " << alpha;
    if (alpha == 0.0) {
      for (double l : loads) EXPECT_NEAR(l, 3.0, 1e-9);
    }
  }
}

// The generated stream agrees: each model's request count over the run is near its expected
// load times the duration.
TEST(ExpectedLoad, MatchesTheGeneratedRequests) {
  const Scenario s = parseScenario(zipfScenario(10, 1.0, 3), ".");
  const auto loads = expectedLoads(s);
  std::vector<double> counts(3, 0);
  auto source = s.makeWorkload();
  while (auto r = source->next()) counts[static_cast<std::size_t>(r->model)] += 1;
  for (std::size_t m = 0; m < 3; ++m) {
    const double expected = loads[m] * 200;
    EXPECT_NEAR(counts[m], expected, 5 * std::sqrt(expected)) << "model " << m;  // five standard deviations
  }
}

// Explicit per-model rates are taken as they are.
TEST(ExpectedLoad, ExplicitRatesAsGiven) {
  nlohmann::json doc = zipfScenario(1, 0, 3);
  doc["workload"].erase("rate");
  doc["workload"].erase("zipf_alpha");
  doc["workload"]["rates"] = {4, 2, 1};
  const auto loads = expectedLoads(parseScenario(doc, "."));
  EXPECT_EQ(loads, (std::vector<double>{4, 2, 1}));
}

}  // namespace
}  // namespace computron
