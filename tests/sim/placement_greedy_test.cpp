// Placement: hand-computed greedy groups from fixed rates, validation errors naming JSON paths,
// the effective placement in the config, serial loads and copies from a resident twin.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/core/engine.h"
#include "common/core/placement.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "tests/support/config_error.h"
#include "tests/support/engine_fakes.h"

namespace computron {
namespace {

// Four A100-40GB (36 GiB weight budget each); OPT-13B is 25.7 GB, so it fits one GPU at TP 1
// but two never share one GPU.
nlohmann::json seedLike(const std::vector<double>& rates, const nlohmann::json& placement) {
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "placement-test", "seed": 3, "duration_s": 10,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "opt", "spec": "opt-13b", "count": 1, "tp": 2, "pp": 2, "gpus": "all", "max_batch": 8}],
    "workload": {"type": "gamma", "cv": 4, "prompt_tokens": 64, "output_tokens": 1},
    "policy": {"name": "computron", "max_loaded_models": 2},
    "slo_ms": 1000, "outputs": {"dir": ""}
  })");
  doc["models"][0]["count"] = rates.size();
  doc["workload"]["rates"] = rates;
  if (!placement.is_null()) doc["policy"]["placement"] = placement;
  return doc;
}

struct Group {
  int tp, pp;
  std::vector<GpuId> gpus;
};

std::vector<Group> groups(const Scenario& s) {
  std::vector<Group> out;
  for (const auto& m : s.engine.models) out.push_back({m.tp, m.pp, m.gpus});
  return out;
}

void expectGroups(const Scenario& s, const std::vector<Group>& want) {
  auto got = groups(s);
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].tp, want[i].tp) << "model " << i;
    EXPECT_EQ(got[i].pp, want[i].pp) << "model " << i;
    EXPECT_EQ(got[i].gpus, want[i].gpus) << "model " << i;
  }
}

TEST(PlacementGreedy, AllGpusKeepsTheScenarioPlacement) {
  auto s = parseScenario(seedLike({10, 1, 1}, nullptr), ".");
  expectGroups(s, {{2, 2, {0, 1, 2, 3}}, {2, 2, {0, 1, 2, 3}}, {2, 2, {0, 1, 2, 3}}});
  auto named = parseScenario(seedLike({10, 1, 1}, "all-gpus"), ".");
  expectGroups(named, groups(s));
  EXPECT_EQ(s.effective["policy"]["placement"]["policy"], "all-gpus");
}

// Rates (10, 1, 1), fewest GPUs that fit (one): the hot model takes GPU 0; each cold one takes
// the least-loaded GPU left (1, then 2; ties go to the lower GPU).
TEST(PlacementGreedy, HotModelGetsAGpuOfItsOwnColdOnesTheLeastLoaded) {
  auto s = parseScenario(seedLike({10, 1, 1}, "greedy"), ".");
  expectGroups(s, {{1, 1, {0}}, {1, 1, {1}}, {1, 1, {2}}});
}

// Six models (1, 10, 10, 1, 10, 10), one GPU each: the four hot ones (in model order 1, 2, 4, 5)
// take GPUs 0..3 (load 10 each); the cold ones then go to the least-loaded GPU, 0 (load 11) and 1.
TEST(PlacementGreedy, SixModelsOnFourGpusHandComputed) {
  auto s = parseScenario(seedLike({1, 10, 10, 1, 10, 10}, "greedy"), ".");
  expectGroups(s, {{1, 1, {0}}, {1, 1, {0}}, {1, 1, {1}}, {1, 1, {1}}, {1, 1, {2}}, {1, 1, {3}}});
}

// Groups of two GPUs: TP 2 (the widest valid split). Hot (10) -> GPUs 0-1; 5 -> 2-3 (load 0);
// 1 -> 2-3 (max load 5 < 10); 1 -> 2-3 (6 < 10).
TEST(PlacementGreedy, GroupsOfTwoUseTensorParallelism) {
  auto s = parseScenario(seedLike({10, 5, 1, 1}, nlohmann::json{{"policy", "greedy"}, {"group_gpus", 2}}), ".");
  expectGroups(s, {{2, 1, {0, 1}}, {2, 1, {2, 3}}, {2, 1, {2, 3}}, {2, 1, {2, 3}}});
}

TEST(PlacementGreedy, GroupOfFourIsTensorParallelFourNotTwoByTwo) {
  auto s = parseScenario(seedLike({3, 2, 1}, nlohmann::json{{"policy", "greedy"}, {"group_gpus", 4}}), ".");
  expectGroups(s, {{4, 1, {0, 1, 2, 3}}, {4, 1, {0, 1, 2, 3}}, {4, 1, {0, 1, 2, 3}}});
}

// share_below 0.5: models under half the hottest's load keep the scenario's own group.
TEST(PlacementGreedy, ColdModelsShareTheScenarioGroup) {
  auto s = parseScenario(seedLike({10, 1, 8}, nlohmann::json{{"policy", "greedy"}, {"share_below", 0.5}}), ".");
  expectGroups(s, {{1, 1, {0}}, {2, 2, {0, 1, 2, 3}}, {1, 1, {1}}});
  const auto& pl = s.effective["policy"]["placement"];
  EXPECT_EQ(pl["policy"], "greedy");
  EXPECT_EQ(pl["share_below"], 0.5);
  EXPECT_EQ(pl["models"][2]["gpus"], nlohmann::json::array({1}));
  EXPECT_EQ(pl["models"][2]["tp"], 1);
  EXPECT_EQ(pl["models"][0]["expected_load"], 10.0);
}

// A model too large for one GPU's budget grows to the fewest GPUs it fits: OPT-66B (132 GB)
// needs all four A100s (33 GB a shard against a 38.7 GB budget).
TEST(PlacementGreedy, LargeModelGrowsToTheFewestGpusItFits) {
  auto doc = seedLike({1}, "greedy");
  doc["models"][0]["spec"] = "opt-66b";
  doc["models"][0]["tp"] = 4;
  doc["models"][0]["pp"] = 1;
  auto s = parseScenario(doc, ".");
  expectGroups(s, {{4, 1, {0, 1, 2, 3}}});
}

// Two nodes of 8 H100 (h100x8-x2), OPT-6.7B (32 heads) at the given rates and placement.
nlohmann::json twoNodes(const std::vector<double>& rates, const nlohmann::json& placement) {
  nlohmann::json doc = seedLike(rates, placement);
  doc["cluster"] = {{"preset", "h100x8-x2"}};
  doc["models"][0]["spec"] = "opt-6.7b";
  doc["models"][0]["tp"] = 1;
  doc["models"][0]["pp"] = 1;
  doc["models"][0]["gpus"] = {0};
  return doc;
}

std::vector<GpuId> range(GpuId first, int n) {
  std::vector<GpuId> g;
  for (int i = 0; i < n; ++i) g.push_back(first + i);
  return g;
}

// A group of 16 GPUs spans both nodes: TP stays within a node (8) and the nodes are pipeline
// stages, although 32 heads would allow TP 16 on one node of 16.
TEST(PlacementGreedy, GroupAcrossNodesKeepsTensorParallelismWithinANode) {
  auto s = parseScenario(twoNodes({5}, nlohmann::json{{"policy", "greedy"}, {"group_gpus", 16}}), ".");
  expectGroups(s, {{8, 2, range(0, 16)}});
}

// At equal GPU load the node with less expected load wins: the second hot model (9 req/s) goes to
// the other node (GPUs 8-11), not next to the first (10) on node 0 (GPUs 4-7); the third (8)
// again to node 1 (9 against 10), the fourth (7) to node 0 (10 against 17).
TEST(PlacementGreedy, HotModelsSpreadOverTheNodes) {
  auto s = parseScenario(twoNodes({10, 9, 8, 7}, nlohmann::json{{"policy", "greedy"}, {"group_gpus", 4}}), ".");
  expectGroups(s, {{4, 1, range(0, 4)}, {4, 1, range(8, 4)}, {4, 1, range(12, 4)}, {4, 1, range(4, 4)}});
}

// Without a group size each model takes one GPU, on the node with less expected load so far:
// 4 on node 0; 3 on node 1; 2 on node 1 (3 < 4); 1 on node 0 (4 < 5).
TEST(PlacementGreedy, SingleGpuGroupsBalanceTheNodes) {
  auto s = parseScenario(twoNodes({4, 3, 2, 1}, "greedy"), ".");
  expectGroups(s, {{1, 1, {0}}, {1, 1, {8}}, {1, 1, {9}}, {1, 1, {1}}});
}

TEST(PlacementGreedy, SameInputSamePlacement) {
  auto a = parseScenario(seedLike({5, 5, 5, 5, 5, 5}, "greedy"), ".");
  auto b = parseScenario(seedLike({5, 5, 5, 5, 5, 5}, "greedy"), ".");
  EXPECT_EQ(a.effective["policy"]["placement"], b.effective["policy"]["placement"]);
  // Equal loads: model order, GPUs in turn.
  expectGroups(a, {{1, 1, {0}}, {1, 1, {1}}, {1, 1, {2}}, {1, 1, {3}}, {1, 1, {0}}, {1, 1, {1}}});
}

// The seed set is untouched: no serial loads, the scenario's own placement, and naming that
// placement gives byte-identical results to leaving it out.
TEST(PlacementGreedy, ComputronSetIsUnchanged) {
  auto plain = parseScenario(seedLike({10, 1, 1}, nullptr), ".");
  EXPECT_FALSE(plain.engine.policy.serial_loads);
  EXPECT_EQ(plain.engine.policy.routing, "direct");
  EXPECT_EQ(plain.engine.policy.eviction, "lru");
  EXPECT_EQ(plain.engine.policy.queue, "fcfs");
  auto named = parseScenario(seedLike({10, 1, 1}, "all-gpus"), ".");
  auto a = sim::runScenario(plain, nullptr);
  auto b = sim::runScenario(named, nullptr);
  a.erase("config");
  b.erase("config");
  EXPECT_EQ(a.dump(), b.dump());
}

std::string errorOf(const nlohmann::json& doc) {
  return fakes::configErrorOf([&] { parseScenario(doc, "."); });
}

TEST(PlacementValidation, ErrorsNameTheJsonPath) {
  EXPECT_NE(errorOf(seedLike({1, 1}, "random")).find("$.policy.placement: unknown placement 'random'"), std::string::npos)
      << errorOf(seedLike({1, 1}, "random"));
  auto bad_key = errorOf(seedLike({1, 1}, nlohmann::json{{"policy", "greedy"}, {"groups", 2}}));
  EXPECT_NE(bad_key.find("$.policy.placement.groups"), std::string::npos) << bad_key;
  auto three = errorOf(seedLike({1, 1}, nlohmann::json{{"policy", "greedy"}, {"group_gpus", 3}}));
  EXPECT_NE(three.find("$.policy.placement.group_gpus"), std::string::npos) << three;
  auto share = errorOf(seedLike({1, 1}, nlohmann::json{{"policy", "greedy"}, {"share_below", 2}}));
  EXPECT_NE(share.find("$.policy.placement.share_below"), std::string::npos) << share;
  // OPT-66B on one A100: no shard fits; the error names the placement and the model.
  auto doc = seedLike({1}, nlohmann::json{{"policy", "greedy"}, {"group_gpus", 1}});
  doc["models"][0]["spec"] = "opt-66b";
  doc["models"][0]["tp"] = 4;
  doc["models"][0]["pp"] = 1;
  auto big = errorOf(doc);
  EXPECT_NE(big.find("$.policy.placement: model opt fits no group of 1 GPUs"), std::string::npos) << big;
  auto weights = seedLike({1, 1}, nullptr);
  weights["models"][0]["weights"] = "w";
  auto w = errorOf(weights);
  EXPECT_NE(w.find("$.models[0].weights"), std::string::npos) << w;
}

TEST(PlacementGreedy, PlacedScenarioRunsInTheSimulatorWithInvariants) {
  auto doc = seedLike({10, 1, 1}, nlohmann::json{{"policy", "greedy"}, {"group_gpus", 2}});
  doc["policy"]["name"] = "best-serial";
  auto s = parseScenario(doc, ".");
  sim::SimOptions options;
  options.check_invariants = true;
  auto summary = sim::runScenario(s, nullptr, options);
  EXPECT_GT(summary["overall"]["served"].get<double>(), 0);
  EXPECT_EQ(summary["config"]["policy"]["placement"]["models"][0]["gpus"], nlohmann::json::array({0, 1}));
}

// ---- Serial loads and copies from a resident twin, step by step on the engine ----------------

using GreedyBackend = fakes::RecordingBackend;
using Clock0 = fakes::ManualClock;

ModelDeployment opt(const std::string& name, const std::string& weights, std::vector<GpuId> gpus) {
  ModelDeployment d;
  d.name = name;
  d.weights = weights;
  d.spec = modelPreset("opt-1.3b");
  d.tp = 1;
  d.pp = 1;
  d.gpus = std::move(gpus);
  return d;
}

Request req(std::int64_t id, ModelId m) {
  Request r;
  r.id = id;
  r.model = m;
  r.prompt_tokens = 8;
  r.output_tokens = 1;
  return r;
}

TEST(SerialLoads, SecondLoadOnASharedLinkWaitsForTheFirst) {
  EngineConfig cfg;
  cfg.models = {opt("a", "a", {0}), opt("b", "b", {0}), opt("c", "c", {1})};
  cfg.gpu_weight_budget = {100LL << 30, 100LL << 30};
  cfg.policy.serial_loads = true;
  GreedyBackend backend;
  Clock0 clock;
  Engine engine(cfg, backend, clock);
  engine.onArrival(req(1, 0));
  engine.onArrival(req(2, 1));
  engine.onArrival(req(3, 2));
  // a loads on GPU 0; b waits for GPU 0's link; c loads at once on GPU 1's own link.
  ASSERT_EQ(backend.loads.size(), 2u);
  EXPECT_EQ(backend.loads[0].model, 0);
  EXPECT_EQ(backend.loads[1].model, 2);
  engine.onLoadDone(backend.loads[0].op);
  ASSERT_EQ(backend.loads.size(), 3u);
  EXPECT_EQ(backend.loads[2].model, 1);
  engine.checkInvariants();
}

// Model "b" holds the same weights as resident "a" (same split) on another GPU: with routing
// `peer` its shard is copied over NVLink from a's GPU, and a is not evicted during the copy.
TEST(PeerCopy, LoadCopiesFromAResidentTwinOverNvlink) {
  EngineConfig cfg;
  cfg.models = {opt("a", "w", {0}), opt("b", "w", {1}), opt("c", "c", {1})};
  cfg.gpu_weight_budget = {100LL << 30, 100LL << 30};
  cfg.policy.routing = "peer";
  cfg.nvlink = true;
  GreedyBackend backend;
  Clock0 clock;
  Engine engine(cfg, backend, clock);
  engine.onArrival(req(1, 0));
  ASSERT_EQ(backend.loads.size(), 1u);
  ASSERT_EQ(backend.loads[0].route.size(), 1u);
  EXPECT_FALSE(backend.loads[0].route[0].from_device);  // nothing resident yet: from the host
  engine.onLoadDone(backend.loads[0].op);
  engine.onArrival(req(2, 1));
  ASSERT_EQ(backend.loads.size(), 2u);
  const auto& copy = backend.loads[1];
  EXPECT_EQ(copy.model, 1);
  EXPECT_EQ(copy.gpu, 1);
  ASSERT_EQ(copy.route.size(), 1u);
  EXPECT_TRUE(copy.route[0].from_device);
  EXPECT_EQ(copy.route[0].via, 0);
  EXPECT_EQ(copy.route[0].bytes, copy.bytes);
  engine.checkInvariants();
  // Different weights never copy, and without NVLink nothing does.
  cfg.nvlink = false;
  GreedyBackend backend2;
  Engine no_nvlink(cfg, backend2, clock);
  no_nvlink.onArrival(req(1, 0));
  no_nvlink.onLoadDone(backend2.loads[0].op);
  no_nvlink.onArrival(req(2, 1));
  ASSERT_EQ(backend2.loads.size(), 2u);
  EXPECT_FALSE(backend2.loads[1].route[0].from_device);
}

// End to end in the simulator: a hand-built scenario on 2 x H200 with the weight budget cut to
// one OPT-13B a GPU. "main" stays on GPU 0; "replica" (the same weights) and "other" take turns on
// GPU 1. With `peer` routing the replica's reloads copy from GPU 0 over NVLink (396 GB/s against
// 55 GB/s from the host), so NVLink carries bytes and requests wait less.
TEST(PeerCopy, HandBuiltScenarioMovesBytesOverNvlink) {
  auto doc = nlohmann::json::parse(R"({
    "name": "peer", "seed": 1, "duration_s": 20,
    "cluster": {"preset": "h200x2", "weight_budget_gb": 30},
    "models": [
      {"name": "main", "spec": "opt-13b", "weights": "opt-13b", "gpus": [0], "max_batch": 8},
      {"name": "replica", "spec": "opt-13b", "weights": "opt-13b", "gpus": [1], "max_batch": 8},
      {"name": "other", "spec": "opt-13b", "gpus": [1], "max_batch": 8}
    ],
    "workload": {"type": "gamma", "cv": 2, "rates": [20, 5, 5], "prompt_tokens": 64, "output_tokens": 1},
    "policy": {"name": "computron", "routing": "peer"},
    "outputs": {"dir": ""}
  })");
  sim::SimOptions options;
  options.check_invariants = true;
  auto peer = sim::runScenario(parseScenario(doc, "."), nullptr, options);
  doc["policy"]["routing"] = "direct";
  auto direct = sim::runScenario(parseScenario(doc, "."), nullptr, options);
  EXPECT_GT(peer["nvlink_bytes"].get<double>(), 0) << peer.dump();
  EXPECT_EQ(direct["nvlink_bytes"].get<double>(), 0);
  EXPECT_LT(peer["overall"]["latency_ms"]["mean"].get<double>(), direct["overall"]["latency_ms"]["mean"].get<double>());
}

}  // namespace
}  // namespace computron
