// The real backend on the host-memory device: loads (direct, multi-path, from a peer's copy),
// layer readiness, integrity checks, evictions, placeholder execution, compaction, injected
// failures, the engine driven in real time over it, and layer-pipelined execution behind a load.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "common/core/engine.h"
#include "common/model_spec.h"
#include "runtime/execution.h"
#include "runtime/host_device.h"
#include "runtime/job_queue.h"
#include "runtime/weights.h"
#include "runtime/real_backend.h"
#include "runtime/realtime_driver.h"
#include "tests/support/runtime_options.h"
#include "tests/support/tiny_model.h"
#include "tests/support/vector_source.h"

namespace computron::runtime {
namespace {

ModelSpec tinySpec(int layers = 4) { return fakes::tinyOptSpec(layers); }

ModelDeployment deployment(const std::string& name, int tp, int pp, std::vector<GpuId> gpus, int layers = 4) {
  return fakes::tinyDeployment(name, tp, pp, std::move(gpus), layers);
}

RuntimeOptions smallOptions() { return fakes::smallRuntimeOptions(/*threads=*/2, /*placeholder_step=*/0); }

struct Recorder : BackendListener {
  void loadDone(OpId op, bool ok, const std::string& error) override { loads[op] = {ok, error}; }
  void evictDone(OpId op) override { evicts.insert(op); }
  void batchDone(const BatchResult& r) override { batches[r.batch] = r; }
  void layerReady(const LayerReady& l) override { layers[l.op].push_back(l); }
  std::map<OpId, std::pair<bool, std::string>> loads;
  std::set<OpId> evicts;
  std::map<BatchId, BatchResult> batches;
  std::map<OpId, std::vector<LayerReady>> layers;
};

// Dispatches until `done` holds (or fails the test after a few seconds).
template <typename Pred>
void pump(RealBackend& backend, Recorder& rec, Pred done) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!done()) {
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "backend did not finish";
    backend.dispatch(std::chrono::steady_clock::now() + std::chrono::milliseconds(200), rec);
  }
}

LoadCommand loadCmd(const RealBackend& backend, OpId op, ModelId model, int shard, GpuId gpu,
                    std::vector<RoutePart> route = {}) {
  LoadCommand c;
  c.op = op;
  c.model = model;
  c.shard = shard;
  c.gpu = gpu;
  c.bytes = backend.hostShard(model, shard).bytes;
  c.layout = backend.hostShard(model, shard).layout;
  c.route = route.empty() ? std::vector<RoutePart>{{gpu, c.bytes, false}} : route;
  return c;
}

std::uint64_t deviceChecksum(RealBackend& backend, ModelId model, int shard, GpuId gpu) {
  auto ext = backend.residentExtent(model, shard, gpu);
  EXPECT_TRUE(ext.has_value());
  if (!ext) return 0;
  return checksumRange(backend.device(gpu).poolBase() + ext->offset, ext->bytes);
}

EngineConfig configOf(std::vector<ModelDeployment> models, int gpus, std::int64_t budget) {
  EngineConfig c;
  c.models = std::move(models);
  c.gpu_weight_budget.assign(static_cast<std::size_t>(gpus), budget);
  return c;
}

TEST(RealBackendHost, DirectLoadReportsLayersInOrderAndVerifies) {
  HostDeviceFactory factory(2);
  RealBackend backend(configOf({deployment("a", 1, 1, {0})}, 2, 64 * kMiB), factory, smallOptions());
  Recorder rec;
  backend.load(loadCmd(backend, 1, 0, 0, 0));
  pump(backend, rec, [&] { return rec.loads.count(1) != 0; });
  EXPECT_TRUE(rec.loads[1].first) << rec.loads[1].second;
  const auto& layers = rec.layers[1];
  const auto& segs = backend.store().at(0, 0).segments;
  ASSERT_EQ(layers.size(), segs.size());
  for (std::size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(layers[i].segment, static_cast<int>(i));
    EXPECT_EQ(layers[i].layer, segs[i].layer);
    if (i > 0) {
      EXPECT_GE(layers[i].time, layers[i - 1].time);
    }
  }
  EXPECT_EQ(deviceChecksum(backend, 0, 0, 0), backend.store().at(0, 0).checksum);
  auto records = backend.takeLoadRecords();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_TRUE(records[0].verified);
  EXPECT_GE(records[0].done, records[0].copy_done);
  EXPECT_TRUE(backend.idle());
}

TEST(RealBackendHost, TensorParallelShardsLoadOnBothDevicesAtOnce) {
  HostDeviceOptions slow;
  slow.chunk_delay = 200 * kNanosPerMicro;
  HostDeviceFactory factory(2, slow);
  RealBackend backend(configOf({deployment("a", 2, 1, {0, 1})}, 2, 64 * kMiB), factory, smallOptions());
  Recorder rec;
  backend.load(loadCmd(backend, 1, 0, 0, 0));
  backend.load(loadCmd(backend, 2, 0, 1, 1));
  pump(backend, rec, [&] { return rec.loads.size() == 2; });
  EXPECT_TRUE(rec.loads[1].first && rec.loads[2].first);
  auto records = backend.takeLoadRecords();
  ASSERT_EQ(records.size(), 2u);
  // The two loads overlapped in time: each started before the other finished its copies.
  EXPECT_LT(records[0].started, records[1].copy_done);
  EXPECT_LT(records[1].started, records[0].copy_done);
  for (int s = 0; s < 2; ++s) EXPECT_EQ(deviceChecksum(backend, 0, s, s), backend.store().at(0, s).checksum);
}

TEST(RealBackendHost, MultiPathAndFromDeviceRoutesDeliverTheSameBytes) {
  HostDeviceFactory factory(2);
  // Model 0 lives on GPU 0; the same shard also gets loaded on GPU 1 from GPU 0's copy.
  RealBackend backend(configOf({deployment("a", 1, 1, {0})}, 2, 64 * kMiB), factory, smallOptions());
  Recorder rec;
  const std::int64_t bytes = backend.store().at(0, 0).bytes;
  const std::int64_t half = bytes / 2 + 1234;
  backend.load(loadCmd(backend, 1, 0, 0, 0, {{0, half, false}, {1, bytes - half, false}}));
  pump(backend, rec, [&] { return rec.loads.count(1) != 0; });
  ASSERT_TRUE(rec.loads[1].first) << rec.loads[1].second;
  EXPECT_EQ(deviceChecksum(backend, 0, 0, 0), backend.store().at(0, 0).checksum);
  auto records = backend.takeLoadRecords();
  ASSERT_EQ(records[0].paths.size(), 2u);
  EXPECT_EQ(records[0].paths[1].kind, PathKind::kRelay);
  EXPECT_EQ(records[0].paths[1].bytes, bytes - half);

  backend.load(loadCmd(backend, 2, 0, 0, 1, {{0, bytes, true}}));
  pump(backend, rec, [&] { return rec.loads.count(2) != 0; });
  ASSERT_TRUE(rec.loads[2].first) << rec.loads[2].second;
  EXPECT_EQ(deviceChecksum(backend, 0, 0, 1), backend.store().at(0, 0).checksum);

  // From a GPU without a copy: refused with a clear message.
  backend.evict({3, 0, 0, 0, bytes});
  backend.evict({4, 0, 0, 1, bytes});
  pump(backend, rec, [&] { return rec.evicts.size() == 2; });
  backend.load(loadCmd(backend, 5, 0, 0, 1, {{0, bytes, true}}));
  pump(backend, rec, [&] { return rec.loads.count(5) != 0; });
  EXPECT_FALSE(rec.loads[5].first);
  EXPECT_NE(rec.loads[5].second.find("holds no resident copy"), std::string::npos) << rec.loads[5].second;
  EXPECT_EQ(backend.pool(0).used(), 0);
  EXPECT_EQ(backend.pool(1).used(), 0);
}

TEST(RealBackendHost, InjectedFailureFreesTheExtentAndNamesThePath) {
  HostDeviceOptions opts;
  opts.fail_path = [](const PathJob& j) -> std::optional<std::string> {
    if (j.model == 1) return std::string("injected copy failure");
    return std::nullopt;
  };
  HostDeviceFactory factory(2, opts);
  RealBackend backend(configOf({deployment("a", 1, 1, {0}), deployment("b", 1, 1, {0})}, 2, 64 * kMiB), factory,
                      smallOptions());
  Recorder rec;
  const std::int64_t bytes = backend.store().at(1, 0).bytes;
  backend.load(loadCmd(backend, 1, 1, 0, 0, {{0, bytes / 2, false}, {1, bytes - bytes / 2, false}}));
  backend.load(loadCmd(backend, 2, 0, 0, 0));
  pump(backend, rec, [&] { return rec.loads.size() == 2; });
  EXPECT_FALSE(rec.loads[1].first);
  EXPECT_NE(rec.loads[1].second.find("injected copy failure"), std::string::npos);
  EXPECT_NE(rec.loads[1].second.find("path via GPU"), std::string::npos);
  EXPECT_TRUE(rec.loads[2].first);
  EXPECT_FALSE(backend.residentExtent(1, 0, 0).has_value());
  EXPECT_EQ(backend.pool(0).used(), backend.pool(0).rounded(backend.store().at(0, 0).bytes));
  EXPECT_TRUE(backend.idle());
}

TEST(RealBackendHost, CorruptedCopyFailsTheIntegrityCheck) {
  HostDeviceOptions opts;
  opts.corrupt_path = [](const PathJob& j) { return j.model == 0; };
  HostDeviceFactory factory(1, opts);
  RealBackend backend(configOf({deployment("a", 1, 1, {0})}, 1, 64 * kMiB), factory, smallOptions());
  Recorder rec;
  backend.load(loadCmd(backend, 1, 0, 0, 0));
  pump(backend, rec, [&] { return rec.loads.count(1) != 0; });
  EXPECT_FALSE(rec.loads[1].first);
  EXPECT_NE(rec.loads[1].second.find("integrity"), std::string::npos) << rec.loads[1].second;
  EXPECT_EQ(backend.pool(0).used(), 0);
}

TEST(RealBackendHost, RegistrationRefusesShardsOverBudgetAndMissingGpus) {
  HostDeviceFactory factory(2);
  const std::int64_t shard_bytes = tinySpec().shard(1, 1, 0, 0).bytes;
  try {
    RealBackend backend(configOf({deployment("big", 1, 1, {0})}, 2, shard_bytes - 1), factory, smallOptions());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("weight budget"), std::string::npos) << e.what();
  }
  EXPECT_THROW(RealBackend(configOf({deployment("x", 1, 1, {2})}, 3, 64 * kMiB), factory, smallOptions()),
               ConfigError);
  RuntimeOptions tight = smallOptions();
  tight.host.host_memory_limit = 1024;
  EXPECT_THROW(RealBackend(configOf({deployment("a", 1, 1, {0})}, 2, 64 * kMiB), factory, tight), HostMemoryError);
}

TEST(RealBackendHost, ExecutionIsAPlaceholderWithFixedCostsAcrossTheGroup) {
  HostDeviceFactory factory(2);
  RuntimeOptions o = smallOptions();
  o.placeholder_step = 2 * kNanosPerMilli;
  RealBackend backend(configOf({deployment("a", 1, 2, {0, 1})}, 2, 64 * kMiB), factory, o);
  Recorder rec;
  backend.load(loadCmd(backend, 1, 0, 0, 0));
  backend.load(loadCmd(backend, 2, 0, 1, 1));
  pump(backend, rec, [&] { return rec.loads.size() == 2; });
  ExecuteCommand ex;
  ex.batch = 7;
  ex.model = 0;
  ex.pp = 2;
  ex.gpus = {0, 1};
  Request r1;
  r1.id = 1;
  r1.output_tokens = 1;
  Request r2;
  r2.id = 2;
  r2.output_tokens = 3;
  ex.requests = {r1, r2};
  backend.execute(ex);
  // Evicting while the batch runs keeps the blocks until it finishes.
  backend.evict({3, 0, 0, 0, backend.store().at(0, 0).bytes});
  pump(backend, rec, [&] { return rec.batches.count(7) != 0 && rec.evicts.count(3) != 0; });
  const BatchResult& b = rec.batches[7];
  EXPECT_TRUE(b.ok) << b.error;
  EXPECT_GE(b.first_token - b.start, 2 * kNanosPerMilli);
  EXPECT_EQ(b.finish[0], b.first_token);
  EXPECT_GE(b.finish[1] - b.start, 6 * kNanosPerMilli);
  EXPECT_EQ(backend.pool(0).used(), 0);
  // A batch on a model that is not resident fails cleanly.
  ex.batch = 8;
  backend.execute(ex);
  pump(backend, rec, [&] { return rec.batches.count(8) != 0; });
  EXPECT_FALSE(rec.batches[8].ok);
  EXPECT_NE(rec.batches[8].error.find("not resident"), std::string::npos);
}

TEST(RealBackendHost, FragmentedPoolIsCompactedAndMovedShardsStayIntact) {
  HostDeviceFactory factory(1);
  // Four small models of equal size on GPU 0 and one of twice the size; the budget fits exactly
  // four small ones' worth.
  std::vector<ModelDeployment> models;
  for (int i = 0; i < 4; ++i) models.push_back(deployment("s" + std::to_string(i), 1, 1, {0}, 4));
  models.push_back(deployment("big", 1, 1, {0}, 8));
  RuntimeOptions o = smallOptions();
  o.granule = 4096;
  const std::int64_t small = tinySpec(4).shard(1, 1, 0, 0).bytes;
  const std::int64_t big = tinySpec(8).shard(1, 1, 0, 0).bytes;
  ASSERT_GT(big, small + 8192);
  ASSERT_LT(big, 2 * small);
  RealBackend backend(configOf(models, 1, 4 * small + 4 * 4096), factory, o);
  Recorder rec;
  for (int i = 0; i < 4; ++i) backend.load(loadCmd(backend, static_cast<OpId>(i + 1), i, 0, 0));
  pump(backend, rec, [&] { return rec.loads.size() == 4; });
  // Free slots 0 and 2: enough bytes for "big", but not contiguous.
  backend.evict({10, 0, 0, 0, small});
  backend.evict({11, 2, 0, 0, small});
  pump(backend, rec, [&] { return rec.evicts.size() == 2; });
  backend.load(loadCmd(backend, 20, 4, 0, 0));
  pump(backend, rec, [&] { return rec.loads.count(20) != 0; });
  ASSERT_TRUE(rec.loads[20].first) << rec.loads[20].second;
  EXPECT_EQ(backend.compactions(), 1);
  for (ModelId m : {1, 3, 4}) EXPECT_EQ(deviceChecksum(backend, m, 0, 0), backend.store().at(m, 0).checksum);
}

// Three small models s0, s1, s2 (their shards side by side on GPU 0, in that order) and "big", in
// room for the three small ones only: with s0 and s2 gone there are enough bytes for big, but in
// two holes, so s1 must slide to offset 0 first. Batches take 30 ms (placeholder).
class MiddleShard {
 public:
  explicit MiddleShard(HostDeviceOptions device = {}) : factory_(1, std::move(device)) {
    std::vector<ModelDeployment> models;
    for (int i = 0; i < 3; ++i) models.push_back(deployment("s" + std::to_string(i), 1, 1, {0}, 4));
    models.push_back(deployment("big", 1, 1, {0}, 6));
    RuntimeOptions o = smallOptions();
    o.granule = 4096;
    o.placeholder_step = 30 * kNanosPerMilli;
    backend_ = std::make_unique<RealBackend>(configOf(models, 1, 3 * small() + 3 * 4096), factory_, o);
    for (int i = 0; i < 3; ++i) backend_->load(loadCmd(*backend_, static_cast<OpId>(i + 1), i, 0, 0));
  }
  static std::int64_t small() { return tinySpec(4).shard(1, 1, 0, 0).bytes; }
  RealBackend& backend() { return *backend_; }
  // A one-request batch of s1, as the engine issues it.
  void runS1(BatchId batch) {
    ExecuteCommand ex;
    ex.batch = batch;
    ex.model = 1;
    ex.gpus = {0};
    ex.requests = {Request{}};
    backend_->execute(ex);
  }
  // Evicts s1's neighbours s0 and s2 (enough bytes for big, in two holes), loads big (op 20) and
  // dispatches until that load and s1's batch `batch` are done, both successfully.
  template <typename Listener>
  void freeNeighboursAndLoadBig(Listener& rec, BatchId batch) {
    backend_->evict({11, 0, 0, 0, small()});
    backend_->evict({12, 2, 0, 0, small()});
    backend_->load(loadCmd(*backend_, 20, 3, 0, 0));
    pump(*backend_, rec, [&] { return rec.loads.count(20) != 0 && rec.batches.count(batch) != 0; });
    ASSERT_TRUE(rec.loads[20].first) << rec.loads[20].second;
    ASSERT_TRUE(rec.batches[batch].ok) << rec.batches[batch].error;
  }
  const LoadRecord& record(OpId op) {
    for (const auto& r : backend_->takeLoadRecords()) records_[r.cmd.op] = r;
    return records_.at(op);
  }
  void expectIntact() {
    EXPECT_EQ(backend_->compactions(), 1);
    EXPECT_EQ(deviceChecksum(*backend_, 1, 0, 0), backend_->store().at(1, 0).checksum);
    EXPECT_EQ(deviceChecksum(*backend_, 3, 0, 0), backend_->store().at(3, 0).checksum);
    EXPECT_TRUE(backend_->idle());
  }

 private:
  HostDeviceFactory factory_;
  std::unique_ptr<RealBackend> backend_;
  std::map<OpId, LoadRecord> records_;
};

// A listener that, like the engine, issues s1's batch `batch` the moment `trigger` says so.
struct ChainRecorder : Recorder {
  ChainRecorder(MiddleShard& of, BatchId next) : pool(of), batch(next) {}
  void batchDone(const BatchResult& r) override {
    Recorder::batchDone(r);
    if (after_batch != 0 && r.batch == after_batch) pool.runS1(batch);
  }
  void loadDone(OpId op, bool ok, const std::string& error) override {
    Recorder::loadDone(op, ok, error);
    if (after_load != 0 && op == after_load) pool.runS1(batch);
  }
  MiddleShard& pool;
  BatchId batch;
  BatchId after_batch = 0;
  OpId after_load = 0;
};

// A load that needs a compaction moving a shard that a batch reads waits for that batch only: the
// shard's next batch, issued the moment the first one ends (as the engine does, from its
// listener), waits behind the compaction and the load instead of passing it again and again.
TEST(RealBackendHost, LoadWaitingToMoveABusyShardGoesBeforeThatShardsNextBatch) {
  MiddleShard pool;
  RealBackend& backend = pool.backend();
  ASSERT_GT(backend.hostShard(3, 0).bytes, MiddleShard::small() + 8192);
  ASSERT_LT(backend.hostShard(3, 0).bytes, 2 * MiddleShard::small());
  ChainRecorder rec(pool, 2);
  rec.after_batch = 1;  // the engine's next batch on s1, at once
  pump(backend, rec, [&] { return rec.loads.size() == 3; });
  pool.runS1(1);
  ASSERT_NO_FATAL_FAILURE(pool.freeNeighboursAndLoadBig(rec, 2));  // while s1's batch 1 runs
  const LoadRecord& big = pool.record(20);
  EXPECT_GE(big.started, rec.batches[1].finish[0]);
  EXPECT_LE(big.started, rec.batches[2].start);  // before the next batch, not after it
  pool.expectIntact();
}

// The same when the shard in the way is still loading: its first batch, issued from the listener
// the moment its load ends, waits for the compaction instead of starting first and making the
// waiting load sit through it.
TEST(RealBackendHost, LoadWaitingToMoveALoadingShardGoesBeforeThatShardsFirstBatch) {
  HostDeviceOptions slow;
  slow.chunk_delay = kNanosPerMilli;  // s1 reloads in tens of milliseconds: time to act during it
  MiddleShard pool(slow);
  RealBackend& backend = pool.backend();
  ChainRecorder rec(pool, 1);
  rec.after_load = 5;  // s1 back: the engine starts its waiting batch at once
  pump(backend, rec, [&] { return rec.loads.size() == 3; });
  // s1 leaves the middle and comes back into it; while it loads, both neighbours go and "big"
  // needs s1 moved to offset 0.
  backend.evict({10, 1, 0, 0, MiddleShard::small()});
  backend.load(loadCmd(backend, 5, 1, 0, 0));
  ASSERT_NO_FATAL_FAILURE(pool.freeNeighboursAndLoadBig(rec, 1));  // while s1 loads
  ASSERT_TRUE(rec.loads[5].first) << rec.loads[5].second;
  const LoadRecord& big = pool.record(20);
  EXPECT_LT(big.issued, pool.record(5).done);    // issued while s1 was loading
  EXPECT_LE(big.started, rec.batches[1].start);  // and moved s1 before s1's first batch
  pool.expectIntact();
}

TEST(RealBackendHost, LoadWaitsForTheBatchStillReadingAnEvictedShard) {
  HostDeviceFactory factory(1);
  RuntimeOptions o = smallOptions();
  o.placeholder_step = 30 * kNanosPerMilli;
  const std::int64_t shard = tinySpec().shard(1, 1, 0, 0).bytes;
  // Room for one shard only.
  RealBackend backend(configOf({deployment("a", 1, 1, {0}), deployment("b", 1, 1, {0})}, 1, shard), factory, o);
  Recorder rec;
  backend.load(loadCmd(backend, 1, 0, 0, 0));
  pump(backend, rec, [&] { return rec.loads.size() == 1; });
  ExecuteCommand ex;
  ex.batch = 1;
  ex.model = 0;
  ex.gpus = {0};
  ex.requests = {Request{}};
  backend.execute(ex);
  backend.evict({2, 0, 0, 0, shard});
  backend.load(loadCmd(backend, 3, 1, 0, 0));  // must wait: the batch still reads model 0
  pump(backend, rec, [&] { return rec.loads.count(3) != 0; });
  ASSERT_EQ(rec.batches.count(1), 1u);
  EXPECT_TRUE(rec.loads[3].first) << rec.loads[3].second;
  auto records = backend.takeLoadRecords();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_GE(records[1].started, rec.batches[1].finish[0]);
  EXPECT_GT(records[1].started, records[1].issued);
  EXPECT_EQ(deviceChecksum(backend, 1, 0, 0), backend.store().at(1, 0).checksum);
  EXPECT_TRUE(backend.idle());
}

TEST(RealBackendHost, TwinsShareOneHostCopyAndCopyFromEachOther) {
  HostDeviceFactory factory(2);
  ModelDeployment a = deployment("a", 1, 1, {0});
  ModelDeployment b = deployment("b", 1, 1, {1});
  a.weights = b.weights = "shared";
  RealBackend backend(configOf({a, b, deployment("c", 1, 1, {1})}, 2, 64 * kMiB), factory, smallOptions());
  EXPECT_EQ(backend.store().stats().shards, 2);  // a and b share theirs
  EXPECT_EQ(&backend.hostShard(0, 0), &backend.hostShard(1, 0));
  Recorder rec;
  backend.load(loadCmd(backend, 1, 0, 0, 0));
  pump(backend, rec, [&] { return rec.loads.size() == 1; });
  LoadCommand copy = loadCmd(backend, 2, 0, 0, 1, {{0, backend.hostShard(1, 0).bytes, true}});
  copy.model = 1;  // b's shard from a's resident copy on GPU 0
  backend.load(copy);
  pump(backend, rec, [&] { return rec.loads.size() == 2; });
  ASSERT_TRUE(rec.loads[2].first) << rec.loads[2].second;
  EXPECT_EQ(deviceChecksum(backend, 1, 0, 1), backend.hostShard(1, 0).checksum);
  // c is no twin of a: a from-device route for it is refused.
  LoadCommand wrong = loadCmd(backend, 3, 2, 0, 1, {{0, backend.hostShard(2, 0).bytes, true}});
  backend.load(wrong);
  pump(backend, rec, [&] { return rec.loads.size() == 3; });
  EXPECT_FALSE(rec.loads[3].first);
}

// The engine over the real backend in real time: the seed's swap test shape (two models, one
// loaded at a time, alternating requests) with a third model whose loads always fail.
class AlternatingSource : public RequestSource {
 public:
  AlternatingSource(std::vector<ModelId> models, int count) : models_(std::move(models)), count_(count) {}
  std::optional<Request> next() override {
    if (issued_ >= count_ || outstanding_) return std::nullopt;
    Request r;
    r.id = issued_;
    r.model = models_[static_cast<std::size_t>(issued_) % models_.size()];
    r.arrival = last_finish_;
    r.output_tokens = 2;
    ++issued_;
    outstanding_ = true;
    return r;
  }
  bool exhausted() const override { return issued_ >= count_ && !outstanding_; }
  void onRequestDone(const Request&, Nanos finish) override {
    outstanding_ = false;
    last_finish_ = finish;
  }

 private:
  std::vector<ModelId> models_;
  int count_;
  int issued_ = 0;
  bool outstanding_ = false;
  Nanos last_finish_ = 0;
};

struct RequestLog : EngineObserver {
  void onRequestDone(const RequestRecord& r) override { records.push_back(r); }
  void onLoad(const LoadCommand&, Nanos, Nanos, bool ok) override { (ok ? loads_ok : loads_failed)++; }
  std::vector<RequestRecord> records;
  int loads_ok = 0;
  int loads_failed = 0;
};

TEST(RealBackendHost, EngineServesTheSwapTestAndSurvivesAFailingModel) {
  HostDeviceOptions opts;
  opts.fail_path = [](const PathJob& j) -> std::optional<std::string> {
    if (j.model == 2 && j.shard == 1) return std::string("injected");
    return std::nullopt;
  };
  HostDeviceFactory factory(2, opts);
  std::vector<ModelDeployment> models{deployment("a", 2, 1, {0, 1}), deployment("b", 2, 1, {0, 1}),
                                      deployment("broken", 2, 1, {0, 1})};
  EngineConfig config = configOf(models, 2, 64 * kMiB);
  config.policy.max_loaded_models = 1;
  RuntimeOptions o = smallOptions();
  o.placeholder_step = 200 * kNanosPerMicro;
  RealBackend backend(config, factory, o);
  RequestLog log;
  RealtimeDriver driver(backend, config, std::make_unique<AlternatingSource>(std::vector<ModelId>{0, 1, 2}, 12), &log,
                        20 * kNanosPerSecond);
  const DriverStats stats = driver.run();
  EXPECT_EQ(stats.arrivals, 12);
  ASSERT_EQ(log.records.size(), 12u);
  int ok = 0;
  for (const auto& r : log.records) {
    if (r.request.model == 2) {
      EXPECT_FALSE(r.ok);
      EXPECT_NE(r.error.find("injected"), std::string::npos) << r.error;
    } else {
      EXPECT_TRUE(r.ok) << r.error;
      EXPECT_TRUE(r.waited_for_load);
      EXPECT_GE(r.finish, r.first_token);
      ++ok;
    }
  }
  EXPECT_EQ(ok, 8);
  EXPECT_EQ(log.loads_failed, 4);  // shard 1 of "broken", four attempts
  EXPECT_TRUE(backend.idle());
  driver.engine().checkInvariants();
}

}  // namespace
}  // namespace computron::runtime

namespace computron::runtime {
namespace {

// The engine's own routes on the real backend: multi-path loads through a helper GPU's link, and
// copies from a resident twin over NVLink, every load checksummed.
TEST(RealBackendHost, EngineRoutesMultiPathAndTwinCopies) {
  for (const std::string routing : {"multipath", "peer"}) {
    HostDeviceFactory factory(2);
    ModelDeployment a = deployment("a", 1, 1, {0});
    ModelDeployment b = deployment("b", 1, 1, {1});
    a.weights = b.weights = "shared";
    EngineConfig config = configOf({a, b}, 2, 64 * kMiB);
    config.policy.routing = routing;
    config.nvlink = true;
    config.gpu_link_bandwidth = {55e9, 55e9};
    RealBackend backend(config, factory, smallOptions());
    RequestLog log;
    RealtimeDriver driver(backend, config, std::make_unique<AlternatingSource>(std::vector<ModelId>{0, 1}, 6), &log,
                          20 * kNanosPerSecond);
    driver.run();
    ASSERT_EQ(log.records.size(), 6u) << routing;
    for (const auto& r : log.records) EXPECT_TRUE(r.ok) << routing << ": " << r.error;
    EXPECT_EQ(log.loads_failed, 0) << routing;
    EXPECT_TRUE(backend.idle());
    int relay = 0, from_device = 0, verified = 0;
    const auto records = backend.takeLoadRecords();
    for (const auto& r : records) {
      verified += r.verified ? 1 : 0;
      for (const auto& p : r.paths) {
        relay += p.kind == PathKind::kRelay ? 1 : 0;
        from_device += p.kind == PathKind::kFromDevice ? 1 : 0;
      }
    }
    EXPECT_EQ(verified, static_cast<int>(records.size()));
    if (routing == "multipath") {
      EXPECT_GT(relay, 0);
    }
    if (routing == "peer") {
      EXPECT_GT(from_device, 0);
    }
  }
}

}  // namespace
}  // namespace computron::runtime

namespace computron::runtime {
namespace {

// Layer-pipelined execution over the backend, with a test-only execution beside the real CUDA
// one: each part waits on its gate segment by segment (as the CUDA executor does before each
// layer), spends `per_segment` on it, then reports one pass per output token.
class GatedFakeExecution final : public ModelExecution {
 public:
  explicit GatedFakeExecution(Nanos per_segment) : per_segment_(per_segment) {}
  ~GatedFakeExecution() override { stop(); }
  std::string name() const override { return "gated-fake"; }
  void validate(const EngineConfig&) const override {}
  void fillShard(const ModelDeployment& model, ModelId id, int shard, std::span<std::byte> image) const override {
    const ShardLayout layout = RealBackend::shardLayout(model, shard);
    generateShard(image.data(), shardSegments(layout), model.spec.dtype, shardSeed(static_cast<std::uint64_t>(id) + 100, shard), 1);
  }
  void start(const EngineConfig& config, const std::vector<Device*>& devices, CompletionQueue& queue,
             const Clock& clock) override {
    config_ = config;
    queue_ = &queue;
    clock_ = &clock;
    for (std::size_t g = 0; g < devices.size(); ++g) {
      workers_.push_back(std::make_unique<JobQueue<ExecPart>>("fake execution"));
      threads_.emplace_back([this, q = workers_.back().get()] {
        ExecPart part;
        while (q->pop(part)) runPart(part, *q);
      });
    }
  }
  void submit(ExecPart part) override { workers_.at(static_cast<std::size_t>(part.gpu))->push(std::move(part)); }
  void stop() override {
    for (auto& w : workers_) w->stop();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

  struct Passed {
    ModelId model;
    int shard;
    int segment;
    Nanos time;
    bool gated;
  };
  std::vector<Passed> passed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return passed_;
  }

 private:
  void runPart(const ExecPart& part, JobQueue<ExecPart>& q) {
    DeviceEvent ev;
    ev.kind = DeviceEvent::Kind::kExecDone;
    ev.batch = part.batch;
    ev.path = part.part;
    ev.gpu = part.gpu;
    ev.start = clock_->now();
    const ModelDeployment& d = config_.models[static_cast<std::size_t>(part.model)];
    const int segments = static_cast<int>(shardSegments(RealBackend::shardLayout(d, part.shard)).size());
    bool ok = true;
    for (int s = 0; s < segments; ++s) {
      if (part.gate && !part.gate->wait(s)) ok = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        passed_.push_back({part.model, part.shard, s, clock_->now(), part.gate != nullptr});
      }
      q.sleepUnlessStopped(per_segment_);
    }
    ev.step_end.push_back(clock_->now());
    int steps = 1;
    for (const auto& r : part.requests) steps = std::max(steps, r.output_tokens);
    for (int k = 1; k < steps; ++k) {
      q.sleepUnlessStopped(per_segment_);
      ev.step_end.push_back(clock_->now());
    }
    if (!ok) {
      ev.ok = false;
      ev.error = "its weights did not all arrive: " + part.gate->error();
    }
    ev.time = clock_->now();
    queue_->push(std::move(ev));
  }

  Nanos per_segment_;
  EngineConfig config_;
  CompletionQueue* queue_ = nullptr;
  const Clock* clock_ = nullptr;
  std::vector<std::unique_ptr<JobQueue<ExecPart>>> workers_;
  std::vector<std::thread> threads_;
  mutable std::mutex mutex_;
  std::vector<Passed> passed_;
};

ExecuteCommand execCmd(BatchId batch, ModelId model, std::vector<GpuId> gpus, int output_tokens) {
  ExecuteCommand c;
  c.batch = batch;
  c.model = model;
  c.tp = static_cast<int>(gpus.size());
  c.gpus = std::move(gpus);
  Request r;
  r.id = batch;
  r.model = model;
  r.output_tokens = output_tokens;
  c.requests = {r};
  return c;
}

TEST(RealBackendPipelined, BatchRunsEachLayerAfterItArrivesWhileTheLoadContinues) {
  HostDeviceOptions opts;
  opts.chunk_delay = 300 * kNanosPerMicro;  // stretch the load so the batch overlaps it
  HostDeviceFactory factory(2, opts);
  RuntimeOptions o = smallOptions();
  auto exec = std::make_shared<GatedFakeExecution>(20 * kNanosPerMicro);
  o.execution = exec;
  RealBackend backend(configOf({deployment("a", 2, 1, {0, 1}, 8)}, 2, 64 * kMiB), factory, o);
  Recorder rec;
  backend.load(loadCmd(backend, 1, 0, 0, 0));
  backend.load(loadCmd(backend, 2, 0, 1, 1));
  backend.execute(execCmd(7, 0, {0, 1}, 3));
  pump(backend, rec, [&] { return rec.batches.count(7) != 0 && rec.loads.size() == 2; });
  const BatchResult& b = rec.batches[7];
  EXPECT_TRUE(b.ok) << b.error;
  ASSERT_EQ(b.finish.size(), 1u);
  EXPECT_GT(b.finish[0], b.first_token);  // two decode passes after the prefill
  // Started before the loads ended, and no segment was used before its bytes were reported.
  const auto passed = exec->passed();
  std::map<std::pair<int, int>, Nanos> ready;  // (shard, segment) -> reported
  Nanos last_ready = 0;
  for (OpId op : {OpId{1}, OpId{2}}) {
    for (const auto& l : rec.layers[op]) {
      ready[std::make_pair(l.shard, l.segment)] = l.time;
      last_ready = std::max(last_ready, l.time);
    }
  }
  EXPECT_LT(b.start, last_ready);
  const int segments = static_cast<int>(backend.store().at(0, 0).segments.size());
  ASSERT_EQ(passed.size(), static_cast<std::size_t>(2 * segments));
  int waited = 0;
  for (const auto& p : passed) {
    EXPECT_TRUE(p.gated);
    const auto at = ready.find(std::make_pair(p.shard, p.segment));
    ASSERT_NE(at, ready.end());
    EXPECT_GE(p.time, at->second) << "shard " << p.shard << " segment " << p.segment;
    if (p.time > b.start) ++waited;
  }
  EXPECT_GT(waited, 0);
  EXPECT_TRUE(backend.idle());
}

// One model on one GPU behind a slow link (100 us a chunk) with the gated fake execution: load 1
// issued, batch 3 sent behind it at once, both run to their ends. `faults` adds the link's faults.
struct BatchBehindLoad {
  explicit BatchBehindLoad(const std::function<void(HostDeviceOptions&)>& faults)
      : factory(1, optionsWith(faults)), backend(configOf({deployment("a", 1, 1, {0})}, 1, 64 * kMiB), factory, runtimeOptions()) {
    backend.load(loadCmd(backend, 1, 0, 0, 0));
    backend.execute(execCmd(3, 0, {0}, 1));
    pump(backend, rec, [&] { return rec.batches.count(3) != 0 && rec.loads.count(1) != 0; });
  }
  static HostDeviceOptions optionsWith(const std::function<void(HostDeviceOptions&)>& faults) {
    HostDeviceOptions opts;
    opts.chunk_delay = 100 * kNanosPerMicro;
    faults(opts);
    return opts;
  }
  RuntimeOptions runtimeOptions() const {
    RuntimeOptions o = smallOptions();
    o.execution = exec;
    return o;
  }
  std::shared_ptr<GatedFakeExecution> exec = std::make_shared<GatedFakeExecution>(10 * kNanosPerMicro);
  HostDeviceFactory factory;
  RealBackend backend;
  Recorder rec;
};

TEST(RealBackendPipelined, AFailedLoadFailsTheBatchReadingItAndFreesTheShardAfterIt) {
  BatchBehindLoad run([](HostDeviceOptions& opts) {
    opts.fail_path = [](const PathJob&) -> std::optional<std::string> { return std::string("injected link error"); };
  });
  RealBackend& backend = run.backend;
  Recorder& rec = run.rec;
  EXPECT_FALSE(rec.loads[1].first);
  EXPECT_FALSE(rec.batches[3].ok);
  EXPECT_NE(rec.batches[3].error.find("did not all arrive"), std::string::npos) << rec.batches[3].error;
  EXPECT_NE(rec.batches[3].error.find("injected link error"), std::string::npos) << rec.batches[3].error;
  EXPECT_FALSE(backend.residentExtent(0, 0, 0).has_value());
  EXPECT_EQ(backend.pool(0).used(), 0);
  EXPECT_TRUE(backend.idle());
}

TEST(RealBackendPipelined, ABatchOverWeightsThatFailTheChecksumFails) {
  // Every byte arrives, but the device checksum finds one flipped: the last segment opens only
  // after the checksum, so the batch that ran ahead over the arriving layers reports no result.
  BatchBehindLoad run([](HostDeviceOptions& opts) { opts.corrupt_path = [](const PathJob& j) { return j.model == 0; }; });
  RealBackend& backend = run.backend;
  Recorder& rec = run.rec;
  EXPECT_FALSE(rec.loads[1].first);
  EXPECT_NE(rec.loads[1].second.find("integrity"), std::string::npos) << rec.loads[1].second;
  EXPECT_FALSE(rec.batches[3].ok);
  EXPECT_NE(rec.batches[3].error.find("integrity"), std::string::npos) << rec.batches[3].error;
  // Every segment was reported as it arrived; the gate held the last one until the checksum.
  const int segments = static_cast<int>(backend.store().at(0, 0).segments.size());
  EXPECT_EQ(static_cast<int>(rec.layers[1].size()), segments);
  EXPECT_EQ(static_cast<int>(run.exec->passed().size()), segments);
  EXPECT_FALSE(backend.residentExtent(0, 0, 0).has_value());
  EXPECT_EQ(backend.pool(0).used(), 0);
  EXPECT_TRUE(backend.idle());
}

TEST(RealBackendPipelined, EngineStartsColdBatchesBehindTheirLoads) {
  HostDeviceOptions opts;
  opts.chunk_delay = 100 * kNanosPerMicro;
  HostDeviceFactory factory(2, opts);
  std::vector<ModelDeployment> models{deployment("a", 2, 1, {0, 1}, 6), deployment("b", 2, 1, {0, 1}, 6)};
  EngineConfig config = configOf(models, 2, 64 * kMiB);
  config.policy.max_loaded_models = 1;
  config.policy.layer_pipelined = true;
  RuntimeOptions o = smallOptions();
  auto exec = std::make_shared<GatedFakeExecution>(10 * kNanosPerMicro);
  o.execution = exec;
  RealBackend backend(config, factory, o);
  RequestLog log;
  RealtimeDriver driver(backend, config, std::make_unique<AlternatingSource>(std::vector<ModelId>{0, 1}, 8), &log,
                        20 * kNanosPerSecond);
  const DriverStats stats = driver.run();
  EXPECT_EQ(stats.arrivals, 8);
  ASSERT_EQ(log.records.size(), 8u);
  for (const auto& r : log.records) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.waited_for_load);
  }
  EXPECT_EQ(log.loads_ok, 16);  // every request swaps its model in (two shards)
  int gated = 0;
  for (const auto& p : exec->passed()) gated += p.gated ? 1 : 0;
  EXPECT_GT(gated, 0);
  EXPECT_TRUE(backend.idle());
  driver.engine().checkInvariants();
}

// Requests that are all due at once, handed out 1 ms apart (next() takes that long): the driver
// always has an arrival to deliver, as it can have a wake-up.
class AlwaysDueSource : public RequestSource {
 public:
  explicit AlwaysDueSource(int count) : count_(count) {}
  std::optional<Request> next() override {
    if (issued_ >= count_) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    Request r;
    r.id = issued_++;
    r.model = 0;
    r.arrival = 0;
    r.output_tokens = 2;
    return r;
  }
  bool exhausted() const override { return issued_ >= count_; }
  void onRequestDone(const Request&, Nanos) override {}
  int issued() const { return issued_; }

 private:
  int count_;
  int issued_ = 0;
};

TEST(RealtimeDriverHost, StopsAtItsTimeLimitWhileEventsKeepComing) {
  HostDeviceFactory factory(1);
  EngineConfig config = configOf({deployment("a", 1, 1, {0})}, 1, 64 * kMiB);
  RuntimeOptions o = smallOptions();
  o.placeholder_step = 200 * kNanosPerMicro;
  RealBackend backend(config, factory, o);
  auto source = std::make_unique<AlwaysDueSource>(1000);  // a second of arrivals
  const AlwaysDueSource& requests = *source;
  RealtimeDriver driver(backend, config, std::move(source), nullptr, 50 * kNanosPerMilli);
  try {
    driver.run();
    FAIL() << "expected the time limit";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not finished after"), std::string::npos) << e.what();
  }
  // Stopped near its 50 ms, not after delivering every arrival.
  EXPECT_LT(requests.issued(), 500);
}

TEST(RealBackendPipelined, TheDriverWakesTheEngineToStartABatchOnePrefillBeforeItsLoadEnds) {
  // Loads of ~0.3 s (10 ms a chunk) and a stand-in prefill of ~90 ms (15 ms a segment). Model 0
  // is served cold, then resident (its prefill time), then model 1 evicts it, then model 0 again:
  // that batch starts about one prefill before its load is expected to end, which only the
  // engine's wake-up (no other event falls there) can trigger, and reads the last layers as they
  // arrive.
  HostDeviceOptions opts;
  opts.chunk_delay = 10 * kNanosPerMilli;
  HostDeviceFactory factory(1, opts);
  std::vector<ModelDeployment> models{deployment("a", 1, 1, {0}), deployment("b", 1, 1, {0})};
  EngineConfig config = configOf(models, 1, 64 * kMiB);
  config.policy.max_loaded_models = 1;
  config.policy.layer_pipelined = true;
  RuntimeOptions o = smallOptions();
  auto exec = std::make_shared<GatedFakeExecution>(15 * kNanosPerMilli);
  o.execution = exec;
  RealBackend backend(config, factory, o);
  RequestLog log;
  RealtimeDriver driver(backend, config, std::make_unique<AlternatingSource>(std::vector<ModelId>{0, 0, 1, 0}, 4), &log,
                        30 * kNanosPerSecond);
  driver.run();
  ASSERT_EQ(log.records.size(), 4u);
  for (const auto& r : log.records) EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(log.loads_ok, 3);
  const RequestRecord& last = log.records[3];
  ASSERT_EQ(last.request.model, 0);
  EXPECT_TRUE(last.waited_for_load);
  // Not at the load's issue (it waited for the estimate) ...
  EXPECT_GT(last.start - last.request.arrival, 100 * kNanosPerMilli);
  // ... and before the load's end: its passes over model 0 were gated, like the first batch's.
  const int segments = static_cast<int>(backend.store().at(0, 0).segments.size());
  int gated = 0;
  for (const auto& p : exec->passed()) gated += p.model == 0 && p.gated ? 1 : 0;
  EXPECT_EQ(gated, 2 * segments);
  EXPECT_TRUE(backend.idle());
  driver.engine().checkInvariants();
}

}  // namespace
}  // namespace computron::runtime

namespace computron::runtime {
namespace {

using ListSource = fakes::VectorSource;

struct StepLog : RequestLog {
  void onStep(const StepCommand& cmd, const StepResult& r) override {
    ++steps;
    if (!cmd.prefill.empty()) ++prefill_steps;
    max_sequences = std::max(max_sequences, static_cast<int>(cmd.prefill.size() + cmd.decode.size()));
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_GE(r.end, r.start);
  }
  int steps = 0, prefill_steps = 0, max_sequences = 0;
};

// Iteration batching over the real backend's placeholder execution: two models swapping on two
// GPUs (TP 2, or PP 2), multi-token requests in bursts; every request answered once, the
// over-long one refused with its reason as in the simulator, the sessions' steps run on the
// devices.
void iterationBatchingOnTwoGpus(int tp, int pp) {
  HostDeviceFactory factory(2);
  std::vector<ModelDeployment> models{deployment("a", tp, pp, {0, 1}), deployment("b", tp, pp, {0, 1})};
  EngineConfig config = configOf(models, 2, 64 * kMiB);
  config.policy.max_loaded_models = 1;
  config.policy.batching = Batching::kIteration;
  config.policy.session_quantum = 5 * kNanosPerMilli;
  config.policy.max_drain = 5 * kNanosPerMilli;
  RuntimeOptions o = smallOptions();
  o.placeholder_step = 0;
  o.placeholder_step_cost = [](const StepCommand& cmd) { return (cmd.prefill.empty() ? 1 : 2) * kNanosPerMilli; };
  RealBackend backend(config, factory, o);
  ASSERT_TRUE(backend.supportsSteps());
  std::vector<Request> requests;
  for (int i = 0; i < 24; ++i) {
    Request r;
    r.id = i;
    r.model = (i / 4) % 2;  // bursts of four per model
    r.arrival = (i / 4) * 15 * kNanosPerMilli;
    r.prompt_tokens = 8;
    r.output_tokens = 3 + i % 5;
    requests.push_back(r);
  }
  Request too_long;
  too_long.id = 24;
  too_long.model = 0;
  too_long.arrival = 100 * kNanosPerMilli;
  too_long.prompt_tokens = 60;
  too_long.output_tokens = 5;  // 65 > the tiny spec's 64 positions
  requests.push_back(too_long);
  StepLog log;
  RealtimeDriver driver(backend, config, std::make_unique<ListSource>(requests), &log, 20 * kNanosPerSecond);
  driver.run();
  ASSERT_EQ(log.records.size(), requests.size());
  std::set<RequestId> seen;
  for (const auto& r : log.records) {
    EXPECT_TRUE(seen.insert(r.request.id).second) << "request " << r.request.id << " answered twice";
    if (r.request.id == 24) {
      EXPECT_FALSE(r.ok);
      EXPECT_TRUE(r.refused);
      EXPECT_EQ(r.error, "refused: prompt + output tokens (65) exceed the maximum positions of a (64)");
      continue;
    }
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_GE(r.first_token, r.start);
    EXPECT_GE(r.finish, r.first_token);
  }
  EXPECT_EQ(driver.engine().requestsRefused(), 1);
  EXPECT_GT(log.steps, log.prefill_steps);
  EXPECT_GT(log.max_sequences, 1);
  EXPECT_TRUE(backend.idle());
  driver.engine().checkInvariants();
}

TEST(RealBackendHost, IterationBatchingServesEveryRequestOnceAndRefusesOverLongOnes) { iterationBatchingOnTwoGpus(2, 1); }

TEST(RealBackendHost, IterationBatchingWithPipelineStagesServesEveryRequestOnce) { iterationBatchingOnTwoGpus(1, 2); }

}  // namespace
}  // namespace computron::runtime
