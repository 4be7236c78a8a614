// Scenario parsing scales with the number of models (it was quadratic: every copy compared its
// weights with every model before it). Prints the time for 100,000 models; the figure is
// recorded in bench/results/, the test checks the result, not the time.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "common/scenario/scenario.h"
#include "sim_test_util.h"

namespace computron {
namespace {

double parseSeconds(const nlohmann::json& doc, std::size_t expected_models) {
  const auto start = std::chrono::steady_clock::now();
  const Scenario s = parseScenario(doc, ".");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(s.engine.models.size(), expected_models);
  return seconds;
}

TEST(ParseScale, HundredThousandModelsAsEntriesAndAsCopies) {
  constexpr int kModels = 100'000;
  nlohmann::json doc = testing::smallScenario();
  // A closed-loop workload: one random stream in all, so the figure is the parser's.
  doc["workload"] = {{"type", "alternating"}, {"requests", 10}};
  doc["duration_s"] = 1;
  nlohmann::json models = nlohmann::json::array();
  for (int i = 0; i < kModels; ++i)
    models.push_back({{"name", "m" + std::to_string(i)}, {"spec", "opt-1.3b"}, {"gpus", {i % 4}}});
  doc["models"] = models;
  const double entries = parseSeconds(doc, kModels);
  doc["models"] = {{{"name", "m"}, {"spec", "opt-1.3b"}, {"count", kModels}, {"gpus", {0}}}};
  const double copies = parseSeconds(doc, kModels);
  std::printf("parse of %d models: %.3f s as entries, %.3f s as copies of one entry\n", kModels, entries, copies);
}

}  // namespace
}  // namespace computron
