// The policy registries: lookup by name, the unknown-name errors (with the known list, and the JSON
// path when a scenario names one), every registered name through parse and print, the policy sets'
// choices, and the prefetch and routing objects' answers on hand-built states.
#include "common/core/registry.h"

#include <gtest/gtest.h>

#include <set>

#include "common/core/engine.h"
#include "common/core/oracle.h"
#include "common/core/placement.h"
#include "common/core/policy.h"
#include "common/scenario/scenario.h"
#include "tests/support/engine_fakes.h"

namespace computron {
namespace {

using fakes::ManualClock;
using fakes::RecordingBackend;

std::string errorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(PolicyRegistry, LookupByName) {
  EXPECT_EQ(EvictionChoice("gdsf").name(), "gdsf");
  EXPECT_EQ(QueueChoice("swap-aware").name(), "swap-aware");
  EXPECT_EQ(PrefetchChoice("rate").name(), "rate");
  EXPECT_EQ(RoutingChoice("multipath").name(), "multipath");
  EXPECT_EQ(PlacementChoice("greedy").name(), "greedy");
  EXPECT_EQ(PolicySetChoice("best-serial").name(), "best-serial");
  // Handles compare by identity, and with a name through its handle.
  EXPECT_EQ(EvictionChoice("lfu"), EvictionChoice(std::string("lfu")));
  EXPECT_FALSE(EvictionChoice("lfu") == EvictionChoice("lru"));
  EXPECT_EQ(RoutingChoice("peer"), "peer");
  // One object per entry, shared by every handle.
  EXPECT_EQ(&EvictionChoice("belady").policy(), &EvictionChoice("belady").policy());
  EXPECT_EQ(EvictionChoice::registry().find("fifo"), nullptr);
  ASSERT_NE(EvictionChoice::registry().find("demand"), nullptr);
  EXPECT_EQ(EvictionChoice::registry().find("demand")->name, "demand");
}

TEST(PolicyRegistry, WhatEachPolicySaysAboutItself) {
  EXPECT_TRUE(EvictionChoice("belady")->needsFuture());
  for (const char* name : {"lru", "lfu", "gdsf", "demand"}) EXPECT_FALSE(EvictionChoice(name)->needsFuture()) << name;
  EXPECT_TRUE(QueueChoice("swap-aware")->drainsBeforeSwap());
  EXPECT_FALSE(QueueChoice("edf")->drainsBeforeSwap());
  EXPECT_FALSE(QueueChoice("fcfs")->drainsBeforeSwap());
  EXPECT_FALSE(PrefetchChoice("none")->active());
  EXPECT_TRUE(PrefetchChoice("rate")->active());
  EXPECT_TRUE(PrefetchChoice("oracle")->needsFuture());
  EXPECT_FALSE(PrefetchChoice("rate")->needsFuture());
  // Rate prefetch keeps models at least half as hot; oracle only hotter ones.
  EXPECT_DOUBLE_EQ(PrefetchChoice("rate")->keepThreshold(4), 2);
  EXPECT_DOUBLE_EQ(PrefetchChoice("oracle")->keepThreshold(4), 4);
  EXPECT_FALSE(PlacementChoice("all-gpus")->usesExpectedLoads());
  EXPECT_TRUE(PlacementChoice("greedy")->usesExpectedLoads());

  PolicyConfig config;
  EXPECT_FALSE(config.needsFuture());
  config.prefetch = "oracle";
  EXPECT_TRUE(config.needsFuture());
}

TEST(PolicyRegistry, UnknownNameListsTheKnownOnes) {
  EXPECT_EQ(errorOf([] { EvictionChoice("fifo"); }),
            "unknown eviction policy 'fifo' (known: lru, lfu, gdsf, demand, belady)");
  EXPECT_EQ(errorOf([] { QueueChoice("lifo"); }), "unknown queue policy 'lifo' (known: fcfs, edf, swap-aware)");
  EXPECT_EQ(errorOf([] { PrefetchChoice("eager"); }), "unknown prefetch policy 'eager' (known: none, rate, oracle)");
  EXPECT_EQ(errorOf([] { RoutingChoice("ring"); }), "unknown routing policy 'ring' (known: direct, peer, multipath, remote-host)");
  EXPECT_EQ(errorOf([] { PlacementChoice("random"); }), "unknown placement 'random' (known: all-gpus, greedy)");
  EXPECT_EQ(errorOf([] { PolicySetChoice("fifo"); }),
            "unknown policy set 'fifo' (known: computron, lru-bytes, lfu, gdsf, best, best-serial, oracle)");
}

TEST(PolicyRegistry, AScenarioNamingAnUnknownPolicyFailsWithItsPath) {
  struct Case {
    const char* override_;
    const char* message;
  };
  const Case cases[] = {
      {"policy.eviction=fifo", "$.policy.eviction: unknown eviction policy 'fifo' (known: lru, lfu, gdsf, demand, belady)"},
      {"policy.queue=lifo", "$.policy.queue: unknown queue policy 'lifo' (known: fcfs, edf, swap-aware)"},
      {"policy.prefetch=eager", "$.policy.prefetch: unknown prefetch policy 'eager' (known: none, rate, oracle)"},
      {"policy.routing=ring", "$.policy.routing: unknown routing policy 'ring' (known: direct, peer, multipath, remote-host)"},
      {"policy.name=fifo",
       "$.policy.name: unknown policy set 'fifo' (known: computron, lru-bytes, lfu, gdsf, best, best-serial, oracle)"},
      {"policy=fifo", "$.policy: unknown policy set 'fifo' (known: computron, lru-bytes, lfu, gdsf, best, best-serial, oracle)"},
      {"policy.placement=random", "$.policy.placement: unknown placement 'random' (known: all-gpus, greedy)"},
      {"policy.placement.policy=random", "$.policy.placement.policy: unknown placement 'random' (known: all-gpus, greedy)"},
  };
  for (const auto& c : cases) {
    nlohmann::json doc = defaultScenarioJson();
    applyOverride(doc, c.override_);
    EXPECT_EQ(errorOf([&] { parseScenario(doc, "."); }), c.message) << c.override_;
  }
}

// Every registered name of each kind parses into its handle and is printed back, the same, into
// the effective configuration (summary.json's config.policy).
TEST(PolicyRegistry, EveryNameRoundTripsThroughTheScenario) {
  const std::vector<PolicyKindListing> kinds = registeredPolicies();
  ASSERT_EQ(kinds.size(), 6u);
  std::set<std::string> keys;
  for (const auto& kind : kinds) {
    keys.insert(kind.key);
    ASSERT_FALSE(kind.policies.empty()) << kind.key;
    for (const auto& policy : kind.policies) {
      EXPECT_FALSE(policy.description.empty()) << kind.key << " " << policy.name;
      EXPECT_EQ(policy.description.find('\n'), std::string::npos) << kind.key << " " << policy.name;
      nlohmann::json doc = defaultScenarioJson();
      applyOverride(doc, kind.field + "=\"" + policy.name + "\"");
      const Scenario s = parseScenario(doc, ".");
      const nlohmann::json& effective = s.effective["policy"];
      const nlohmann::json& printed =
          kind.key == "set" ? effective["name"] : kind.key == "placement" ? effective["placement"]["policy"] : effective[kind.key];
      EXPECT_EQ(printed, policy.name) << kind.field;
    }
  }
  EXPECT_EQ(keys, (std::set<std::string>{"set", "eviction", "queue", "prefetch", "routing", "placement"}));
  // The names lists read the same registries.
  EXPECT_EQ(evictionPolicyNames(), EvictionChoice::registry().names());
  EXPECT_EQ(queuePolicyNames(), QueueChoice::registry().names());
  EXPECT_EQ(prefetchPolicyNames(), PrefetchChoice::registry().names());
  EXPECT_EQ(routingPolicyNames(), RoutingChoice::registry().names());
  EXPECT_EQ(placementPolicyNames(), PlacementChoice::registry().names());
  EXPECT_EQ(policySetNames(), PolicySetChoice::registry().names());
}

TEST(PolicyRegistry, SetsFillTheirChoices) {
  PolicyConfig config;
  config.max_loaded_models = 2;
  config.name = "oracle";
  applyPolicySet(config);
  EXPECT_EQ(config.eviction, "belady");
  EXPECT_EQ(config.queue, "swap-aware");
  EXPECT_EQ(config.prefetch, "oracle");
  EXPECT_EQ(config.routing, "multipath");
  EXPECT_FALSE(config.serial_loads);
  EXPECT_EQ(config.max_loaded_models, 2);
  config.name = "best-serial";
  applyPolicySet(config);
  EXPECT_TRUE(config.serial_loads);
  EXPECT_EQ(config.prefetch, "none");
  config.name = "lru-bytes";
  applyPolicySet(config);
  EXPECT_EQ(config.max_loaded_models, 0);  // bounded by bytes alone
  EXPECT_FALSE(config.serial_loads);
}

TEST(PolicyRegistry, ANameRegisteredTwiceIsRefused) {
  Registry<int> registry("number");
  registry.add("one", "the first", [] { return std::make_unique<const int>(1); });
  EXPECT_THROW(registry.add("one", "again", [] { return std::make_unique<const int>(2); }), std::logic_error);
  EXPECT_EQ(*registry.at("one").instance, 1);
  EXPECT_EQ(registry.unknownMessage("two"), "unknown number 'two' (known: one)");
}

// ---- Routing and prefetch objects on a hand-built engine state -----------------------------

ModelDeployment small(const std::string& name, std::vector<GpuId> gpus) {
  ModelDeployment d;
  d.name = name;
  d.weights = name;
  d.spec = modelPreset("opt-125m");
  d.tp = static_cast<int>(gpus.size());
  d.gpus = std::move(gpus);
  return d;
}

EngineConfig twoGpus(std::vector<ModelDeployment> models, const char* routing) {
  EngineConfig config;
  config.models = std::move(models);
  config.gpu_weight_budget = {16 * kGiB, 16 * kGiB};
  config.gpu_link_bandwidth = {30e9, 10e9};
  config.nvlink = true;
  config.policy.routing = routing;
  return config;
}

TEST(RoutingPolicy, DirectLoadsOverTheShardsOwnLink) {
  EngineConfig config = twoGpus({small("a", {0})}, "direct");
  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  const auto routes = config.policy.routing->plan(0, engine);
  ASSERT_EQ(routes.size(), 1u);
  EXPECT_EQ(routes[0].copy_from, -1);
  ASSERT_EQ(routes[0].parts.size(), 1u);
  EXPECT_EQ(routes[0].parts[0].via, 0);
  EXPECT_EQ(routes[0].parts[0].bytes, engine.shardBytes(0, 0));
  EXPECT_FALSE(routes[0].parts[0].from_device);
}

TEST(RoutingPolicy, MultipathSplitsByBandwidthOverAnIdleLink) {
  EngineConfig config = twoGpus({small("a", {0})}, "multipath");
  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  const auto routes = config.policy.routing->plan(0, engine);
  ASSERT_EQ(routes.size(), 1u);
  ASSERT_EQ(routes[0].parts.size(), 2u);
  const std::int64_t bytes = engine.shardBytes(0, 0);
  // GPU 1's link carries a quarter (10 of 40 GB/s); the shard's own link the rest, rounding included.
  EXPECT_EQ(routes[0].parts[1].via, 1);
  EXPECT_EQ(routes[0].parts[1].bytes, static_cast<std::int64_t>(static_cast<double>(bytes) * 10e9 / 40e9));
  EXPECT_EQ(routes[0].parts[0].via, 0);
  EXPECT_EQ(routes[0].parts[0].bytes + routes[0].parts[1].bytes, bytes);
  // Under "peer" the same load goes direct: no twin is resident.
  config.policy.routing = "peer";
  Engine peer(config, backend, clock);
  EXPECT_EQ(config.policy.routing->plan(0, peer)[0].parts.size(), 1u);
}

TEST(RoutingPolicy, PeerCopiesFromAResidentTwin) {
  ModelDeployment a = small("a", {0});
  ModelDeployment b = small("b", {1});
  a.weights = b.weights = "shared";
  for (const char* routing : {"peer", "multipath", "direct"}) {
    EngineConfig config = twoGpus({a, b}, routing);
    RecordingBackend backend;
    ManualClock clock;
    Engine engine(config, backend, clock);
    Request r;
    r.id = 1;
    r.model = 0;
    engine.onArrival(r);  // a loads over its link
    ASSERT_EQ(backend.loads.size(), 1u) << routing;
    engine.onLoadDone(backend.loads[0].op);
    const auto routes = config.policy.routing->plan(1, engine);
    ASSERT_EQ(routes.size(), 1u);
    if (std::string(routing) == "direct") {
      EXPECT_EQ(routes[0].copy_from, -1);
      EXPECT_FALSE(routes[0].parts[0].from_device);
    } else {
      EXPECT_EQ(routes[0].copy_from, 0) << routing;
      ASSERT_EQ(routes[0].parts.size(), 1u);
      EXPECT_TRUE(routes[0].parts[0].from_device);
      EXPECT_EQ(routes[0].parts[0].via, 0);
    }
  }
}

TEST(PrefetchPolicy, PicksTheHottestOffloadedModel) {
  EngineConfig config = twoGpus({small("a", {0}), small("b", {1}), small("c", {1})}, "direct");
  config.future = std::make_shared<const ArrivalOracle>(std::vector<std::vector<Nanos>>{
      {5 * kNanosPerSecond}, {2 * kNanosPerSecond}, {}});
  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  const auto& oracle = PrefetchChoice("oracle").policy();
  // b's next request comes soonest: 1 / (1 + 2 s); c never comes again.
  EXPECT_DOUBLE_EQ(oracle.score(1, engine), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(oracle.score(2, engine), -1);
  const PrefetchPolicy::Pick pick = oracle.pick(engine);
  EXPECT_EQ(pick.model, 1);
  EXPECT_DOUBLE_EQ(pick.score, 1.0 / 3.0);
  // No arrivals yet: no rate, nothing worth loading.
  EXPECT_EQ(PrefetchChoice("rate")->pick(engine).model, -1);
  EXPECT_EQ(PrefetchChoice("none")->pick(engine).model, -1);
}

}  // namespace
}  // namespace computron
