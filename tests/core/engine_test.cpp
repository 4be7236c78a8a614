#include "common/core/engine.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/core/policy.h"
#include "sim/simulator.h"
#include "tests/support/engine_fakes.h"
#include "tests/support/vector_source.h"

namespace computron {
namespace {

using fakes::ManualClock;
using fakes::RecordingBackend;
using Collector = fakes::RecordCollector;

ModelDeployment deployment(const std::string& name, const std::string& preset, int tp, int pp, std::vector<GpuId> gpus,
                           int max_batch = 4) {
  ModelDeployment d;
  d.name = name;
  d.spec = modelPreset(preset);
  d.tp = tp;
  d.pp = pp;
  d.gpus = std::move(gpus);
  d.max_batch = max_batch;
  return d;
}

TEST(Engine, SwapsTwoModelsUnderACountCapStepByStep) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 1, 2, {0, 1}), deployment("b", "opt-125m", 1, 2, {0, 1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  config.policy.max_loaded_models = 1;
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);

  engine.onArrival(fakes::makeRequest(0, 0, 0));
  EXPECT_EQ(backend.log, (std::vector<std::string>{"load 0/0", "load 0/1"}));  // both shards at once
  EXPECT_EQ(engine.model(0).residency, Residency::kLoading);
  engine.onArrival(fakes::makeRequest(1, 1, 1));  // b must wait: the cap allows one loaded model
  EXPECT_EQ(backend.log.size(), 2u);
  clock.t = 10;
  engine.onLoadDone(backend.loads[0].op);
  EXPECT_EQ(engine.model(0).residency, Residency::kLoading);  // one shard is not enough
  engine.onLoadDone(backend.loads[1].op);
  EXPECT_EQ(engine.model(0).residency, Residency::kResident);
  ASSERT_EQ(backend.runs.size(), 1u);
  EXPECT_EQ(backend.log.back(), "run 0 x1");
  // a is running: b's load must not evict it yet.
  EXPECT_TRUE(backend.evicts.empty());
  clock.t = 20;
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 10, 20));
  EXPECT_EQ(backend.log, (std::vector<std::string>{"load 0/0", "load 0/1", "run 0 x1", "evict 0/0", "evict 0/1"}));
  engine.onEvictDone(backend.evicts[0].op);
  engine.onEvictDone(backend.evicts[1].op);
  EXPECT_EQ(backend.log.back(), "load 1/1");
  engine.onLoadDone(backend.loads[2].op);
  engine.onLoadDone(backend.loads[3].op);
  EXPECT_EQ(backend.log.back(), "run 1 x1");
  clock.t = 40;
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[1], 30, 40));
  ASSERT_EQ(collector.records.size(), 2u);
  // a was served first, b second; both arrived while their model was offloaded.
  EXPECT_EQ(collector.records[0].request.id, 0);
  EXPECT_EQ(collector.records[1].request.id, 1);
  EXPECT_TRUE(collector.records[0].waited_for_load);
  EXPECT_TRUE(collector.records[1].waited_for_load);
  EXPECT_EQ(collector.records[0].finish, 20);
  EXPECT_EQ(collector.records[1].finish, 40);
  EXPECT_EQ(engine.requestsInFlight(), 0);
  engine.checkInvariants();
}

TEST(Engine, BatchesUpToMaxBatchInArrivalOrder) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 1, 1, {0}, 3)};
  config.gpu_weight_budget = {kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  for (RequestId i = 0; i < 5; ++i) engine.onArrival(fakes::makeRequest(i, 0, i));
  engine.onLoadDone(backend.loads[0].op);
  ASSERT_EQ(backend.runs.size(), 1u);
  ASSERT_EQ(backend.runs[0].requests.size(), 3u);
  EXPECT_EQ(backend.runs[0].requests[0].id, 0);
  EXPECT_EQ(backend.runs[0].requests[2].id, 2);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 0, 5));
  ASSERT_EQ(backend.runs.size(), 2u);
  EXPECT_EQ(backend.runs[1].requests.size(), 2u);
  EXPECT_EQ(backend.runs[1].requests[0].id, 3);
}

TEST(Engine, ByteBudgetEvictsLeastRecentlyUsedFirst) {
  // Each GPU holds two opt-125m shards; a third model evicts the least recently used.
  ModelSpec spec = modelPreset("opt-125m");
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 1, 1, {0}), deployment("b", "opt-125m", 1, 1, {0}),
                   deployment("c", "opt-125m", 1, 1, {0})};
  config.gpu_weight_budget = {2 * spec.totalBytes() + 1};
  config.policy.name = "lru-bytes";
  applyPolicySet(config.policy, "policy");
  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  auto serve = [&](RequestId id, ModelId m) {
    engine.onArrival(fakes::makeRequest(id, m, clock.t));
    if (!backend.evicts.empty() && engine.model(backend.evicts.back().model).residency == Residency::kEvicting)
      engine.onEvictDone(backend.evicts.back().op);
    if (engine.model(m).residency == Residency::kLoading) engine.onLoadDone(backend.loads.back().op);
    ++clock.t;
    engine.onBatchDone(fakes::batchDoneAt(backend.runs.back(), clock.t - 1, clock.t));
    ++clock.t;
  };
  serve(0, 0);  // a
  serve(1, 1);  // b
  serve(2, 0);  // a again: b is now least recently used
  serve(3, 2);  // c evicts b
  ASSERT_EQ(backend.evicts.size(), 1u);
  EXPECT_EQ(backend.evicts[0].model, 1);
  EXPECT_EQ(engine.model(0).residency, Residency::kResident);
  EXPECT_EQ(engine.model(2).residency, Residency::kResident);
  engine.checkInvariants();
}

TEST(Engine, FailedLoadFailsWaitingRequestsFreesMemoryAndKeepsServing) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 2, 1, {0, 1}), deployment("b", "opt-125m", 1, 1, {1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(fakes::makeRequest(0, 0, 0));
  engine.onArrival(fakes::makeRequest(1, 0, 0));
  ASSERT_EQ(backend.loads.size(), 2u);
  engine.onLoadDone(backend.loads[0].op, true);
  engine.onLoadDone(backend.loads[1].op, false, "injected failure");
  // The shard that arrived is released; both waiting requests fail with the error.
  ASSERT_EQ(collector.records.size(), 2u);
  for (const auto& r : collector.records) {
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "loading model a failed: injected failure");
  }
  ASSERT_EQ(backend.evicts.size(), 1u);
  engine.onEvictDone(backend.evicts[0].op);
  EXPECT_EQ(engine.gpuBytesUsed(0), 0);
  EXPECT_EQ(engine.gpuBytesUsed(1), 0);
  EXPECT_EQ(engine.model(0).residency, Residency::kOffloaded);
  // Another model is still served.
  engine.onArrival(fakes::makeRequest(2, 1, 5));
  engine.onLoadDone(backend.loads.back().op);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs.back(), 5, 6));
  EXPECT_TRUE(collector.records.back().ok);
  EXPECT_EQ(engine.requestsInFlight(), 0);
  engine.checkInvariants();
}

// layer_pipelined: once a shard load of the current attempt has failed, the model starts no
// batch behind the rest of that load; its waiting requests fail with the load.
TEST(Engine, APipelinedBatchNeverStartsBehindALoadThatAlreadyFailed) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 2, 1, {0, 1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  config.policy.layer_pipelined = true;
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(fakes::makeRequest(0, 0, 0));
  // Alone and without a prefill estimate, its first batch starts with the load.
  EXPECT_EQ(backend.log, (std::vector<std::string>{"load 0/0", "load 0/1", "run 0 x1"}));
  clock.t = 10;
  engine.onLoadDone(backend.loads[0].op, false, "injected failure");
  EXPECT_EQ(engine.model(0).residency, Residency::kLoading);  // shard 1 still loading
  engine.onArrival(fakes::makeRequest(1, 0, 10));
  clock.t = 20;
  BatchResult failed = fakes::batchDoneAt(backend.runs[0], 0, 20);
  failed.ok = false;
  failed.error = "its weights did not all arrive";
  engine.onBatchDone(failed);
  EXPECT_EQ(backend.runs.size(), 1u) << "a batch started behind a failed load";
  EXPECT_FALSE(engine.nextWake().has_value());
  engine.checkInvariants();
  clock.t = 30;
  engine.onLoadDone(backend.loads[1].op);
  ASSERT_EQ(collector.records.size(), 2u);
  EXPECT_EQ(collector.records[1].request.id, 1);
  EXPECT_FALSE(collector.records[1].ok);
  EXPECT_EQ(collector.records[1].error, "loading model a failed: injected failure");
  ASSERT_EQ(backend.evicts.size(), 1u);  // the shard that did arrive
  engine.onEvictDone(backend.evicts[0].op);
  EXPECT_EQ(engine.model(0).residency, Residency::kOffloaded);
  EXPECT_EQ(engine.requestsInFlight(), 0);
  engine.checkInvariants();
}

// layer_pipelined: a load whose shard failed before its batch was due asks for no wake-up, and
// the wake-up's time passing starts nothing (a driver would otherwise be woken again and again).
TEST(Engine, AFailedShardCancelsThePipelinedWake) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 2, 1, {0, 1}), deployment("b", "opt-125m", 2, 1, {0, 1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  config.policy.max_loaded_models = 1;
  config.policy.layer_pipelined = true;
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  auto finishLoads = [&] {
    for (std::size_t i = backend.loads.size() - 2; i < backend.loads.size(); ++i) engine.onLoadDone(backend.loads[i].op);
  };
  auto finishBatch = [&] {  // 1 ms to its first (and last) token
    const Nanos start = clock.t;
    clock.t += kNanosPerMilli;
    engine.onBatchDone(fakes::batchDoneAt(backend.runs.back(), start, clock.t));
  };
  // a cold (behind its load), then resident: its prefill time (1 ms) is known.
  engine.onArrival(fakes::makeRequest(0, 0, 0));
  finishLoads();
  finishBatch();
  engine.onArrival(fakes::makeRequest(1, 0, clock.t));
  finishBatch();
  EXPECT_EQ(engine.model(0).min_prefill_time, kNanosPerMilli);
  // b evicts a; then a evicts b and loads again: its batch is due one prefill before the load's
  // expected end.
  engine.onArrival(fakes::makeRequest(2, 1, clock.t));
  for (const auto& e : backend.evicts) engine.onEvictDone(e.op);
  finishLoads();
  finishBatch();
  const std::size_t evicted = backend.evicts.size();
  engine.onArrival(fakes::makeRequest(3, 0, clock.t));
  for (std::size_t i = evicted; i < backend.evicts.size(); ++i) engine.onEvictDone(backend.evicts[i].op);
  ASSERT_EQ(engine.model(0).residency, Residency::kLoading);
  const std::size_t runs = backend.runs.size();
  const std::optional<Nanos> wake = engine.nextWake();
  ASSERT_TRUE(wake.has_value());
  EXPECT_GT(*wake, clock.t);
  // A shard fails before then: no wake-up is wanted any more, and none starts a batch.
  engine.onLoadDone(backend.loads[backend.loads.size() - 2].op, false, "injected failure");
  EXPECT_FALSE(engine.nextWake().has_value());
  clock.t = *wake;
  engine.onTimer();
  EXPECT_EQ(backend.runs.size(), runs);
  EXPECT_FALSE(engine.nextWake().has_value());
  engine.onLoadDone(backend.loads.back().op);
  EXPECT_FALSE(collector.records.back().ok);
  EXPECT_EQ(collector.records.back().request.id, 3);
  engine.checkInvariants();
}

// layer_pipelined: a first batch (no prefill estimate) behind a load waits for the load's end
// while a model that needs one of its GPUs waits too (the batch would hold them throughout); a
// model waiting for other GPUs does not hold it back.
TEST(Engine, APipelinedFirstBatchWaitsOnlyForModelsSharingItsGpus) {
  for (GpuId other_gpu : {0, 1}) {
    EngineConfig config;
    config.models = {deployment("a", "opt-125m", 1, 1, {0}), deployment("c", "opt-125m", 1, 1, {other_gpu})};
    config.gpu_weight_budget = {kGiB, kGiB};
    config.policy.max_loaded_models = 1;
    config.policy.layer_pipelined = true;
    RecordingBackend backend;
    ManualClock clock;
    Engine engine(config, backend, clock);
    engine.onArrival(fakes::makeRequest(0, 0, 0));  // alone: starts with its load
    engine.onArrival(fakes::makeRequest(1, 1, 0));  // c waits for a's room under the cap
    engine.onArrival(fakes::makeRequest(2, 0, 0));  // a's second request waits for the batch
    EXPECT_EQ(backend.log, (std::vector<std::string>{"load 0/0", "run 0 x1"})) << other_gpu;
    clock.t = 5;
    engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 0, 5));  // a is still loading
    if (other_gpu == 0) {
      EXPECT_EQ(backend.runs.size(), 1u) << "started behind the load while c waits for GPU 0";
    } else {
      ASSERT_EQ(backend.runs.size(), 2u) << "held back by c, which waits on GPU 1";
      EXPECT_EQ(backend.runs[1].model, 0);
    }
    engine.checkInvariants();
  }
}

TEST(Engine, RefusesAModelLargerThanItsGpuBudget) {
  EngineConfig config;
  config.models = {deployment("big", "opt-13b", 1, 1, {0})};
  config.gpu_weight_budget = {kGiB};
  RecordingBackend backend;
  ManualClock clock;
  EXPECT_THROW(Engine(config, backend, clock), std::invalid_argument);
}

using fakes::VectorSource;

class ExactlyOnce : public EngineObserver {
 public:
  void onRequestDone(const RequestRecord& r) override {
    EXPECT_TRUE(seen.insert(r.request.id).second) << "request " << r.request.id << " served twice";
    EXPECT_GE(r.start, r.request.arrival);
    EXPECT_GE(r.finish, r.first_token);
    EXPECT_GE(r.first_token, r.start);
  }
  void onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) override {
    EXPECT_TRUE(ok);
    EXPECT_GE(end, start);
    EXPECT_GT(cmd.bytes, 0);
  }
  std::set<RequestId> seen;
};

// Random clusters, placements, caps and bursty arrivals over many seeds: every request is served
// exactly once, and after every event memory is within budget, nothing runs unless resident and
// no GPU runs two batches (Engine::checkInvariants); evicting a loading or running model throws.
// An operator's eviction: refused with the reason while the model is not resident, runs a batch
// or has requests queued; accepted when it sits idle, and its memory is free once the eviction is
// done. The next request loads it again.
TEST(Engine, EvictOnDemandOnlyWhenResidentAndIdle) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 1, 1, {0}, 1)};
  config.gpu_weight_budget = {kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  EXPECT_EQ(engine.evictOnDemand(0), "model a is not resident (offloaded)");
  EXPECT_EQ(engine.evictOnDemand(7), "no model 7");
  engine.onArrival(fakes::makeRequest(0, 0, 0));
  engine.onArrival(fakes::makeRequest(1, 0, 0));
  EXPECT_EQ(engine.evictOnDemand(0), "model a is loading");
  clock.t = 10;
  engine.onLoadDone(backend.loads[0].op);
  ASSERT_EQ(backend.runs.size(), 1u);  // max_batch 1: request 1 stays queued
  EXPECT_EQ(engine.evictOnDemand(0), "model a is running a batch");
  clock.t = 20;
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 10, 20));
  ASSERT_EQ(backend.runs.size(), 2u);
  clock.t = 30;
  engine.onArrival(fakes::makeRequest(2, 0, 30));
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[1], 20, 30));  // request 2 now runs
  ASSERT_EQ(backend.runs.size(), 3u);
  engine.onArrival(fakes::makeRequest(3, 0, 31));
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[2], 30, 32));
  engine.onArrival(fakes::makeRequest(4, 0, 33));  // queued behind request 3's batch
  EXPECT_EQ(engine.evictOnDemand(0), "model a is running a batch");
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[3], 32, 34));
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[4], 34, 35));
  EXPECT_EQ(engine.requestsInFlight(), 0);
  const std::int64_t used = engine.gpuBytesUsed(0);
  EXPECT_GT(used, 0);
  EXPECT_EQ(engine.evictOnDemand(0), std::nullopt);
  EXPECT_EQ(engine.model(0).residency, Residency::kEvicting);
  EXPECT_EQ(backend.log.back(), "evict 0/0");
  EXPECT_EQ(engine.evictOnDemand(0), "model a is already being evicted");
  engine.onEvictDone(backend.evicts[0].op);
  EXPECT_EQ(engine.model(0).residency, Residency::kOffloaded);
  EXPECT_EQ(engine.gpuBytesUsed(0), 0);
  engine.onArrival(fakes::makeRequest(5, 0, 40));
  EXPECT_EQ(backend.log.back(), "load 0/0");
  engine.checkInvariants();
}

// A queued request cancelled by its client ends at once with "cancelled" and its model, with
// nothing else queued, is not loaded for it; a request already in a batch is left alone.
TEST(Engine, CancelQueuedRemovesOnlyAQueuedRequest) {
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 1, 1, {0}, 1), deployment("b", "opt-125m", 1, 1, {0}, 1)};
  config.gpu_weight_budget = {modelPreset("opt-125m").shard(1, 1, 0, 0).bytes * 3 / 2};  // one at a time
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(fakes::makeRequest(0, 0, 0));
  engine.onLoadDone(backend.loads[0].op);
  ASSERT_EQ(backend.runs.size(), 1u);
  engine.onArrival(fakes::makeRequest(1, 1, 1));  // b waits for a's batch to end before a can be evicted
  EXPECT_FALSE(engine.cancelQueued(0, 0));  // in a batch
  EXPECT_FALSE(engine.cancelQueued(1, 9));  // unknown
  clock.t = 5;
  EXPECT_TRUE(engine.cancelQueued(1, 1));
  EXPECT_FALSE(engine.cancelQueued(1, 1));  // once
  ASSERT_EQ(collector.records.size(), 1u);
  EXPECT_EQ(collector.records[0].request.id, 1);
  EXPECT_FALSE(collector.records[0].ok);
  EXPECT_EQ(collector.records[0].error, "cancelled");
  EXPECT_EQ(collector.records[0].finish, 5);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 0, 10));
  EXPECT_EQ(engine.requestsInFlight(), 0);
  EXPECT_EQ(backend.loads.size(), 1u);  // b never loaded
  EXPECT_TRUE(backend.evicts.empty());
  engine.checkInvariants();
}

// Pinning (PolicyConfig::pinned): under every online eviction policy, the model that would be
// the victim when unpinned (a, used once, long ago) stays when pinned, and the next most evictable
// one (b) goes instead. A pinned model loads at the first pass, before the request that started it.
TEST(Engine, APinnedModelIsNeverAnEvictionCandidate) {
  const ModelSpec spec = modelPreset("opt-125m");
  for (const char* eviction : {"lru", "lfu", "gdsf", "demand"}) {
    for (bool pin : {false, true}) {
      SCOPED_TRACE(std::string(eviction) + (pin ? " pinned" : " unpinned"));
      EngineConfig config;
      config.models = {deployment("a", "opt-125m", 1, 1, {0}), deployment("b", "opt-125m", 1, 1, {0}),
                       deployment("c", "opt-125m", 1, 1, {0})};
      config.gpu_weight_budget = {2 * spec.totalBytes() + 1};  // two of the three
      config.policy.name = "lru-bytes";
      applyPolicySet(config.policy);
      config.policy.eviction = EvictionChoice(eviction);
      if (pin) config.policy.pinned = {0};
      RecordingBackend backend;
      ManualClock clock;
      Engine engine(config, backend, clock);
      // Completes every load and eviction issued, then every batch, until nothing is left.
      std::size_t loads = 0, evicts = 0, runs = 0;  // commands completed so far
      auto settle = [&]() {
        while (loads < backend.loads.size() || evicts < backend.evicts.size() || runs < backend.runs.size()) {
          ++clock.t;
          if (evicts < backend.evicts.size()) {
            engine.onEvictDone(backend.evicts[evicts++].op);
          } else if (loads < backend.loads.size()) {
            engine.onLoadDone(backend.loads[loads++].op);
          } else {
            engine.onBatchDone(fakes::batchDoneAt(backend.runs[runs], clock.t - 1, clock.t));
            ++runs;
          }
          engine.checkInvariants();
        }
      };
      RequestId id = 0;
      engine.onArrival(fakes::makeRequest(id++, 0, clock.t));
      if (pin) {
        ASSERT_EQ(backend.log.front(), "load 0/0");
      }
      settle();
      for (int i = 0; i < 5; ++i) {
        engine.onArrival(fakes::makeRequest(id++, 1, clock.t));
        settle();
      }
      // a: one access, least recent, no work queued: the first victim of every policy.
      engine.onArrival(fakes::makeRequest(id++, 2, clock.t));
      settle();
      ASSERT_EQ(backend.evicts.size(), 1u);
      EXPECT_EQ(backend.evicts[0].model, pin ? 1 : 0);
      EXPECT_EQ(engine.model(0).residency, pin ? Residency::kResident : Residency::kOffloaded);
      EXPECT_EQ(engine.model(0).loads, 1);
      if (pin) {
        EXPECT_EQ(engine.evictOnDemand(0), "model a is pinned (policy.pinned)");
      }
      EXPECT_EQ(engine.requestsInFlight(), 0);
    }
  }
}

// Engine::start loads the pinned models before any request; a second call does nothing.
TEST(Engine, StartLoadsThePinnedModelsOnce) {
  const ModelSpec spec = modelPreset("opt-125m");
  EngineConfig config;
  config.models = {deployment("a", "opt-125m", 1, 1, {0}), deployment("b", "opt-125m", 1, 1, {1}),
                   deployment("c", "opt-125m", 1, 1, {0})};
  config.gpu_weight_budget = {spec.totalBytes() * 3 / 2, spec.totalBytes() * 3 / 2};
  config.policy.pinned = {1, 0};
  RecordingBackend backend;
  ManualClock clock;
  Engine engine(config, backend, clock);
  EXPECT_TRUE(engine.pinned(0));
  EXPECT_FALSE(engine.pinned(2));
  engine.start();
  engine.start();
  EXPECT_EQ(backend.log, (std::vector<std::string>{"load 1/0", "load 0/0"}));
  engine.checkInvariants();
}

// The scenario's policy.pinned: names become model ids; unknown names, pins that do not fit
// together, pins that leave another model no room, and pins filling the count cap are refused with
// the JSON path.
TEST(Scenario, PinnedModelsAreCheckedWhenRead) {
  nlohmann::json doc = defaultScenarioJson();
  doc["policy"]["pinned"] = {"opt-13b-1"};
  Scenario s = parseScenario(doc, ".");
  EXPECT_EQ(s.engine.policy.pinned, std::vector<ModelId>{1});
  EXPECT_EQ(s.effective["policy"]["pinned"], nlohmann::json::array({"opt-13b-1"}));
  EXPECT_FALSE(parseScenario(defaultScenarioJson(), ".").effective["policy"].contains("pinned"));
  auto refused = [&](nlohmann::json pinned, const std::string& where) {
    nlohmann::json d = defaultScenarioJson();
    d["policy"]["pinned"] = pinned;
    try {
      parseScenario(d, ".");
      ADD_FAILURE() << "accepted " << pinned.dump();
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(where), std::string::npos) << e.what();
    }
  };
  refused({"opt-13b-9"}, "$.policy.pinned[0]: no model named 'opt-13b-9'");
  refused({"opt-13b-0", "opt-13b-0"}, "$.policy.pinned[1]: model 'opt-13b-0' is pinned twice");
  refused({"opt-13b-0", "opt-13b-1"}, "$.policy.pinned: 2 pinned models leave no room under max_loaded_models 2");
  refused("opt-13b-0", "$.policy.pinned: expected an array");
  nlohmann::json bytes = defaultScenarioJson();
  bytes["policy"] = {{"name", "lru-bytes"}, {"pinned", {"opt-13b-0", "opt-13b-1", "opt-13b-2"}}};
  bytes["cluster"] = {{"preset", "a100-40gb-x4"}, {"weight_budget_gb", 15}};
  try {
    parseScenario(bytes, ".");
    ADD_FAILURE() << "three pinned opt-13b in 4 x 15 GB accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("$.policy.pinned: the pinned models need"), std::string::npos) << e.what();
  }
}

// The simulator honours pins: the cold model opt-13b-1 (1 req/s beside 10), pinned, is loaded
// once and never evicted, while unpinned it is swapped out; every request is still served.
TEST(Engine, SimulatedPinnedModelStaysResident) {
  for (bool pin : {false, true}) {
    nlohmann::json doc = defaultScenarioJson();
    doc["duration_s"] = 10;
    if (pin) doc["policy"]["pinned"] = {"opt-13b-1"};
    Scenario s = parseScenario(doc, ".");
    class Counter : public ExactlyOnce {
     public:
      void onEvict(const EvictCommand& cmd, Nanos, Nanos) override { evictions[cmd.model] += cmd.shard == 0; }
      std::map<ModelId, int> evictions;
    } counter;
    sim::SimOptions options;
    options.check_invariants = true;
    sim::Simulation simulation(s.cluster, s.engine, s.makeWorkload(), &counter, options);
    simulation.run();
    EXPECT_EQ(simulation.engine().requestsInFlight(), 0);
    if (pin) {
      EXPECT_EQ(counter.evictions[1], 0);
      EXPECT_EQ(simulation.engine().model(1).loads, 1);
      EXPECT_EQ(simulation.engine().model(1).residency, Residency::kResident);
    } else {
      EXPECT_GT(counter.evictions[1], 0);
    }
  }
}

TEST(EngineProperty, RandomWorkloadsKeepEveryInvariant) {
  const char* presets[] = {"opt-125m", "opt-350m", "opt-1.3b"};
  for (std::uint64_t seed = 1; seed <= 150; ++seed) {
    Rng rng(seed);
    ClusterSpec cluster;
    cluster.name = "random";
    const int num_gpus = static_cast<int>(rng.uniformInt(1, 4));
    for (int g = 0; g < num_gpus; ++g) {
      GpuSpec gpu;
      gpu.name = "gpu";
      gpu.memory_bytes = 80 * kGiB;
      gpu.weight_budget_bytes = static_cast<std::int64_t>(rng.uniformInt(3, 8)) * kGiB;
      gpu.peak_flops = 300e12;
      gpu.hbm_bandwidth = 2e12;
      gpu.host_link_bandwidth = 25e9;
      gpu.host_link_latency = 10 * kNanosPerMicro;
      cluster.gpus.push_back(gpu);
    }
    if (rng.uniformInt(0, 1) == 1) cluster.nvlink_bandwidth = 300e9;
    EngineConfig config;
    const int num_models = static_cast<int>(rng.uniformInt(1, 6));
    for (int m = 0; m < num_models; ++m) {
      std::string preset = presets[rng.uniformInt(0, 2)];
      int shards = static_cast<int>(rng.uniformInt(1, num_gpus));
      int tp = (shards % 2 == 0 && rng.uniformInt(0, 1) == 1) ? 2 : 1;
      int pp = shards / tp;
      std::vector<GpuId> all;
      for (int g = 0; g < num_gpus; ++g) all.push_back(g);
      for (int i = num_gpus - 1; i > 0; --i) std::swap(all[static_cast<std::size_t>(i)], all[static_cast<std::size_t>(rng.uniformInt(0, i))]);
      std::vector<GpuId> gpus(all.begin(), all.begin() + tp * pp);
      config.models.push_back(deployment("m" + std::to_string(m), preset, tp, pp, gpus, static_cast<int>(rng.uniformInt(1, 8))));
    }
    for (const auto& g : cluster.gpus) config.gpu_weight_budget.push_back(g.weight_budget_bytes);
    config.policy.name = rng.uniformInt(0, 1) == 0 ? "computron" : "lru-bytes";
    applyPolicySet(config.policy, "policy");
    if (config.policy.name == "computron") config.policy.max_loaded_models = static_cast<int>(rng.uniformInt(1, 3));
    std::vector<Request> requests;
    Nanos t = 0;
    const int count = static_cast<int>(rng.uniformInt(50, 400));
    for (int i = 0; i < count; ++i) {
      // Bursts: many requests at one instant, then gaps.
      if (rng.uniformInt(0, 3) == 0) t += static_cast<Nanos>(rng.exponential(5.0) * 1e9);
      Request r = fakes::makeRequest(i, static_cast<ModelId>(rng.uniformInt(0, num_models - 1)), t);
      r.prompt_tokens = static_cast<std::int32_t>(rng.uniformInt(1, 256));
      r.output_tokens = static_cast<std::int32_t>(rng.uniformInt(1, 8));
      requests.push_back(r);
    }
    ExactlyOnce observer;
    sim::SimOptions options;
    options.check_invariants = true;
    sim::Simulation simulation(cluster, config, std::make_unique<VectorSource>(requests), &observer, options);
    simulation.run();
    EXPECT_EQ(observer.seen.size(), requests.size()) << "seed " << seed;
    EXPECT_EQ(simulation.engine().requestsInFlight(), 0) << "seed " << seed;
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace computron
