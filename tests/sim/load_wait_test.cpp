// `cluster.batches_wait_for_loads`: a batch issued while another model's load is copying onto its
// GPU starts when that load ends (the runtime's measured behaviour with loads issued whole);
// without the key it starts at once, as before.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/json_reader.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "tests/sim/observed_run.h"
#include "tests/sim/sim_test_util.h"
#include "tests/support/cli_runner.h"

namespace computron {
namespace {

using Recorder = testing::LoadRecorder;

// Two OPT-6.7B on GPU 0, both fit: m-0 serves at 0 s; m-1's first request at 2 s starts its
// load; m-0's second request arrives at 2.1 s, during that load.
Recorder run(bool wait) {
  const fakes::ScratchDir scratch;
  const std::filesystem::path& dir = scratch.path();
  std::ofstream(dir / "trace.csv") << "id,model,arrival_ns,prompt_tokens,output_tokens\n"
                                   << "0,m-0,0,64,1\n1,m-1,2000000000,64,1\n2,m-0,2100000000,64,1\n";
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "load-wait", "seed": 1, "duration_s": 5,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "m", "spec": "opt-6.7b", "count": 2, "tp": 1, "gpus": [0], "max_batch": 8}],
    "workload": {"type": "trace", "format": "computron", "path": "trace.csv"},
    "policy": {"name": "lru-bytes"},
    "outputs": {"dir": ""}
  })");
  if (wait) doc["cluster"]["batches_wait_for_loads"] = true;
  Scenario s = parseScenario(doc, dir.string());
  Recorder rec;
  testing::simulateObserved(s, rec);
  return rec;
}

TEST(BatchesWaitForLoads, ABatchIssuedDuringAnotherModelsLoadStartsWhenItEnds) {
  const Recorder off = run(false);
  const Recorder on = run(true);
  ASSERT_EQ(off.requests.size(), 3u);
  ASSERT_EQ(on.requests.size(), 3u);
  ASSERT_EQ(on.loads.at(1).size(), 1u);
  const auto [load_start, load_end] = on.loads.at(1)[0];
  ASSERT_EQ(load_start, 2'000'000'000);
  ASSERT_GT(load_end, 2'100'000'000);  // the load is still copying when request 2 arrives
  EXPECT_EQ(off.requests.at(2).start, 2'100'000'000);
  EXPECT_EQ(on.requests.at(2).start, load_end);
  // The batch itself takes as long either way; the first request is untouched. m-1's own first
  // batch, ready at the same load end, now follows m-0's on the GPU.
  EXPECT_EQ(on.requests.at(2).finish - on.requests.at(2).start, off.requests.at(2).finish - off.requests.at(2).start);
  EXPECT_EQ(on.requests.at(0).finish, off.requests.at(0).finish);
  EXPECT_EQ(off.requests.at(1).start, load_end);
  EXPECT_EQ(on.requests.at(1).start, on.requests.at(2).finish);
}

TEST(BatchesWaitForLoads, TheKeyMustBeABoolean) {
  nlohmann::json doc = testing::smallScenario();
  doc["cluster"]["batches_wait_for_loads"] = true;
  EXPECT_TRUE(parseScenario(doc, ".").cluster.batches_wait_for_loads);
  doc["cluster"]["batches_wait_for_loads"] = 1;
  const std::string error = testing::parseErrorOf(doc);
  EXPECT_NE(error.find("$.cluster.batches_wait_for_loads"), std::string::npos) << error;
}

}  // namespace
}  // namespace computron
