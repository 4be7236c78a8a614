// `cluster.host_loads_in_order` (or a profile's `links.loads_in_order`): direct loads onto one GPU
// run one after another in issue order, as the runtime's load stream copies them; without the key
// two loads issued together share the link and end together, as before.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "tests/sim/observed_run.h"
#include "tests/sim/sim_test_util.h"
#include "tests/support/cli_runner.h"

namespace computron {
namespace {

using Recorder = testing::LoadRecorder;

// Two OPT-6.7B on GPU 0, both fitting, neither resident: a request for each at 0 s issues both
// loads at once over GPU 0's host link.
nlohmann::json scenarioDoc() {
  return nlohmann::json::parse(R"({
    "name": "loads-in-order", "seed": 1, "duration_s": 5,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "m", "spec": "opt-6.7b", "count": 2, "tp": 1, "gpus": [0], "max_batch": 8}],
    "workload": {"type": "trace", "format": "computron", "path": "trace.csv"},
    "policy": {"name": "lru-bytes"},
    "outputs": {"dir": ""}
  })");
}

Recorder run(const nlohmann::json& doc, const std::filesystem::path& dir) {
  std::ofstream(dir / "trace.csv") << "id,model,arrival_ns,prompt_tokens,output_tokens\n"
                                   << "0,m-0,0,64,1\n1,m-1,0,64,1\n";
  Scenario s = parseScenario(doc, dir.string());
  Recorder rec;
  testing::simulateObserved(s, rec);
  return rec;
}

TEST(HostLoadsInOrder, TwoLoadsOnOneGpuRunOneAfterTheOther) {
  fakes::ScratchDir dir;
  nlohmann::json doc = scenarioDoc();
  const Recorder shared = run(doc, dir.path());
  doc["cluster"]["host_loads_in_order"] = true;
  const Recorder ordered = run(doc, dir.path());
  ASSERT_EQ(shared.requests.size(), 2u);
  ASSERT_EQ(ordered.requests.size(), 2u);
  for (const Recorder* r : {&shared, &ordered}) {
    ASSERT_EQ(r->loads.at(0).size(), 1u);
    ASSERT_EQ(r->loads.at(1).size(), 1u);
    EXPECT_EQ(r->loads.at(0)[0].first, 0);  // both issued at once
    EXPECT_EQ(r->loads.at(1)[0].first, 0);
  }
  // Shared: equal bytes at equal shares end together.
  EXPECT_EQ(shared.loads.at(0)[0].second, shared.loads.at(1)[0].second);
  // In order: the first issued ends after one load's time (bytes / bandwidth + latency), the
  // second starts copying then and ends one load's time later.
  const Nanos first = std::min(ordered.loads.at(0)[0].second, ordered.loads.at(1)[0].second);
  const Nanos second = std::max(ordered.loads.at(0)[0].second, ordered.loads.at(1)[0].second);
  EXPECT_LT(first, shared.loads.at(0)[0].second);
  EXPECT_NEAR(static_cast<double>(second), 2.0 * static_cast<double>(first), 2.0);
  // The shared pair ends when the second ordered load does, less one latency (paid twice in order).
  EXPECT_GE(second, shared.loads.at(0)[0].second);
  // Whoever loaded first is served first; nobody is served later than with a shared link.
  EXPECT_LT(std::min(ordered.requests.at(0).finish, ordered.requests.at(1).finish),
            std::min(shared.requests.at(0).finish, shared.requests.at(1).finish));
}

TEST(HostLoadsInOrder, TheKeyIsABooleanAndAProfileCanSetIt) {
  nlohmann::json doc = testing::smallScenario();
  EXPECT_FALSE(parseScenario(doc, ".").cluster.host_loads_in_order);
  doc["cluster"]["host_loads_in_order"] = true;
  EXPECT_TRUE(parseScenario(doc, ".").cluster.host_loads_in_order);
  doc["cluster"]["host_loads_in_order"] = "yes";
  const std::string error = testing::parseErrorOf(doc);
  EXPECT_NE(error.find("$.cluster.host_loads_in_order"), std::string::npos) << error;

  fakes::ScratchDir dir;
  const nlohmann::json profile = nlohmann::json::parse(R"({
    "format": "computron-profile", "version": 1,
    "provenance": {"tool": "test", "date": "2026-12-01T00:00:00Z"},
    "links": {"host_link_gbps": 20, "loads_in_order": true},
    "models": [{"spec": "opt-1.3b", "tp": 1, "pp": 1,
                "prefill": {"batch": [1, 4], "prompt_tokens": [16, 64], "ms": [[2, 4], [5, 11]]},
                "decode": {"batch": [1, 4], "context": [32, 128], "ms": [[1, 1.5], [2, 3]]},
                "batch_tail_ms": 0.25, "first_batch_extra_ms": 0}]
  })");
  std::ofstream(dir.path() / "p.json") << profile.dump();
  nlohmann::json with_profile = testing::smallScenario();
  with_profile["cluster"] = {{"preset", "a100-40gb-x4"}, {"profile", "p.json"}};
  EXPECT_TRUE(parseScenario(with_profile, dir.path().string()).cluster.host_loads_in_order);
  // A key in the cluster node wins over the profile's.
  with_profile["cluster"]["host_loads_in_order"] = false;
  EXPECT_FALSE(parseScenario(with_profile, dir.path().string()).cluster.host_loads_in_order);
}

}  // namespace
}  // namespace computron
