// Engine::onGpuLost: a GPU gone for good makes every model with a shard there unavailable (its
// queued and later requests fail, it is evicted and never loaded again) while the other models
// keep being served, and no load is routed through the lost GPU. Driven by hand with the
// recording backend, which stands in for a runtime that fails whatever ran on the lost GPU.
#include <gtest/gtest.h>

#include <set>

#include "common/core/engine.h"
#include "common/core/policy.h"
#include "tests/support/engine_fakes.h"

namespace computron {
namespace {

using fakes::ManualClock;
using fakes::RecordingBackend;
using Collector = fakes::RecordCollector;

ModelDeployment deployment(const std::string& name, std::vector<GpuId> gpus, int max_batch = 4) {
  ModelDeployment d;
  d.name = name;
  d.weights = name;
  d.spec = modelPreset("opt-125m");
  d.tp = static_cast<int>(gpus.size());
  d.gpus = std::move(gpus);
  d.max_batch = max_batch;
  return d;
}

Request request(RequestId id, ModelId model, Nanos arrival, std::int32_t prompt = 8, std::int32_t output = 4) {
  return fakes::makeRequest(id, model, arrival, prompt, output);
}

BatchResult batchFailed(const ExecuteCommand& cmd, Nanos start, Nanos end, const std::string& error) {
  BatchResult r = fakes::batchDoneAt(cmd, start, end);
  r.ok = false;
  r.error = error;
  return r;
}

std::int64_t shardBytes() { return modelPreset("opt-125m").shard(1, 1, 0, 0).bytes; }

// Every request ended exactly once, and those are all `expected` of them.
void expectEachEndedOnce(const Collector& collector, const Engine& engine, std::size_t expected) {
  std::set<RequestId> ids;
  for (const auto& r : collector.records) EXPECT_TRUE(ids.insert(r.request.id).second) << "request " << r.request.id;
  EXPECT_EQ(ids.size(), expected);
  EXPECT_EQ(engine.requestsInFlight(), 0);
  EXPECT_EQ(engine.requestsCompleted(), static_cast<std::int64_t>(expected));
}

// Every load issued after `from` avoids the lost GPU g: as its target and on every part's path.
void expectNoLoadTouches(const RecordingBackend& backend, std::size_t from, GpuId g) {
  for (std::size_t i = from; i < backend.loads.size(); ++i) {
    EXPECT_NE(backend.loads[i].gpu, g) << "load " << i;
    for (const auto& part : backend.loads[i].route) EXPECT_NE(part.via, g) << "load " << i;
  }
}

TEST(GpuLost, QueuedRequestsFailWithTheReasonAndLaterArrivalsFailAtOnce) {
  // a on GPU 1, b on GPU 0: losing GPU 1 ends a's service and leaves b's alone.
  EngineConfig config;
  config.models = {deployment("a", {1}), deployment("b", {0})};
  config.gpu_weight_budget = {kGiB, kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 0, 0));
  engine.onArrival(request(1, 0, 0));
  ASSERT_EQ(backend.log, (std::vector<std::string>{"load 0/0"}));
  const OpId a_load = backend.loads[0].op;

  clock.t = 5;
  EXPECT_FALSE(engine.gpuLost(1));
  engine.onGpuLost(1, "rank 1 stopped answering");
  EXPECT_TRUE(engine.gpuLost(1));
  EXPECT_FALSE(engine.gpuLost(0));
  EXPECT_FALSE(engine.modelAvailable(0));
  EXPECT_TRUE(engine.modelAvailable(1));
  const std::string why = "model a needs GPU 1, which was lost: rank 1 stopped answering";
  EXPECT_EQ(engine.unavailableReason(0), why);
  ASSERT_EQ(collector.records.size(), 2u);
  for (const auto& r : collector.records) {
    EXPECT_FALSE(r.ok);
    EXPECT_FALSE(r.refused);
    EXPECT_EQ(r.error, why);
    EXPECT_EQ(r.finish, 5);
  }
  engine.checkInvariants();

  // The backend fails the load on the lost GPU: nothing arrived, nothing to evict, no retry.
  const std::size_t loads_before = backend.loads.size();
  engine.onLoadDone(a_load, false, "rank 1 lost");
  EXPECT_EQ(engine.model(0).residency, Residency::kOffloaded);
  EXPECT_EQ(engine.gpuBytesUsed(1), 0);
  EXPECT_TRUE(backend.evicts.empty());
  EXPECT_EQ(collector.records.size(), 2u);  // its requests ended already

  // A later arrival for a ends at once, failed but not refused; b is served as before.
  clock.t = 10;
  engine.onArrival(request(2, 0, 10));
  ASSERT_EQ(collector.records.size(), 3u);
  EXPECT_EQ(collector.records[2].request.id, 2);
  EXPECT_FALSE(collector.records[2].ok);
  EXPECT_FALSE(collector.records[2].refused);
  EXPECT_EQ(collector.records[2].error, why);
  EXPECT_EQ(engine.requestsRefused(), 0);
  engine.onArrival(request(3, 1, 10));
  ASSERT_EQ(backend.loads.size(), loads_before + 1);
  engine.onLoadDone(backend.loads.back().op);
  ASSERT_EQ(backend.runs.size(), 1u);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 10, 20));
  EXPECT_TRUE(collector.records.back().ok);
  EXPECT_EQ(collector.records.back().request.id, 3);
  expectNoLoadTouches(backend, loads_before, 1);
  expectEachEndedOnce(collector, engine, 4);
  engine.checkInvariants();
}

TEST(GpuLost, AResidentIdleModelIsEvictedAtOnce) {
  EngineConfig config;
  config.models = {deployment("a", {0, 1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 0, 0));
  engine.onLoadDone(backend.loads[0].op);
  engine.onLoadDone(backend.loads[1].op);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 0, 10));
  ASSERT_EQ(engine.model(0).residency, Residency::kResident);

  engine.onGpuLost(0, "rank 0 exited");
  // Both shards are evicted: the survivor's frees GPU 1, the lost GPU's the backend completes.
  EXPECT_EQ(backend.log, (std::vector<std::string>{"load 0/0", "load 0/1", "run 0 x1", "evict 0/0", "evict 0/1"}));
  EXPECT_EQ(engine.model(0).residency, Residency::kEvicting);
  engine.onEvictDone(backend.evicts[0].op);
  engine.onEvictDone(backend.evicts[1].op);
  EXPECT_EQ(engine.model(0).residency, Residency::kOffloaded);
  EXPECT_EQ(engine.gpuBytesUsed(0), 0);
  EXPECT_EQ(engine.gpuBytesUsed(1), 0);
  engine.onArrival(request(1, 0, 20));
  EXPECT_EQ(backend.loads.size(), 2u);  // never loaded again
  EXPECT_EQ(collector.records.back().error, "model a needs GPU 0, which was lost: rank 0 exited");
  expectEachEndedOnce(collector, engine, 2);
  engine.checkInvariants();
}

TEST(GpuLost, AFailedRunningBatchLeadsToEvictionAndTheWaitingModelProceeds) {
  // a spans GPUs 0 and 1; b on GPU 0 fits only once a is gone. a runs when GPU 1 is lost; b waits
  // for a's room on GPU 0, which survives.
  EngineConfig config;
  config.models = {deployment("a", {0, 1}), deployment("b", {0})};
  const std::int64_t a_bytes = modelPreset("opt-125m").shard(2, 1, 0, 0).bytes;
  config.gpu_weight_budget = {shardBytes() + a_bytes / 2, kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 0, 0));
  engine.onLoadDone(backend.loads[0].op);
  engine.onLoadDone(backend.loads[1].op);
  ASSERT_EQ(backend.runs.size(), 1u);
  engine.onArrival(request(1, 1, 1));  // waits: a runs and holds GPU 0's room
  engine.onArrival(request(2, 0, 2));  // queued behind a's running batch
  EXPECT_EQ(backend.loads.size(), 2u);
  EXPECT_TRUE(backend.evicts.empty());

  clock.t = 5;
  engine.onGpuLost(1, "rank 1 died");
  // a's queued request ends now; the running one ends when the backend fails its batch.
  ASSERT_EQ(collector.records.size(), 1u);
  EXPECT_EQ(collector.records[0].request.id, 2);
  EXPECT_EQ(collector.records[0].error, "model a needs GPU 1, which was lost: rank 1 died");
  EXPECT_TRUE(backend.evicts.empty());  // not while it runs
  engine.checkInvariants();

  clock.t = 6;
  engine.onBatchDone(batchFailed(backend.runs[0], 0, 6, "rank 1 died during the batch"));
  ASSERT_EQ(collector.records.size(), 2u);
  EXPECT_EQ(collector.records[1].request.id, 0);
  EXPECT_FALSE(collector.records[1].ok);
  EXPECT_EQ(collector.records[1].error, "rank 1 died during the batch");
  ASSERT_EQ(backend.evicts.size(), 2u);
  EXPECT_EQ(engine.model(0).residency, Residency::kEvicting);
  engine.onEvictDone(backend.evicts[1].op);  // the lost GPU's, completed at once
  engine.onEvictDone(backend.evicts[0].op);
  // b loads into the room a left on GPU 0 and is served; a is never loaded again.
  ASSERT_EQ(backend.loads.size(), 3u);
  EXPECT_EQ(backend.loads[2].model, 1);
  engine.onLoadDone(backend.loads[2].op);
  ASSERT_EQ(backend.runs.size(), 2u);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[1], 7, 8));
  EXPECT_TRUE(collector.records.back().ok);
  engine.onArrival(request(3, 0, 9));
  EXPECT_EQ(backend.loads.size(), 3u);
  EXPECT_EQ(engine.model(0).loads, 1);
  expectNoLoadTouches(backend, 2, 1);
  expectEachEndedOnce(collector, engine, 4);
  engine.checkInvariants();
}

TEST(GpuLost, ALoadCutShortReleasesWhatArrivedAndIsNotRetried) {
  EngineConfig config;
  config.models = {deployment("a", {0, 1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 0, 0));
  engine.onLoadDone(backend.loads[0].op);  // GPU 0's shard arrives
  engine.onGpuLost(1, "gone");
  EXPECT_EQ(collector.records.size(), 1u);
  engine.onLoadDone(backend.loads[1].op, false, "rank 1 lost");
  ASSERT_EQ(backend.evicts.size(), 1u);
  EXPECT_EQ(backend.evicts[0].gpu, 0);
  engine.onEvictDone(backend.evicts[0].op);
  EXPECT_EQ(engine.gpuBytesUsed(0), 0);
  EXPECT_EQ(engine.model(0).residency, Residency::kOffloaded);
  engine.onArrival(request(1, 0, 1));
  EXPECT_EQ(backend.loads.size(), 2u);
  expectEachEndedOnce(collector, engine, 2);
  engine.checkInvariants();
}

TEST(GpuLost, ALoadThatEndsWellAfterTheLossIsEvictedNotServed) {
  // The lost GPU's shard had arrived before the loss; the other arrives after it.
  EngineConfig config;
  config.models = {deployment("a", {0, 1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 0, 0));
  engine.onLoadDone(backend.loads[1].op);
  engine.onGpuLost(1, "gone");
  engine.onLoadDone(backend.loads[0].op);
  EXPECT_TRUE(backend.runs.empty());
  EXPECT_EQ(backend.evicts.size(), 2u);
  EXPECT_EQ(engine.model(0).residency, Residency::kEvicting);
  for (const auto& e : std::vector<EvictCommand>(backend.evicts)) engine.onEvictDone(e.op);
  EXPECT_EQ(backend.loads.size(), 2u);
  expectEachEndedOnce(collector, engine, 1);
  engine.checkInvariants();
}

TEST(GpuLost, NoLoadIsRoutedViaALostGpu) {
  // Multipath over three GPUs of one node: a on GPU 0, its twin t (same weights) on GPU 2. t runs
  // on GPU 2 when it is lost; a's load neither copies from t nor borrows GPU 2's idle host link.
  ModelDeployment a = deployment("a", {0});
  ModelDeployment t = deployment("t", {2});
  a.weights = t.weights = "shared";
  EngineConfig config;
  config.models = {a, t};
  config.gpu_weight_budget = {kGiB, kGiB, kGiB};
  config.gpu_link_bandwidth = {10e9, 10e9, 10e9};
  config.nvlink = true;
  config.policy.routing = "multipath";
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 1, 0));
  ASSERT_EQ(backend.loads.size(), 1u);
  engine.onLoadDone(backend.loads[0].op);
  ASSERT_EQ(backend.runs.size(), 1u);  // t runs on GPU 2, resident
  // Before the loss, a would copy from t.
  EXPECT_EQ(engine.twinHolding(0, 0, 0), 1);
  EXPECT_EQ(config.policy.routing->plan(0, engine)[0].copy_from, 1);

  engine.onGpuLost(2, "rank 2 died");
  EXPECT_EQ(engine.twinHolding(0, 0, 0), -1);
  const auto routes = config.policy.routing->plan(0, engine);
  ASSERT_EQ(routes.size(), 1u);
  EXPECT_EQ(routes[0].copy_from, -1);
  ASSERT_EQ(routes[0].parts.size(), 2u);  // its own link and GPU 1's, not GPU 2's
  EXPECT_EQ(routes[0].parts[0].via, 0);
  EXPECT_EQ(routes[0].parts[1].via, 1);

  const std::size_t loads_before = backend.loads.size();
  engine.onArrival(request(1, 0, 1));
  ASSERT_EQ(backend.loads.size(), loads_before + 1);
  const LoadCommand& load = backend.loads.back();
  EXPECT_EQ(load.model, 0);
  for (const auto& part : load.route) {
    EXPECT_FALSE(part.from_device);
    EXPECT_NE(part.via, 2);
  }
  engine.onLoadDone(load.op);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs.back(), 1, 2));
  engine.onBatchDone(batchFailed(backend.runs[0], 0, 3, "rank 2 died"));
  ASSERT_EQ(backend.evicts.size(), 1u);
  EXPECT_EQ(backend.evicts[0].model, 1);
  engine.onEvictDone(backend.evicts[0].op);
  expectNoLoadTouches(backend, loads_before, 2);
  expectEachEndedOnce(collector, engine, 2);
  engine.checkInvariants();
}

TEST(GpuLost, ATwinOnTheLostGpuIsEvictedOnlyOnceTheCopyFromItEnds) {
  // a (GPU 0) copies its shard from its resident twin t (GPU 2) when GPU 2 is lost: t stays
  // until the copy ends (the backend fails it), then is evicted; a loads again directly.
  ModelDeployment a = deployment("a", {0});
  ModelDeployment t = deployment("t", {2});
  a.weights = t.weights = "shared";
  EngineConfig config;
  config.models = {a, t};
  config.gpu_weight_budget = {kGiB, kGiB, kGiB};
  config.nvlink = true;
  config.policy.routing = "peer";
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 1, 0));
  engine.onLoadDone(backend.loads[0].op);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs[0], 0, 1));
  engine.onArrival(request(1, 0, 2));
  ASSERT_EQ(backend.loads.size(), 2u);
  ASSERT_EQ(backend.loads[1].route.size(), 1u);
  EXPECT_TRUE(backend.loads[1].route[0].from_device);
  EXPECT_EQ(backend.loads[1].route[0].via, 2);

  engine.onGpuLost(2, "rank 2 died");
  EXPECT_TRUE(backend.evicts.empty());  // the copy still reads t's shard
  EXPECT_EQ(engine.model(1).residency, Residency::kResident);
  engine.checkInvariants();
  engine.onLoadDone(backend.loads[1].op, false, "copy source lost");
  ASSERT_EQ(backend.evicts.size(), 1u);
  EXPECT_EQ(backend.evicts[0].model, 1);
  ASSERT_EQ(collector.records.size(), 2u);  // t's request, served before the loss, and a's
  EXPECT_EQ(collector.records[1].error, "loading model a failed: copy source lost");
  engine.onEvictDone(backend.evicts[0].op);
  // a is still available: it loads again, over its own link.
  engine.onArrival(request(2, 0, 3));
  ASSERT_EQ(backend.loads.size(), 3u);
  EXPECT_EQ(backend.loads[2].route.size(), 1u);
  EXPECT_FALSE(backend.loads[2].route[0].from_device);
  EXPECT_EQ(backend.loads[2].route[0].via, 0);
  engine.onLoadDone(backend.loads[2].op);
  engine.onBatchDone(fakes::batchDoneAt(backend.runs.back(), 3, 4));
  EXPECT_TRUE(collector.records.back().ok);
  expectEachEndedOnce(collector, engine, 3);
  engine.checkInvariants();
}

TEST(GpuLost, AnIterationSessionOnTheLostGpuFailsItsSequencesAndIsEvicted) {
  EngineConfig config;
  config.models = {deployment("a", {0, 1}), deployment("b", {0})};
  config.gpu_weight_budget = {kGiB, kGiB};
  config.policy.batching = Batching::kIteration;
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 0, 0));
  engine.onArrival(request(1, 0, 0));
  engine.onLoadDone(backend.loads[0].op);
  engine.onLoadDone(backend.loads[1].op);
  ASSERT_EQ(backend.steps.size(), 1u);
  EXPECT_EQ(engine.sessionSequences(0), 2);
  engine.onArrival(request(2, 0, 1));  // queued for the next step
  clock.t = 2;
  engine.onGpuLost(1, "rank 1 died");
  ASSERT_EQ(collector.records.size(), 1u);
  EXPECT_EQ(collector.records[0].request.id, 2);
  EXPECT_TRUE(backend.evicts.empty());

  StepResult failed;
  failed.batch = backend.steps[0].batch;
  failed.step = backend.steps[0].step;
  failed.start = 0;
  failed.end = 3;
  failed.ok = false;
  failed.error = "rank 1 died during the step";
  clock.t = 3;
  engine.onStepDone(failed);
  ASSERT_EQ(collector.records.size(), 3u);
  for (std::size_t i = 1; i < 3; ++i) {
    EXPECT_FALSE(collector.records[i].ok);
    EXPECT_EQ(collector.records[i].error, "rank 1 died during the step");
  }
  EXPECT_EQ(engine.sessionSequences(0), 0);
  ASSERT_EQ(backend.evicts.size(), 2u);
  engine.onEvictDone(backend.evicts[0].op);
  engine.onEvictDone(backend.evicts[1].op);
  EXPECT_EQ(engine.model(0).residency, Residency::kOffloaded);
  // b, on the surviving GPU, is still served; a is not loaded again.
  engine.onArrival(request(3, 1, 4));
  engine.onArrival(request(4, 0, 4));
  ASSERT_EQ(backend.loads.size(), 3u);
  EXPECT_EQ(backend.loads[2].model, 1);
  engine.onLoadDone(backend.loads[2].op);
  ASSERT_EQ(backend.steps.size(), 2u);
  StepResult ok;
  ok.batch = backend.steps[1].batch;
  ok.step = backend.steps[1].step;
  ok.start = 4;
  ok.end = 5;
  engine.onStepDone(ok);
  for (int i = 0; i < 3 && engine.sessionSequences(1) > 0; ++i) {
    ok.step = backend.steps.back().step;
    engine.onStepDone(ok);
  }
  EXPECT_TRUE(collector.records.back().ok);
  EXPECT_EQ(collector.records.back().request.id, 3);
  expectEachEndedOnce(collector, engine, 5);
  engine.checkInvariants();
}

TEST(GpuLost, ASecondReportOfTheSameGpuChangesNothing) {
  EngineConfig config;
  config.models = {deployment("a", {0, 1})};
  config.gpu_weight_budget = {kGiB, kGiB};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onArrival(request(0, 0, 0));
  engine.onLoadDone(backend.loads[0].op);
  engine.onLoadDone(backend.loads[1].op);
  engine.onArrival(request(1, 0, 1));  // queued behind the running batch
  engine.onGpuLost(1, "first");
  const auto log = backend.log;
  const auto records = collector.records.size();
  engine.onGpuLost(1, "second");
  EXPECT_EQ(backend.log, log);
  EXPECT_EQ(collector.records.size(), records);
  EXPECT_EQ(engine.unavailableReason(0), "model a needs GPU 1, which was lost: first");
  engine.onBatchDone(batchFailed(backend.runs[0], 0, 2, "lost"));
  ASSERT_EQ(backend.evicts.size(), 2u);
  engine.onGpuLost(1, "third");
  EXPECT_EQ(backend.evicts.size(), 2u);
  engine.onEvictDone(backend.evicts[0].op);
  engine.onEvictDone(backend.evicts[1].op);
  // A second lost GPU of the same model: it is unavailable already, its reason stays.
  engine.onGpuLost(0, "later");
  EXPECT_EQ(engine.unavailableReason(0), "model a needs GPU 1, which was lost: first");
  EXPECT_THROW(engine.onGpuLost(2, "no such GPU"), std::invalid_argument);
  EXPECT_EQ(backend.loads.size(), 2u);
  expectEachEndedOnce(collector, engine, 2);
  engine.checkInvariants();
}

TEST(GpuLost, APinnedModelOnALostGpuIsNotLoadedAtStart) {
  EngineConfig config;
  config.models = {deployment("a", {1}), deployment("b", {0})};
  config.gpu_weight_budget = {kGiB, kGiB};
  config.policy.pinned = {0, 1};
  RecordingBackend backend;
  ManualClock clock;
  Collector collector;
  Engine engine(config, backend, clock, &collector);
  engine.onGpuLost(1, "never came up");
  // The pass that follows starts the pinned models: b only.
  EXPECT_EQ(backend.log, (std::vector<std::string>{"load 1/0"}));
  engine.onArrival(request(0, 0, 0));
  EXPECT_EQ(backend.loads.size(), 1u);
  EXPECT_FALSE(collector.records.at(0).ok);
  expectEachEndedOnce(collector, engine, 1);
  engine.checkInvariants();
}

}  // namespace
}  // namespace computron
