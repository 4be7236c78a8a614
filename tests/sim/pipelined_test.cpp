// Layer-pipelined execution in the simulator: a cold request's first token comes one layer's
// compute after its load ends (instead of a whole prefill after it), analytically; the engine's
// invariants hold with batches running on loading models; the scenario key is validated.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/json_reader.h"
#include "common/model_spec.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "tests/sim/observed_run.h"
#include "tests/sim/sim_test_util.h"

namespace computron {
namespace {

class PipelinedRecorder : public EngineObserver {
 public:
  void onRequestDone(const RequestRecord& record) override { requests.push_back(record); }
  void onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) override {
    if (ok) load_end[cmd.model] = std::max(load_end[cmd.model], end);
    if (ok) load_start[cmd.model] = start;
  }
  std::vector<RequestRecord> requests;
  std::map<ModelId, Nanos> load_end;    // latest shard load end per model
  std::map<ModelId, Nanos> load_start;  // start of its latest shard load
};

nlohmann::json coldScenario(int tp, int pp, bool pipelined) {
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "cold", "seed": 1, "duration_s": 10,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "opt", "spec": "opt-13b", "count": 1, "gpus": "all", "max_batch": 8}],
    "workload": {"type": "alternating", "requests": 1, "prompt_tokens": 512, "output_tokens": 4},
    "policy": {"name": "computron"},
    "outputs": {"dir": ""}
  })");
  doc["models"][0]["tp"] = tp;
  doc["models"][0]["pp"] = pp;
  nlohmann::json gpus = nlohmann::json::array();
  for (int g = 0; g < tp * pp; ++g) gpus.push_back(g);
  doc["models"][0]["gpus"] = gpus;
  doc["policy"]["layer_pipelined"] = pipelined;
  return doc;
}

PipelinedRecorder run(const nlohmann::json& doc) {
  Scenario s = parseScenario(doc, ".");
  PipelinedRecorder rec;
  testing::simulateObserved(s, rec);
  return rec;
}

TEST(LayerPipelined, ColdFirstTokenIsOneLayerAfterTheLoadOnOneGpu) {
  PipelinedRecorder plain = run(coldScenario(1, 1, false));
  PipelinedRecorder piped = run(coldScenario(1, 1, true));
  ASSERT_EQ(plain.requests.size(), 1u);
  ASSERT_EQ(piped.requests.size(), 1u);
  const Nanos load = plain.load_end.at(0);
  EXPECT_EQ(piped.load_end.at(0), load);  // the load itself is unchanged
  const RequestRecord& a = plain.requests[0];
  const RequestRecord& b = piped.requests[0];
  // Without pipelining the batch starts when the load ends; with it, at once.
  EXPECT_EQ(a.start, load);
  EXPECT_EQ(b.start, 0);
  const Nanos prefill = a.first_token - a.start;
  // OPT-13B has 40 layers; the prefill is shared over them and the head (41 shares). The host
  // link is slower than a layer's compute, so each layer waits for its bytes: the last layer
  // starts when its bytes are in (a moment before the load ends: only the final norm follows
  // it), the head after the last byte.
  const ShardLayout l = modelPreset("opt-13b").shard(1, 1, 0, 0);
  const double share = static_cast<double>(prefill) / 41.0;
  const double last_layer = static_cast<double>(load) * static_cast<double>(l.prefix_bytes + 40 * l.layer_bytes) /
                            static_cast<double>(l.bytes);
  const double expected = std::max(last_layer + share, static_cast<double>(load)) + share;
  EXPECT_NEAR(static_cast<double>(b.first_token), expected, 2.0);
  EXPECT_LT(b.first_token - load, prefill / 10);  // vs a whole prefill after the load
  // Decode steps follow unchanged.
  EXPECT_EQ(b.finish - b.first_token, a.finish - a.first_token);
}

TEST(LayerPipelined, SplitModelsFinishBetweenTheLoadEndAndTheSerialTime) {
  for (auto [tp, pp] : std::vector<std::pair<int, int>>{{2, 1}, {1, 2}, {2, 2}, {4, 1}, {1, 4}}) {
    PipelinedRecorder plain = run(coldScenario(tp, pp, false));
    PipelinedRecorder piped = run(coldScenario(tp, pp, true));
    const Nanos load = plain.load_end.at(0);
    const RequestRecord& a = plain.requests.at(0);
    const RequestRecord& b = piped.requests.at(0);
    EXPECT_GT(b.first_token, load) << tp << "x" << pp;
    EXPECT_LT(b.first_token, a.first_token) << tp << "x" << pp;
    // The first stage's last layer arrives at the end of the load, and every later stage needs
    // its output: at most the later stages' share of the prefill, the first stage's last layer
    // and the head follow the load. Tensor parallelism alone leaves two shares.
    const Nanos prefill = a.first_token - a.start;
    EXPECT_LE(b.first_token - load, prefill * (pp - 1) / pp + 2 * prefill / 41 + 1) << tp << "x" << pp;
  }
}

TEST(LayerPipelined, InvariantsHoldAndColdRequestsGetFaster) {
  auto doc = testing::smallScenario();
  doc["models"][0]["count"] = 4;
  doc["workload"]["rates"] = {5, 3, 2, 1};
  doc["workload"]["prompt_tokens"] = 512;
  PipelinedRecorder plain = run(doc);
  doc["policy"]["layer_pipelined"] = true;
  PipelinedRecorder piped = run(doc);
  ASSERT_EQ(plain.requests.size(), piped.requests.size());
  auto coldMean = [](const PipelinedRecorder& r) {
    double sum = 0;
    int n = 0;
    for (const auto& q : r.requests) {
      EXPECT_TRUE(q.ok);
      if (!q.waited_for_load) continue;
      sum += static_cast<double>(q.finish - q.request.arrival);
      ++n;
    }
    EXPECT_GT(n, 10);
    return sum / n;
  };
  EXPECT_LT(coldMean(piped), coldMean(plain));
}

// A trace in our CSV format, in a file of this test's own (ctest runs tests in parallel processes).
std::string traceFile(const std::string& rows) {
  const std::string path =
      ::testing::TempDir() + "/pipelined_" + ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".csv";
  std::ofstream f(path);
  f << "id,model,arrival_ns,prompt_tokens,output_tokens\n" << rows;
  return path;
}

// Two OPT-13B models on one GPU, one resident at a time, from a trace in our CSV format.
nlohmann::json twoModelTrace(const std::string& rows, bool serial_loads) {
  const std::string path = traceFile(rows);
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "two", "seed": 1,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "hot", "spec": "opt-13b", "tp": 1, "pp": 1, "gpus": [0], "max_batch": 1},
               {"name": "cold", "spec": "opt-13b", "tp": 1, "pp": 1, "gpus": [0], "max_batch": 1}],
    "workload": {"type": "trace", "format": "computron"},
    "policy": {"name": "computron", "max_loaded_models": 1, "layer_pipelined": true},
    "outputs": {"dir": ""}
  })");
  doc["workload"]["path"] = path;
  doc["policy"]["serial_loads"] = serial_loads;
  return doc;
}

const RequestRecord& lastOf(const PipelinedRecorder& r, ModelId model) {
  const RequestRecord* last = nullptr;
  for (const auto& q : r.requests)
    if (q.request.model == model && (last == nullptr || q.request.arrival > last->request.arrival)) last = &q;
  return *last;
}

// A model's first batch (no prefill estimate yet) starts with its load when it is the only model
// waiting, and waits for the load when another model waits too: it would hold the GPU throughout.
TEST(LayerPipelined, AFirstBatchStartsBehindItsLoadOnlyWhenNoOtherModelWaits) {
  PipelinedRecorder alone = run(twoModelTrace("0,hot,0,512,1\n1,cold,1000000000,512,1\n", false));
  ASSERT_EQ(alone.requests.size(), 2u);
  EXPECT_EQ(lastOf(alone, 1).start, alone.load_start.at(1));
  EXPECT_LT(lastOf(alone, 1).start, alone.load_end.at(1));
  // hot again at 1 s, beside cold: two models wait.
  PipelinedRecorder busy = run(twoModelTrace("0,hot,0,512,1\n1,cold,1000000000,512,1\n2,hot,1000000000,512,1\n", false));
  ASSERT_EQ(busy.requests.size(), 3u);
  for (const auto& r : busy.requests) EXPECT_TRUE(r.ok);
  EXPECT_GE(lastOf(busy, 1).start, busy.load_end.at(1));
}

// Once the model has run resident (its prefill time is known), a batch behind a later load of it
// starts about one prefill before the load ends, woken by the engine's timer; with serial loads
// that holds even while another model waits. It finishes as if it had started with the load.
TEST(LayerPipelined, ALaterBatchStartsOnePrefillBeforeTheLoadEnds) {
  // cold at 0 (cold start) and 1 s (resident: the prefill estimate), hot at 2 s (evicts cold),
  // cold and hot again at 4 s: cold's load evicts hot, whose request waits beside cold's.
  const std::string rows = "0,cold,0,512,1\n1,cold,1000000000,512,1\n2,hot,2000000000,512,1\n"
                           "3,cold,4000000000,512,1\n4,hot,4000000000,512,1\n";
  PipelinedRecorder rec = run(twoModelTrace(rows, true));
  ASSERT_EQ(rec.requests.size(), 5u);
  for (const auto& r : rec.requests) EXPECT_TRUE(r.ok);
  const RequestRecord& resident = rec.requests[1].request.model == 1 ? rec.requests[1] : rec.requests[0];
  const Nanos prefill = resident.first_token - resident.start;
  const RequestRecord& c = lastOf(rec, 1);
  const Nanos load_start = rec.load_start.at(1), load_end = rec.load_end.at(1);
  EXPECT_GT(c.start, load_start);
  EXPECT_LT(c.start, load_end);
  EXPECT_NEAR(static_cast<double>(c.start), static_cast<double>(load_end - prefill), 1e6);  // within 1 ms
  EXPECT_LT(c.first_token - load_end, prefill / 10);
  // Without layer_pipelined the same request starts at the load's end and takes a whole prefill.
  auto doc = twoModelTrace(rows, true);
  doc["policy"]["layer_pipelined"] = false;
  PipelinedRecorder plain = run(doc);
  EXPECT_EQ(lastOf(plain, 1).start, plain.load_end.at(1));
  EXPECT_GT(lastOf(plain, 1).first_token, c.first_token);
}

// A wake-up the engine no longer needs (the load it was for ended early) is dropped: the run
// ends with its last completion, not at the stale wake.
TEST(LayerPipelined, AStaleWakeDoesNotExtendTheRun) {
  // a and b load together at 0 (sharing GPU 0's link, so a's last load took twice as long as it
  // needs alone); a then runs resident (its prefill time), c evicts a, and a's next load, alone,
  // ends well before the wake set from the shared load's time.
  const std::string path = traceFile(
      "0,a,0,512,1\n1,b,0,512,1\n2,a,1000000000,512,1\n3,b,1500000000,512,1\n"
      "4,c,2000000000,512,1\n5,a,3000000000,512,1\n");
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "stale", "seed": 1,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "a", "spec": "opt-1.3b", "tp": 1, "pp": 1, "gpus": [0], "max_batch": 1},
               {"name": "b", "spec": "opt-1.3b", "tp": 1, "pp": 1, "gpus": [0], "max_batch": 1},
               {"name": "c", "spec": "opt-1.3b", "tp": 1, "pp": 1, "gpus": [0], "max_batch": 1}],
    "workload": {"type": "trace", "format": "computron"},
    "policy": {"name": "computron", "max_loaded_models": 2, "layer_pipelined": true},
    "outputs": {"dir": ""}
  })");
  doc["workload"]["path"] = path;
  Scenario s = parseScenario(doc, ".");
  PipelinedRecorder rec;
  const sim::SimStats stats = testing::simulateObserved(s, rec);
  ASSERT_EQ(rec.requests.size(), 6u);
  Nanos last_finish = 0;
  for (const auto& r : rec.requests) {
    EXPECT_TRUE(r.ok);
    last_finish = std::max(last_finish, r.finish);
  }
  // The setting holds: a's last load ended before its batch would have been woken.
  const RequestRecord& last = lastOf(rec, 0);
  EXPECT_EQ(last.start, rec.load_end.at(0));
  EXPECT_EQ(stats.end_time, last_finish);
}

TEST(LayerPipelined, ScenarioKeyIsABoolean) {
  auto doc = coldScenario(1, 1, true);
  EXPECT_TRUE(parseScenario(doc, ".").engine.policy.layer_pipelined);
  EXPECT_EQ(parseScenario(doc, ".").effective["policy"]["layer_pipelined"], true);
  doc["policy"]["layer_pipelined"] = "yes";
  const std::string error = testing::parseErrorOf(doc);
  EXPECT_NE(error.find("$.policy.layer_pipelined"), std::string::npos) << error;
}

}  // namespace
}  // namespace computron
