// The scheduling core: per-model queues, batching, per-shard residency, byte-accurate GPU memory,
// and policies that choose what to serve, what to evict and what to prefetch. It never reads a
// clock (time comes from the injected Clock), never starts a thread and never includes CUDA, so
// the simulator and the real runtime drive the same code.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/core/backend.h"
#include "common/model_spec.h"
#include "common/types.h"
#include "common/workload.h"

namespace computron {

enum class Residency { kOffloaded, kLoading, kResident, kEvicting };
std::string residencyName(Residency r);

// One model as deployed: its spec, parallel split and the GPUs its shards live on.
struct ModelDeployment {
  std::string name;
  ModelSpec spec;
  int tp = 1;
  int pp = 1;
  std::vector<GpuId> gpus;  // shard i (= pp_rank * tp + tp_rank) on gpus[i]; size tp * pp
  int max_batch = 8;
  Nanos slo = 0;  // latency objective; 0 = none
  // Simulator only: a fixed time per batch instead of the cost model (queueing experiments).
  Nanos fixed_batch_time = 0;
  int numShards() const { return tp * pp; }
};

struct PolicyConfig {
  std::string name = "computron";  // the policy set, see policy.h
  int max_loaded_models = 0;       // cap on loaded models (computron); 0 = no cap
  std::string eviction = "lru";
  std::string queue = "fcfs";
};

struct EngineConfig {
  std::vector<ModelDeployment> models;
  std::vector<std::int64_t> gpu_weight_budget;  // per GPU, bytes
  PolicyConfig policy;
};

struct RequestRecord {
  Request request;
  BatchId batch = -1;
  Nanos start = 0;        // batch start
  Nanos first_token = 0;  // end of prefill
  Nanos finish = 0;       // last token
  bool waited_for_load = false;  // its model was not resident when it arrived
  bool ok = true;
  std::string error;
};

// Receives everything that happens, with times from the engine's clock. Sinks for metrics,
// request logs and timelines implement this; the default does nothing.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void onRequestDone(const RequestRecord& /*record*/) {}
  virtual void onLoad(const LoadCommand& /*cmd*/, Nanos /*start*/, Nanos /*end*/, bool /*ok*/) {}
  virtual void onEvict(const EvictCommand& /*cmd*/, Nanos /*start*/, Nanos /*end*/) {}
  virtual void onBatch(const ExecuteCommand& /*cmd*/, const BatchResult& /*result*/) {}
};

class EvictionPolicy;
class QueuePolicy;

struct QueuedRequest {
  Request request;
  bool waited_for_load = false;
};

// Scheduler-visible state of one model, shared with policies.
struct ModelRuntimeState {
  Residency residency = Residency::kOffloaded;
  std::deque<QueuedRequest> queue;
  std::vector<Residency> shard_state;
  int pending_ops = 0;      // loads or evictions in flight
  bool load_failed = false; // a shard load of the current attempt failed
  std::string load_error;
  bool running = false;     // a batch is executing
  bool served_since_load = false;  // ran a batch since its last load (until then it is not evicted)
  Nanos last_used = -1;     // last batch start or load finish (LRU key)
  std::int64_t accesses = 0;  // requests that arrived for it
  std::int64_t loads = 0;     // times it was loaded (swaps in)
};

class Engine {
 public:
  Engine(EngineConfig config, Backend& backend, const Clock& clock, EngineObserver* observer = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Events, each followed by a scheduling pass.
  void onArrival(const Request& request);
  void onLoadDone(OpId op, bool ok = true, const std::string& error = {});
  void onEvictDone(OpId op);
  void onBatchDone(const BatchResult& result);

  // Introspection (tests, outputs).
  const EngineConfig& config() const { return config_; }
  const ModelRuntimeState& model(ModelId m) const { return models_.at(static_cast<std::size_t>(m)); }
  std::int64_t gpuBytesUsed(GpuId g) const { return gpu_used_.at(static_cast<std::size_t>(g)); }
  bool gpuBusy(GpuId g) const { return gpu_busy_.at(static_cast<std::size_t>(g)); }
  std::int64_t requestsInFlight() const { return in_flight_requests_; }
  std::int64_t requestsCompleted() const { return completed_requests_; }
  int loadedModels() const;
  // Throws std::logic_error when an invariant is broken (memory over budget, a running model not
  // resident, a GPU running two batches...). Cheap enough to call after every event in tests.
  void checkInvariants() const;

 private:
  struct PendingOp {
    bool is_load = true;
    LoadCommand load;
    EvictCommand evict;
    Nanos start = 0;
  };
  struct RunningBatch {
    ExecuteCommand cmd;
    std::vector<bool> waited;  // per request: its model was not resident when it arrived
  };

  void schedule();
  bool tryRunBatch(ModelId m);
  // Makes room for and starts loading `m`. Returns false while it must wait; then the GPUs it
  // needs are claimed for the rest of the pass and the models it plans to evict are doomed.
  bool tryLoad(ModelId m);
  const std::vector<std::int64_t>& bytesNeeded(ModelId m) const { return gpu_bytes_[static_cast<std::size_t>(m)]; }
  std::int64_t shardBytes(ModelId m, int shard) const {
    return shard_bytes_[static_cast<std::size_t>(m)][static_cast<std::size_t>(shard)];
  }
  void startEvict(ModelId m);
  void startLoad(ModelId m);
  void failQueued(ModelId m, const std::string& error);
  void finishRequest(const RequestRecord& record);

  EngineConfig config_;
  Backend& backend_;
  const Clock& clock_;
  EngineObserver* observer_;
  std::unique_ptr<EvictionPolicy> eviction_;
  std::unique_ptr<QueuePolicy> queue_policy_;
  std::vector<ModelRuntimeState> models_;
  std::vector<std::vector<std::int64_t>> shard_bytes_;  // per model, per shard
  std::vector<std::vector<std::int64_t>> gpu_bytes_;    // per model, per GPU: bytes it needs there
  std::vector<std::vector<ShardLayout>> layouts_;      // per model, per shard
  std::vector<std::int64_t> gpu_used_;
  std::vector<bool> gpu_busy_;
  // Per scheduling pass: GPUs an earlier (higher-priority) blocked load waits for, and models
  // planned for eviction, which start no new batch.
  std::vector<bool> gpu_claimed_;
  std::vector<bool> doomed_;
  bool count_cap_claimed_ = false;
  std::unordered_map<OpId, PendingOp> ops_;
  std::unordered_map<BatchId, RunningBatch> batches_;
  OpId next_op_ = 1;
  BatchId next_batch_ = 1;
  std::int64_t in_flight_requests_ = 0;
  std::int64_t completed_requests_ = 0;
};

}  // namespace computron
