// Decode graphs in the simulator (a profile's decode_graph_ms, docs/specs.md "Profiles"): the
// first decode step of each batch size since a model's shards last changed address pays one
// capture. Each case runs the same trace with the capture at 3 ms and at 0 and compares finish
// times request by request, so every difference is the captures alone.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "common/profile.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "sim_test_util.h"
#include "tests/support/cli_runner.h"
#include "tests/support/config_error.h"
#include "tests/support/requests_csv.h"

namespace computron {
namespace {

using fakes::ScratchDir;

// The small profile (decode steps of about 1-3 ms) with no first-batch extra and a capture cost.
nlohmann::json profile(double capture_ms) {
  nlohmann::json doc = testing::smallProfile();
  doc["models"][0]["first_batch_extra_ms"] = 0;
  doc["models"][0]["decode_graph_ms"] = capture_ms;
  return doc;
}

class GraphSimulation {
 public:
  GraphSimulation() {
    write("graphs.json", profile(3));
    write("none.json", profile(0));
  }
  void write(const std::string& name, const nlohmann::json& doc) { std::ofstream(dir_.path() / name) << doc.dump(); }
  // `trace` rows after the header; `models` copies of opt-1.3b (m-0, m-1, ... or m when one), at
  // most `loaded` of them resident. Returns each request's finish_s by id.
  std::map<std::string, double> run(const std::string& profile_file, const std::string& trace, int models, int loaded,
                                    const std::string& batching = "request") {
    nlohmann::json doc = testing::smallScenario();
    doc["duration_s"] = 10;
    doc["models"][0]["count"] = models;
    doc["policy"] = {{"name", "computron"}, {"max_loaded_models", loaded}, {"batching", batching}};
    doc["cluster"] = {{"preset", "a100-40gb-x4"}, {"profile", profile_file}};
    return testing::simulateTrace(dir_.path(), doc, trace, profile_file + "-" + std::to_string(runs_++), "finish_s");
  }
  // finish_s with captures minus without, by id.
  std::map<std::string, double> extra(const std::string& trace, int models, int loaded, const std::string& batching = "request") {
    const auto with = run("graphs.json", trace, models, loaded, batching);
    const auto without = run("none.json", trace, models, loaded, batching);
    EXPECT_EQ(with.size(), without.size());
    std::map<std::string, double> d;
    for (const auto& [id, t] : with) d[id] = t - without.at(id);
    return d;
  }

 private:
  ScratchDir dir_;
  int runs_ = 0;
};

// One batch of outputs {1, 3, 3, 5} (they queue during the load): decode runs 3 sequences at steps
// 1-2 and 1 at steps 3-4, so two captures (steps 1 and 3). A request's finish moves by the captures
// up to its last step. Later batches pay only for sizes not captured yet: at 3 s one request alone
// (size 1, captured); at 4 s three requests, the first starting alone on the idle GPU and the other
// two batched after it (size 2: new).
TEST(DecodeGraphs, RequestLevelBatchesPayOnceForEachNewBatchSize) {
  GraphSimulation sim;
  const auto d = sim.extra(
      "0,m,2000000000,16,1\n1,m,2000000000,16,3\n2,m,2000000000,16,3\n3,m,2000000000,16,5\n"
      "4,m,3000000000,16,3\n"
      "5,m,4000000000,16,3\n6,m,4000000000,16,3\n7,m,4000000000,16,3\n",
      1, 1);
  ASSERT_EQ(d.size(), 8u);
  EXPECT_NEAR(d.at("0"), 0, 2e-9);      // its token is the prefill's
  EXPECT_NEAR(d.at("1"), 0.003, 2e-9);  // step 2: the capture at step 1
  EXPECT_NEAR(d.at("2"), 0.003, 2e-9);
  EXPECT_NEAR(d.at("3"), 0.006, 2e-9);  // step 4: both
  EXPECT_NEAR(d.at("4"), 0, 2e-9);
  EXPECT_NEAR(d.at("5"), 0, 2e-9);
  EXPECT_NEAR(d.at("6"), 0.003, 2e-9);
  EXPECT_NEAR(d.at("7"), 0.003, 2e-9);
}

// One model resident at a time: each reload lands at the start of the (then empty) pool, the
// address it had, so its graphs survive the swap.
TEST(DecodeGraphs, AReloadAtTheSameAddressKeepsTheGraphs) {
  GraphSimulation sim;
  const auto d = sim.extra("0,m-0,2000000000,16,3\n1,m-1,3000000000,16,3\n2,m-0,4000000000,16,3\n", 2, 1);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_NEAR(d.at("0"), 0.003, 2e-9);
  EXPECT_NEAR(d.at("1"), 0.003, 2e-9);
  EXPECT_NEAR(d.at("2"), 0, 2e-9);  // m-0 back at offset 0
}

// Two resident of three: m-0 at 0 and m-1 after it; m-2 takes m-0's place (evicted, least
// recently used); m-0 comes back into m-1's: a new address, so its graph is captured again.
TEST(DecodeGraphs, AReloadAtAnotherAddressCapturesAgain) {
  GraphSimulation sim;
  const auto d = sim.extra(
      "0,m-0,2000000000,16,3\n1,m-1,3000000000,16,3\n2,m-2,4000000000,16,3\n3,m-0,5000000000,16,3\n", 3, 2);
  ASSERT_EQ(d.size(), 4u);
  for (const char* id : {"0", "1", "2", "3"}) EXPECT_NEAR(d.at(id), 0.003, 2e-9) << id;
}

// Iteration-level sessions: each decode step at a batch size the model has no graph for pays it.
TEST(DecodeGraphs, IterationStepsPayForEachNewBatchSize) {
  GraphSimulation sim;
  // Two requests joining together decode at size 2; the second session (same model, after idle)
  // at size 2 again, then size 1 once the shorter ends: one new capture.
  const auto d = sim.extra(
      "0,m,2000000000,16,3\n1,m,2000000000,16,3\n"
      "2,m,3000000000,16,2\n3,m,3000000000,16,4\n",
      1, 1, "iteration");
  ASSERT_EQ(d.size(), 4u);
  EXPECT_NEAR(d.at("0"), 0.003, 2e-9);
  EXPECT_NEAR(d.at("1"), 0.003, 2e-9);
  EXPECT_NEAR(d.at("2"), 0, 2e-9);      // size 2 only
  EXPECT_NEAR(d.at("3"), 0.003, 2e-9);  // then size 1: new
}

TEST(DecodeGraphs, ProfileReadsOneFigureOrOnePerBatchSizeAndRefusesBadOnes) {
  const auto refusal = [](const nlohmann::json& doc) {
    return fakes::configErrorOf([&] { readProfile(doc, "p.json"); }, "accepted");
  };
  EXPECT_NE(refusal(profile(-1)).find("p.json: $.models[0].decode_graph_ms: must not be negative"), std::string::npos)
      << refusal(profile(-1));
  nlohmann::json absent = profile(0);
  absent["models"][0].erase("decode_graph_ms");
  EXPECT_EQ(readProfile(absent, "p.json").models[0].decodeGraphMs(8), 0);
  EXPECT_EQ(readProfile(profile(4.5), "p.json").models[0].decodeGraphMs(8), 4.5);
  // By batch size: linear between points, flat outside.
  nlohmann::json steps = profile(0);
  steps["models"][0]["decode_graph_ms"] = {{"batch", {2, 16, 17, 65}}, {"ms", {2, 2, 5, 6}}};
  const ModelProfile m = readProfile(steps, "p.json").models[0];
  EXPECT_EQ(m.decodeGraphMs(1), 2);
  EXPECT_EQ(m.decodeGraphMs(16), 2);
  EXPECT_EQ(m.decodeGraphMs(17), 5);
  EXPECT_DOUBLE_EQ(m.decodeGraphMs(41), 5.5);
  EXPECT_EQ(m.decodeGraphMs(100), 6);
  nlohmann::json ragged = steps;
  ragged["models"][0]["decode_graph_ms"]["ms"] = {2, 2, 5};
  EXPECT_NE(refusal(ragged).find("$.models[0].decode_graph_ms.ms: expected an array with one value per batch point (4)"),
            std::string::npos)
      << refusal(ragged);
  nlohmann::json unordered = steps;
  unordered["models"][0]["decode_graph_ms"]["batch"] = {2, 16, 16, 65};
  EXPECT_NE(refusal(unordered).find("$.models[0].decode_graph_ms.batch[2]: the grid must be strictly increasing"),
            std::string::npos)
      << refusal(unordered);
}

// Capture times by batch size: a session decoding 2 sequences, then 1, pays each size's own.
TEST(DecodeGraphs, ACaptureCostsWhatItsBatchSizeDoes) {
  GraphSimulation sim;
  nlohmann::json by_size = profile(0);
  by_size["models"][0]["decode_graph_ms"] = {{"batch", {1, 2}}, {"ms", {1, 4}}};
  sim.write("by-size.json", by_size);
  const std::string trace = "0,m,2000000000,16,2\n1,m,2000000000,16,4\n";
  const auto with = sim.run("by-size.json", trace, 1, 1, "iteration");
  const auto without = sim.run("none.json", trace, 1, 1, "iteration");
  ASSERT_EQ(with.size(), 2u);
  EXPECT_NEAR(with.at("0") - without.at("0"), 0.004, 2e-9);  // its one decode step: size 2
  EXPECT_NEAR(with.at("1") - without.at("1"), 0.005, 2e-9);  // and size 1 after it
}

}  // namespace
}  // namespace computron
