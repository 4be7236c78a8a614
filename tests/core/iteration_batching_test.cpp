// Iteration-level batching (policy.batching "iteration"): sequences join and leave a model's
// session at step boundaries, within max_batch and the KV budget; drain and preemption when another
// model needs the GPUs; refusals of requests that can never fit. Exact times by hand, then
// invariants over many random runs of the simulator.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <set>

#include "common/core/engine.h"
#include "common/core/policy.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "tests/support/engine_fakes.h"
#include "tests/support/vector_source.h"

namespace computron {
namespace {

using fakes::ManualClock;
using fakes::RecordingBackend;
using Collector = fakes::RecordCollector;

ModelDeployment deployment(const std::string& name, const std::string& preset, std::vector<GpuId> gpus, int max_batch) {
  ModelDeployment d;
  d.name = name;
  d.spec = modelPreset(preset);
  d.tp = static_cast<int>(gpus.size());
  d.gpus = std::move(gpus);
  d.max_batch = max_batch;
  return d;
}

StepResult stepDone(const StepCommand& cmd, Nanos start, Nanos end) {
  StepResult r;
  r.batch = cmd.batch;
  r.step = cmd.step;
  r.start = start;
  r.end = end;
  return r;
}

EngineConfig oneModel(int max_batch) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", {0}, max_batch)};
  config.gpu_weight_budget = {kGiB};
  config.policy.batching = Batching::kIteration;
  return config;
}

// Models a and b on GPU 0, room for one of them at a time: b's arrival makes a's session drain.
EngineConfig twoModelsOneFits() {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", {0}, 4), deployment("b", "opt-125m", {0}, 4)};
  const std::int64_t bytes = config.models[0].spec.shard(1, 1, 0, 0).bytes;
  config.gpu_weight_budget = {bytes + bytes / 2};
  config.policy.batching = Batching::kIteration;
  return config;
}

// Loads model 0 (one shard) and returns when it is resident.
void loadFirst(Engine& engine, RecordingBackend& backend, ManualClock& clock, Nanos at) {
  clock.t = at;
  engine.onLoadDone(backend.loads.back().op);
}

class TokenGaps : public Collector {
 public:
  void onTokenGaps(ModelId, Nanos gap, std::int64_t count) override {
    for (std::int64_t i = 0; i < count; ++i) gaps.push_back(gap);
  }
  std::vector<Nanos> gaps;
};

// One model (oneModel) over a recording backend and a manual clock, its records and token gaps
// collected: start(max_batch) makes the engine.
class IterationSession : public ::testing::Test {
 protected:
  Engine& start(int max_batch) { return engine_.emplace(oneModel(max_batch), backend, clock, &observer); }
  RecordingBackend backend;
  ManualClock clock;
  TokenGaps observer;

 private:
  std::optional<Engine> engine_;
};

TEST_F(IterationSession, SequencesJoinAndLeaveAtStepBoundaries) {
  Engine& engine = start(4);
  engine.onArrival(fakes::makeRequest(0, 0, 0, 10, 3));
  loadFirst(engine, backend, clock, 10);
  ASSERT_EQ(backend.steps.size(), 1u);
  EXPECT_EQ(backend.log.back(), "step 0 prefill x1");
  EXPECT_EQ(backend.steps[0].prefill[0].context, 10);

  clock.t = 20;  // r0's first token; a decode step follows
  engine.onStepDone(stepDone(backend.steps[0], 10, 20));
  ASSERT_EQ(backend.steps.size(), 2u);
  EXPECT_EQ(backend.log.back(), "step 0 decode x1");
  EXPECT_EQ(backend.steps[1].decode[0].context, 11);

  clock.t = 25;  // r1 arrives mid-step: it waits for the boundary
  engine.onArrival(fakes::makeRequest(1, 0, 25, 5, 2));
  EXPECT_EQ(backend.steps.size(), 2u);
  EXPECT_EQ(engine.model(0).queue.size(), 1u);

  clock.t = 30;  // boundary: r1 joins with a prefill step of its own; r0 (2 tokens) waits it
  engine.onStepDone(stepDone(backend.steps[1], 20, 30));
  ASSERT_EQ(backend.steps.size(), 3u);
  EXPECT_EQ(backend.log.back(), "step 0 prefill x1");
  EXPECT_EQ(backend.steps[2].prefill[0].request.id, 1);
  EXPECT_EQ(engine.sessionSequences(0), 2);

  clock.t = 40;
  engine.onStepDone(stepDone(backend.steps[2], 30, 40));
  ASSERT_EQ(backend.steps.size(), 4u);
  EXPECT_EQ(backend.log.back(), "step 0 decode x2");
  EXPECT_EQ(backend.steps[3].decode[0].context, 12);  // r0: prompt 10 + 2 tokens
  EXPECT_EQ(backend.steps[3].decode[1].context, 6);   // r1: prompt 5 + 1 token

  clock.t = 50;  // both make their last token: the session ends
  engine.onStepDone(stepDone(backend.steps[3], 40, 50));
  EXPECT_EQ(backend.steps.size(), 4u);
  EXPECT_FALSE(engine.model(0).running);
  EXPECT_FALSE(engine.gpuBusy(0));
  EXPECT_EQ(engine.gpuKvUsed(0), 0);
  ASSERT_EQ(observer.records.size(), 2u);
  const RequestRecord& r0 = observer.records[0];
  const RequestRecord& r1 = observer.records[1];
  EXPECT_EQ(r0.request.id, 0);
  EXPECT_EQ(r0.start, 10);
  EXPECT_EQ(r0.first_token, 20);
  EXPECT_EQ(r0.finish, 50);
  EXPECT_EQ(r1.request.id, 1);
  EXPECT_EQ(r1.start, 30);
  EXPECT_EQ(r1.first_token, 40);
  EXPECT_EQ(r1.finish, 50);
  EXPECT_TRUE(r0.ok && r1.ok);
  EXPECT_EQ(r0.batch, r1.batch);  // one session
  // r0: tokens at 20, 30, 50 (it waited r1's prefill); r1: 40, 50.
  EXPECT_EQ(observer.gaps, (std::vector<Nanos>{10, 20, 10}));
  engine.checkInvariants();
}

TEST_F(IterationSession, RetiredSequencesAreNamedInTheNextStep) {
  Engine& engine = start(4);
  engine.onArrival(fakes::makeRequest(0, 0, 0, 4, 1));
  engine.onArrival(fakes::makeRequest(1, 0, 0, 4, 3));
  loadFirst(engine, backend, clock, 10);
  ASSERT_EQ(backend.steps.size(), 1u);
  EXPECT_EQ(backend.steps[0].prefill.size(), 2u);
  clock.t = 20;
  engine.onStepDone(stepDone(backend.steps[0], 10, 20));  // r0 is done with its one token
  ASSERT_EQ(observer.records.size(), 1u);
  EXPECT_EQ(observer.records[0].request.id, 0);
  ASSERT_EQ(backend.steps.size(), 2u);
  EXPECT_EQ(backend.steps[1].retired, (std::vector<RequestId>{0}));
  EXPECT_EQ(backend.steps[1].decode.size(), 1u);
}

// A sequence that ends its session (the last to leave, or failed with its step) is named in the
// model's next step, in a later session: a rank that did not see it end forgets its tokens then.
TEST_F(IterationSession, SequencesEndingTheirSessionAreNamedInTheModelsNextStep) {
  Engine& engine = start(4);
  engine.onArrival(fakes::makeRequest(0, 0, 0, 4, 1));
  loadFirst(engine, backend, clock, 10);
  ASSERT_EQ(backend.steps.size(), 1u);
  clock.t = 20;
  engine.onStepDone(stepDone(backend.steps[0], 10, 20));  // r0's one token: the session ends
  EXPECT_FALSE(engine.model(0).running);
  ASSERT_EQ(backend.steps.size(), 1u);
  clock.t = 30;
  engine.onArrival(fakes::makeRequest(1, 0, 30, 4, 2));
  ASSERT_EQ(backend.steps.size(), 2u);
  EXPECT_NE(backend.steps[1].batch, backend.steps[0].batch);  // a new session
  EXPECT_EQ(backend.steps[1].retired, (std::vector<RequestId>{0}));
  StepResult failed = stepDone(backend.steps[1], 30, 40);
  failed.ok = false;
  failed.error = "injected";
  clock.t = 40;
  engine.onStepDone(failed);  // r1 fails with its step; the session ends
  EXPECT_FALSE(engine.model(0).running);
  clock.t = 50;
  engine.onArrival(fakes::makeRequest(2, 0, 50, 4, 1));
  ASSERT_EQ(backend.steps.size(), 3u);
  EXPECT_EQ(backend.steps[2].retired, (std::vector<RequestId>{1}));  // named once, not again
  ASSERT_EQ(observer.records.size(), 2u);
  EXPECT_FALSE(observer.records[1].ok);
  engine.checkInvariants();
}

TEST_F(IterationSession, MaxBatchBoundsTheSession) {
  Engine& engine = start(2);
  for (int i = 0; i < 3; ++i) engine.onArrival(fakes::makeRequest(i, 0, 0, 4, 2));
  loadFirst(engine, backend, clock, 10);
  EXPECT_EQ(backend.steps[0].prefill.size(), 2u);
  EXPECT_EQ(engine.model(0).queue.size(), 1u);
  clock.t = 20;
  engine.onStepDone(stepDone(backend.steps[0], 10, 20));
  EXPECT_EQ(backend.log.back(), "step 0 decode x2");  // full: the third waits
  clock.t = 30;
  engine.onStepDone(stepDone(backend.steps[1], 20, 30));  // both leave; the third joins
  EXPECT_EQ(backend.log.back(), "step 0 prefill x1");
  EXPECT_EQ(backend.steps[2].prefill[0].request.id, 2);
}

TEST(IterationBatching, KvBudgetHoldsAdmissionUntilSequencesLeave) {
  EngineConfig config = oneModel(8);
  RecordingBackend probe_backend;
  ManualClock probe_clock;
  const std::int64_t per_token = Engine(config, probe_backend, probe_clock).kvBytesPerToken(0, 0);
  ASSERT_GT(per_token, 0);
  config.gpu_kv_budget = {250 * per_token};  // two requests of 100 tokens fit, not three
  RecordingBackend backend;
  ManualClock clock;
  Collector observer;
  Engine engine(config, backend, clock, &observer);
  engine.onArrival(fakes::makeRequest(0, 0, 0, 90, 10));
  engine.onArrival(fakes::makeRequest(1, 0, 0, 60, 40));
  engine.onArrival(fakes::makeRequest(2, 0, 0, 90, 10));
  loadFirst(engine, backend, clock, 10);
  EXPECT_EQ(backend.steps[0].prefill.size(), 2u);
  EXPECT_EQ(engine.gpuKvUsed(0), 200 * per_token);
  Nanos t = 10;
  // r0 makes its 10 tokens by step 9; until then r2 waits, and the budget is never exceeded.
  for (int s = 0; s < 10; ++s) {
    engine.checkInvariants();
    EXPECT_EQ(engine.model(0).queue.size(), 1u) << "step " << s;
    clock.t = t + 10;
    engine.onStepDone(stepDone(backend.steps.back(), t, t + 10));
    t += 10;
  }
  EXPECT_EQ(observer.records.size(), 1u);
  EXPECT_EQ(backend.log.back(), "step 0 prefill x1");
  EXPECT_EQ(backend.steps.back().prefill[0].request.id, 2);
  EXPECT_EQ(engine.gpuKvUsed(0), 200 * per_token);
  engine.checkInvariants();
}

TEST(IterationBatching, RequestsThatCanNeverFitAreRefusedWithTheirReason) {
  EngineConfig config = oneModel(4);
  RecordingBackend probe_backend;
  ManualClock probe_clock;
  const std::int64_t per_token = Engine(config, probe_backend, probe_clock).kvBytesPerToken(0, 0);
  config.gpu_kv_budget = {1000 * per_token};
  for (Batching mode : {Batching::kRequest, Batching::kIteration}) {
    config.policy.batching = mode;
    RecordingBackend backend;
    ManualClock clock;
    Collector observer;
    Engine engine(config, backend, clock, &observer);
    engine.onArrival(fakes::makeRequest(0, 0, 5, 2000, 49));   // 2049 > opt-125m's 2048 positions
    engine.onArrival(fakes::makeRequest(1, 0, 6, 900, 101));   // 1001 tokens of KV > the budget of 1000
    engine.onArrival(fakes::makeRequest(2, 0, 7, 900, 100));   // fits exactly
    ASSERT_EQ(observer.records.size(), 2u);
    EXPECT_FALSE(observer.records[0].ok);
    EXPECT_TRUE(observer.records[0].refused);
    EXPECT_EQ(observer.records[0].error,
              "refused: prompt + output tokens (2049) exceed the maximum positions of a (2048)");
    EXPECT_TRUE(observer.records[1].refused);
    EXPECT_NE(observer.records[1].error.find("exceeds the KV budget"), std::string::npos) << observer.records[1].error;
    EXPECT_EQ(engine.requestsRefused(), 2);
    EXPECT_EQ(engine.requestsInFlight(), 1);
    EXPECT_EQ(engine.model(0).queue.size(), 1u);
    EXPECT_EQ(backend.loads.size(), 1u);  // only the request that fits asked for a load
  }
}

TEST(IterationBatching, RequestLevelBatchesStopAtTheKvBudget) {
  EngineConfig config = oneModel(8);
  config.policy.batching = Batching::kRequest;
  RecordingBackend probe_backend;
  ManualClock probe_clock;
  const std::int64_t per_token = Engine(config, probe_backend, probe_clock).kvBytesPerToken(0, 0);
  config.gpu_kv_budget = {250 * per_token};
  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  for (int i = 0; i < 3; ++i) engine.onArrival(fakes::makeRequest(i, 0, 0, 90, 10));
  loadFirst(engine, backend, clock, 10);
  ASSERT_EQ(backend.runs.size(), 1u);
  EXPECT_EQ(backend.runs[0].requests.size(), 2u);
  engine.checkInvariants();
}

// Two models share GPU 0 and only one fits: b's arrival makes a's session drain; with max_drain 0
// a's sequence is preempted at the next boundary, a is evicted, b runs, and a's request rejoins
// later with its tokens recomputed, its first token's time kept.
TEST(IterationBatching, DrainPreemptsAfterMaxDrainAndRecomputesProgress) {
  EngineConfig config = twoModelsOneFits();
  config.policy.max_drain = 15;
  config.policy.session_quantum = 0;
  RecordingBackend backend;
  ManualClock clock;
  TokenGaps observer;
  Engine engine(config, backend, clock, &observer);
  engine.onArrival(fakes::makeRequest(0, 0, 0, 8, 10));
  loadFirst(engine, backend, clock, 10);
  clock.t = 20;
  engine.onStepDone(stepDone(backend.steps[0], 10, 20));  // r0 has its first token
  clock.t = 22;
  engine.onArrival(fakes::makeRequest(1, 1, 22, 8, 1));  // b needs a's room: a must drain
  EXPECT_TRUE(engine.sessionDraining(0));
  engine.onArrival(fakes::makeRequest(2, 0, 23, 8, 1));  // a draining admits nobody
  clock.t = 30;
  engine.onStepDone(stepDone(backend.steps[1], 20, 30));  // 8 ns of drain: go on
  EXPECT_EQ(backend.log.back(), "step 0 decode x1");
  clock.t = 40;
  engine.onStepDone(stepDone(backend.steps[2], 30, 40));  // 18 ns >= 15: preempt, then evict a
  EXPECT_FALSE(engine.model(0).running);
  EXPECT_EQ(backend.log.back(), "evict 0/0");
  ASSERT_EQ(engine.model(0).queue.size(), 2u);
  EXPECT_EQ(engine.model(0).queue.front().request.id, 0);
  EXPECT_EQ(engine.model(0).queue.front().generated, 3);
  EXPECT_EQ(engine.model(0).queue.front().preemptions, 1);
  clock.t = 41;
  engine.onEvictDone(backend.evicts.back().op);
  EXPECT_EQ(backend.log.back(), "load 1/0");
  loadFirst(engine, backend, clock, 50);
  EXPECT_EQ(backend.log.back(), "step 1 prefill x1");
  clock.t = 60;
  engine.onStepDone(stepDone(backend.steps.back(), 50, 60));  // b served; a may come back
  ASSERT_EQ(observer.records.size(), 1u);
  EXPECT_EQ(observer.records[0].request.id, 1);
  EXPECT_EQ(backend.log.back(), "evict 1/0");
  clock.t = 61;
  engine.onEvictDone(backend.evicts.back().op);
  loadFirst(engine, backend, clock, 70);
  // a rejoins: r0 recomputes its prompt and 3 tokens, r2 joins with it.
  ASSERT_EQ(backend.steps.back().prefill.size(), 2u);
  EXPECT_EQ(backend.steps.back().prefill[0].request.id, 0);
  EXPECT_EQ(backend.steps.back().prefill[0].context, 11);
  EXPECT_EQ(backend.steps.back().prefill[0].generated, 3);
  Nanos t = 70;
  while (engine.model(0).running) {
    engine.checkInvariants();
    clock.t = t + 10;
    engine.onStepDone(stepDone(backend.steps.back(), t, t + 10));
    t += 10;
  }
  ASSERT_EQ(observer.records.size(), 3u);
  // Preempted r0 is never named as retired (the ranks keep its tokens for the rejoin); r2, done
  // with the rejoin's prefill, is named in the step after it.
  std::vector<RequestId> retired_a;
  for (const auto& step : backend.steps)
    if (step.model == 0) retired_a.insert(retired_a.end(), step.retired.begin(), step.retired.end());
  EXPECT_EQ(retired_a, (std::vector<RequestId>{2}));
  std::map<RequestId, RequestRecord> by_id;
  for (const auto& r : observer.records) by_id[r.request.id] = r;
  EXPECT_EQ(by_id[0].first_token, 20);  // kept across the preemption
  EXPECT_EQ(by_id[0].start, 10);
  EXPECT_EQ(by_id[0].preemptions, 1);
  // r0's 10 tokens: 3 before, the rejoin's prefill makes the 4th at 80, then 6 decode steps.
  EXPECT_EQ(by_id[0].finish, 140);
  EXPECT_EQ(by_id[2].first_token, 80);
  // r0's gaps: 10, 10, then 40 from its last token before the preemption to the rejoin's, then 10s.
  EXPECT_EQ(observer.gaps, (std::vector<Nanos>{10, 10, 40, 10, 10, 10, 10, 10, 10}));
  EXPECT_EQ(engine.requestsInFlight(), 0);
  engine.checkInvariants();
}

// Within its quantum a session keeps admitting although another model waits; then it drains.
TEST(IterationBatching, SessionQuantumDefersTheDrain) {
  EngineConfig config = twoModelsOneFits();
  config.policy.session_quantum = 100;
  RecordingBackend backend;
  ManualClock clock;
  Collector observer;
  Engine engine(config, backend, clock, &observer);
  engine.onArrival(fakes::makeRequest(0, 0, 0, 8, 50));
  loadFirst(engine, backend, clock, 10);  // the session starts at 10: its quantum ends at 110
  clock.t = 22;
  engine.onArrival(fakes::makeRequest(1, 1, 22, 8, 1));
  EXPECT_FALSE(engine.sessionDraining(0));
  engine.onArrival(fakes::makeRequest(2, 0, 23, 8, 1));
  clock.t = 30;
  engine.onStepDone(stepDone(backend.steps[0], 10, 30));
  EXPECT_EQ(backend.log.back(), "step 0 prefill x1");  // request 2 joins within the quantum
  EXPECT_EQ(backend.steps.back().prefill[0].request.id, 2);
  engine.onArrival(fakes::makeRequest(3, 0, 31, 8, 1));
  clock.t = 110;
  EXPECT_TRUE(engine.sessionDraining(0));
  engine.onStepDone(stepDone(backend.steps.back(), 30, 110));
  EXPECT_EQ(backend.log.back(), "step 0 decode x1");  // request 3 waits: the session drains
  EXPECT_EQ(engine.model(0).queue.size(), 1u);
}

TEST(IterationBatching, RuntimeWithoutStepsRefusesTheScenario) {
  class RequestOnly : public Backend {
   public:
    void load(const LoadCommand&) override {}
    void evict(const EvictCommand&) override {}
    void execute(const ExecuteCommand&) override {}
  } backend;
  ManualClock clock;
  try {
    Engine engine(oneModel(4), backend, clock);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("$.policy.batching"), std::string::npos) << e.what();
  }
}

using fakes::VectorSource;

TEST(IterationBatching, SimulatorStepsTakeTheCostModelsTimesExactly) {
  ClusterSpec cluster = clusterPreset("h200x2");
  EngineConfig config = oneModel(4);
  config.models[0].fixed_batch_time = 10 * kNanosPerMilli;
  config.gpu_weight_budget = {cluster.gpus[0].weight_budget_bytes, cluster.gpus[1].weight_budget_bytes};
  const Nanos s = kNanosPerSecond;
  const Nanos ms = kNanosPerMilli;
  Collector observer;
  sim::SimOptions options;
  options.check_invariants = true;
  // Request 9 at time 0 loads the model; the two under test come a second later.
  sim::Simulation simulation(cluster, config,
                             std::make_unique<VectorSource>(std::vector<Request>{
                                 fakes::makeRequest(9, 0, 0, 16, 1), fakes::makeRequest(0, 0, s, 16, 3), fakes::makeRequest(1, 0, s + 15 * ms, 16, 2)}),
                             &observer, options);
  simulation.run();
  ASSERT_EQ(observer.records.size(), 3u);
  observer.records.erase(observer.records.begin());
  // r0: prefill 1.000-1.010, decode to 1.020; r1 joins at 1.020 (prefill to 1.030); one decode
  // step over both to 1.040 makes r0's third and r1's second token.
  EXPECT_EQ(observer.records[0].request.id, 0);
  EXPECT_EQ(observer.records[0].first_token, s + 10 * ms);
  EXPECT_EQ(observer.records[0].finish, s + 40 * ms);
  EXPECT_EQ(observer.records[1].start, s + 20 * ms);
  EXPECT_EQ(observer.records[1].first_token, s + 30 * ms);
  EXPECT_EQ(observer.records[1].finish, s + 40 * ms);
}

class SessionsExactlyOnce : public EngineObserver {
 public:
  void onRequestDone(const RequestRecord& r) override {
    EXPECT_TRUE(seen.insert(r.request.id).second) << "request " << r.request.id << " served twice";
    if (r.refused) return;
    EXPECT_GE(r.start, r.request.arrival);
    EXPECT_GE(r.finish, r.first_token);
    EXPECT_GE(r.first_token, r.start);
    preempted += r.preemptions > 0 ? 1 : 0;
  }
  std::set<RequestId> seen;
  int preempted = 0;
};

// Random clusters, models, KV budgets and drain bounds under bursts of multi-token requests: every
// request answered exactly once, and the engine's invariants (KV budget, max_batch, memory, one
// batch per GPU) checked after every event.
TEST(IterationBatching, PropertyKvBudgetAndExactlyOnceOverManySeeds) {
  const std::vector<std::string> presets = {"opt-125m", "opt-1.3b", "opt-6.7b"};
  int total_preempted = 0;
  for (std::uint64_t seed = 1; seed <= 60; ++seed) {
    Rng rng(seed);
    ClusterSpec cluster = clusterPreset("h200x2");
    const int num_gpus = 2;
    EngineConfig config;
    const int num_models = static_cast<int>(rng.uniformInt(1, 5));
    for (int m = 0; m < num_models; ++m) {
      const int tp = static_cast<int>(rng.uniformInt(1, 2));
      std::vector<GpuId> gpus = tp == 2 ? std::vector<GpuId>{0, 1} : std::vector<GpuId>{static_cast<GpuId>(rng.uniformInt(0, 1))};
      config.models.push_back(deployment("m" + std::to_string(m), presets[rng.uniformInt(0, 2)], gpus,
                                         static_cast<int>(rng.uniformInt(1, 8))));
    }
    // Room for about two models per GPU, so models swap.
    const std::int64_t budget = 2 * modelPreset("opt-6.7b").totalBytes() / 2 + kGiB;
    config.gpu_weight_budget.assign(num_gpus, budget);
    config.gpu_kv_budget.assign(num_gpus, static_cast<std::int64_t>(rng.uniformInt(1, 8)) * 512 * kMiB);
    config.policy.name = rng.uniformInt(0, 1) == 0 ? "lru-bytes" : "best";
    applyPolicySet(config.policy);
    config.policy.batching = Batching::kIteration;
    config.policy.max_drain = static_cast<Nanos>(rng.uniformInt(0, 3)) * 50 * kNanosPerMilli;
    std::vector<Request> requests;
    Nanos t = 0;
    const int count = static_cast<int>(rng.uniformInt(50, 300));
    for (int i = 0; i < count; ++i) {
      if (rng.uniformInt(0, 3) == 0) t += static_cast<Nanos>(rng.exponential(2.0) * 1e9);
      requests.push_back(fakes::makeRequest(i, static_cast<ModelId>(rng.uniformInt(0, num_models - 1)), t,
                                 static_cast<std::int32_t>(rng.uniformInt(1, 1500)),
                                 static_cast<std::int32_t>(rng.uniformInt(1, 600))));
    }
    SessionsExactlyOnce observer;
    sim::SimOptions options;
    options.check_invariants = true;
    sim::Simulation simulation(cluster, config, std::make_unique<VectorSource>(requests), &observer, options);
    try {
      simulation.run();
    } catch (const std::exception& e) {
      const Engine& en = simulation.engine();
      std::string dump = std::string(e.what()) + " seed " + std::to_string(seed) + "\n";
      for (std::size_t m = 0; m < config.models.size(); ++m) {
        const auto& st = en.model(static_cast<ModelId>(m));
        dump += config.models[m].name + " gpus" + std::to_string(config.models[m].gpus.size()) + " res " + residencyName(st.residency) +
                " q " + std::to_string(st.queue.size()) + " running " + std::to_string(st.running) + " yield " +
                std::to_string(st.yield_epoch) + " seqs " + std::to_string(en.sessionSequences(static_cast<ModelId>(m))) + "\n";
      }
      for (int g = 0; g < 2; ++g) dump += "gpu " + std::to_string(g) + " used " + std::to_string(en.gpuBytesUsed(g)) + " busy " + std::to_string(en.gpuBusy(g)) + "\n";
      FAIL() << dump;
    }
    EXPECT_EQ(observer.seen.size(), requests.size()) << "seed " << seed;
    EXPECT_EQ(simulation.engine().requestsInFlight(), 0) << "seed " << seed;
    total_preempted += observer.preempted;
    if (HasFailure()) break;
  }
  EXPECT_GT(total_preempted, 0);  // the drain bound was exercised
}

}  // namespace
}  // namespace computron

namespace computron {
namespace {

std::string parseError(const nlohmann::json& policy) {
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "t", "seed": 1, "duration_s": 5, "cluster": {"preset": "h200x2"},
    "models": [{"name": "m", "spec": "opt-125m"}],
    "workload": {"type": "poisson", "rate": 1}, "outputs": {"dir": ""}})");
  doc["policy"] = policy;
  try {
    parseScenario(doc, ".");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(IterationBatching, BadPolicyValuesNameTheirPath) {
  EXPECT_EQ(parseError({{"batching", "foo"}}), "$.policy.batching: must be \"request\" or \"iteration\", not \"foo\"");
  EXPECT_NE(parseError({{"max_drain_ms", -1}}).find("$.policy.max_drain_ms: must be between 0"), std::string::npos);
  EXPECT_NE(parseError({{"session_quantum_ms", -1}}).find("$.policy.session_quantum_ms"), std::string::npos);
  EXPECT_NE(parseError({{"kv_budget_gb", 0}}).find("$.policy.kv_budget_gb: must be greater than 0"), std::string::npos);
  EXPECT_EQ(parseError({{"batching", "iteration"}, {"max_drain_ms", 0}, {"kv_budget_gb", 1.5}}), "");
}

TEST(IterationBatching, KvBudgetDefaultsToWhatTheWeightBudgetLeaves) {
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "t", "seed": 1, "duration_s": 5, "cluster": {"preset": "h200x2"},
    "models": [{"name": "m", "spec": "opt-125m"}],
    "workload": {"type": "poisson", "rate": 1}, "outputs": {"dir": ""}})");
  Scenario s = parseScenario(doc, ".");
  ASSERT_EQ(s.engine.gpu_kv_budget.size(), 2u);
  EXPECT_EQ(s.engine.gpu_kv_budget[0], s.cluster.gpus[0].memory_bytes - s.cluster.gpus[0].weight_budget_bytes);
  doc["policy"] = {{"kv_budget_gb", 2}};
  EXPECT_EQ(parseScenario(doc, ".").engine.gpu_kv_budget[1], 2'000'000'000);
}

}  // namespace
}  // namespace computron
