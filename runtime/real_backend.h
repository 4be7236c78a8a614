// RealBackend: the core's Backend on real devices (CUDA GPUs, or the host-memory device in
// tests) with a real clock. Commands arrive on the engine's thread and are turned into device
// jobs; devices report through a CompletionQueue, and dispatch() hands the completions back to
// the engine on its own thread. The backend owns the host weight store and one DevicePool per
// GPU, and keeps the per-shard placement (extent, readers, moves) the devices need.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/core/backend.h"
#include "common/core/engine.h"
#include "runtime/completion_queue.h"
#include "runtime/device.h"
#include "common/device_pool.h"
#include "runtime/execution.h"
#include "runtime/host_weight_store.h"
#include "runtime/load_plan.h"

namespace computron::runtime {

// Times of a batch under the placeholder execution, offsets from its start.
struct PlaceholderTimes {
  Nanos first_token = 0;
  std::vector<Nanos> finish;  // per request of the command
};

struct RuntimeOptions {
  std::int64_t chunk_bytes = 64 * kMiB;  // copy size; bench swap's chunk sweep chose it
  bool verify_loads = true;              // device checksum after every load, before it is reported
  // Placeholder execution (the host-memory device, or `--execution placeholder`, which keeps the
  // swap path the only variable): a fixed-cost kernel runs on every GPU of the batch for these
  // times (replay takes them from the cost model). Unset: each output token costs
  // placeholder_step. Real execution (cuda/model_execution.*) ignores both.
  std::function<PlaceholderTimes(const ExecuteCommand&)> placeholder_cost;
  // Placeholder execution of iteration batching: the time of one step (unset: placeholder_step).
  std::function<Nanos(const StepCommand&)> placeholder_step_cost;
  Nanos placeholder_step = kNanosPerMilli;
  std::int64_t granule = DevicePool::kDefaultGranule;
  HostStoreOptions host;                 // pinner comes from the device factory
  // Real models: batches run on this (runtime/execution.h) instead of the PLACEHOLDER kernel,
  // the host store holds its weights, and a batch may start on a model still loading (the
  // engine's policy.layer_pipelined), waiting layer by layer for its bytes.
  std::shared_ptr<ModelExecution> execution;
};

// A decoder layer (or the embeddings / head segment) of a loading shard is on the GPU.
struct LayerReady {
  OpId op = 0;
  ModelId model = 0;
  int shard = 0;
  GpuId gpu = 0;
  int segment = 0;  // index into the shard's segments
  int layer = 0;    // -1 embeddings, num_layers head, else decoder layer
  Nanos time = 0;
};

// What a finished load looked like, for benchmarks and timelines.
struct LoadRecord {
  LoadCommand cmd;
  Nanos issued = 0;     // load() called
  Nanos started = 0;    // copies submitted (later than issued when the load waited for room)
  Nanos copy_done = 0;  // every path finished
  Nanos done = 0;       // reported to the engine (after the checksum when verify_loads)
  bool ok = true;
  bool verified = false;
  std::string error;
  struct Path {
    GpuId via = 0;
    PathKind kind = PathKind::kDirect;
    std::int64_t bytes = 0;
    Nanos end = 0;
  };
  std::vector<Path> paths;
};

// Receives completions on the driver's thread. EngineListener forwards them to an Engine.
class BackendListener {
 public:
  virtual ~BackendListener() = default;
  virtual void loadDone(OpId op, bool ok, const std::string& error) = 0;
  virtual void evictDone(OpId op) = 0;
  virtual void batchDone(const BatchResult& result) = 0;
  virtual void stepDone(const StepResult& /*result*/) {}
  virtual void layerReady(const LayerReady& /*ready*/) {}
  // A GPU is gone for good (the rank that owns it died or stopped answering), with the reason.
  virtual void gpuLost(GpuId /*gpu*/, const std::string& /*reason*/) {}
};

class EngineListener : public BackendListener {
 public:
  explicit EngineListener(Engine& engine) : engine_(engine) {}
  void loadDone(OpId op, bool ok, const std::string& error) override { engine_.onLoadDone(op, ok, error); }
  void evictDone(OpId op) override { engine_.onEvictDone(op); }
  void batchDone(const BatchResult& result) override { engine_.onBatchDone(result); }
  void stepDone(const StepResult& result) override { engine_.onStepDone(result); }
  void gpuLost(GpuId gpu, const std::string& reason) override { engine_.onGpuLost(gpu, reason); }

 private:
  Engine& engine_;
};

class RealBackend final : public Backend {
 public:
  // Registers every model of `config`: refuses (ConfigError) a shard larger than its GPU's
  // budget or a placement on a GPU the factory does not have, refuses (HostMemoryError) models
  // that do not fit in host memory, then builds the host store and one device per GPU.
  RealBackend(const EngineConfig& config, DeviceFactory& factory, RuntimeOptions options = {});
  ~RealBackend() override;
  RealBackend(const RealBackend&) = delete;
  RealBackend& operator=(const RealBackend&) = delete;

  void load(const LoadCommand& cmd) override;
  void evict(const EvictCommand& cmd) override;
  void execute(const ExecuteCommand& cmd) override;
  // Iteration batching: on the placeholder execution, and on a real execution that runs steps
  // (ModelExecution::supportsSteps; the engine refuses the scenario otherwise).
  bool supportsSteps() const override { return options_.execution == nullptr || options_.execution->supportsSteps(); }
  void step(const StepCommand& cmd) override;

  // Blocks until a device reports or `deadline` passes, then delivers everything reported.
  // Returns the number of completions delivered to `listener`.
  int dispatch(std::chrono::steady_clock::time_point deadline, BackendListener& listener);
  int dispatch(Nanos deadline, BackendListener& listener) { return dispatch(clock_.at(deadline), listener); }
  // Makes a dispatch() that blocks (or the next one) return at once; callable from any thread.
  void wakeDispatch() { queue_.wake(); }
  // Nothing in flight, deferred or undelivered.
  bool idle() const;

  const SteadyClock& clock() const { return clock_; }
  // Restarts the clock at 0; only while idle().
  void restartClock();
  std::string deviceKind() const { return device_kind_; }
  const HostWeightStore& store() const { return *store_; }
  // The host copy of a model's shard. Deployments with the same `weights` (and split) share one.
  const HostShard& hostShard(ModelId model, int shard) const;
  int numGpus() const { return static_cast<int>(devices_.size()); }
  Device& device(GpuId gpu) { return *devices_.at(static_cast<std::size_t>(gpu)); }
  const DevicePool& pool(GpuId gpu) const { return pools_.at(static_cast<std::size_t>(gpu)); }
  // Why GPU g was lost (its rank died or stopped answering); empty while it serves.
  const std::string& lostReason(GpuId gpu) const { return lost_.at(static_cast<std::size_t>(gpu)); }
  std::optional<Extent> residentExtent(ModelId model, int shard, GpuId gpu) const;
  std::vector<LoadRecord> takeLoadRecords();
  std::int64_t compactions() const { return compactions_; }
  // Writes each command as it arrives, one line, no times (replay --command-log): two runs that
  // made the same decisions write the same file. Null: off.
  void setCommandLog(std::ostream* log) { command_log_ = log; }
  const RuntimeOptions& options() const { return options_; }

  // The layout the backend uses for shard `shard` of a deployment.
  static ShardLayout shardLayout(const ModelDeployment& model, int shard);
  // Checks the registration rules alone (used by the constructor; ConfigError on failure).
  static void validate(const EngineConfig& config, int device_count);
  // The host store's shards for `config` (twins share one: store_model[m] is the model whose
  // shards model m uses), each held when `holds` says so of a GPU that shard is placed on. A rank
  // of a multi-process run builds its part of the store from the same plan (runtime/mpi/).
  struct StorePlan {
    std::vector<ShardRequest> requests;
    std::vector<ModelId> store_model;
  };
  static StorePlan planStore(const EngineConfig& config, const std::function<bool(GpuId)>& holds);
  // The pool size of each GPU (of the first `gpus`) that has a weight budget.
  static std::vector<std::int64_t> poolRegions(const EngineConfig& config, std::int64_t granule, int gpus);

 private:
  using Key = std::tuple<ModelId, int, GpuId>;
  struct Placement {
    Extent extent;
    int readers = 0;       // batches and from-device copies reading it
    bool loading = true;
    bool evicted = false;  // released when the last reader finishes
    bool moving = false;
    OpId loading_op = 0;   // the load filling it while `loading`
  };
  struct LoadOp {
    LoadCommand cmd;
    LoadPlan plan;
    std::vector<int> coverage;
    int open_paths = 0;
    int reported = -1;  // segments reported ready
    bool failed = false;
    std::string error;
    std::vector<Key> sources;
    LoadRecord record;
    std::shared_ptr<SegmentGate> gate;  // made when a batch starts on the shard before it is done
  };
  struct BatchOp {
    ExecuteCommand cmd;
    int open_parts = 0;
    std::vector<Key> held;
    std::vector<DeviceEvent> parts;
    std::vector<int> request_phase;  // request i finishes with phase request_phase[i]
    bool is_step = false;            // a session's step (StepCommand), not a whole batch
    std::int64_t step = 0;
    bool ok = true;
    std::string error;
  };

  void pushInternal(DeviceEvent ev);
  void refuseLoad(const LoadCommand& cmd, const std::string& error);
  // Starts `cmd` if its GPU has room now; false when it must wait.
  bool tryStartLoad(const LoadCommand& cmd, Nanos issued);
  // `step`: the command is a session's step (placeholder execution, one phase of `step_ns`).
  bool tryStartExecute(const ExecuteCommand& cmd, const StepCommand* step = nullptr);
  void startRealExecute(const ExecuteCommand& cmd, const std::vector<Key>& keys, const StepCommand* step = nullptr);
  static ExecuteCommand stepAsBatch(const StepCommand& cmd);
  void retryDeferred();
  void handle(DeviceEvent& ev, BackendListener& listener, int& delivered);
  // `error` by value: callers pass the op's own message, which this moves out of the table.
  void finishLoad(OpId op, bool ok, std::string error, Nanos when, BackendListener& listener);
  void dropReader(const Key& key);

  RuntimeOptions options_;
  EngineConfig config_;
  SteadyClock clock_;
  std::string device_kind_;
  std::unique_ptr<HostWeightStore> store_;
  CompletionQueue queue_;
  std::vector<DevicePool> pools_;
  std::vector<std::unique_ptr<Device>> devices_;

  std::map<Key, Placement> placements_;
  std::map<OpId, LoadOp> loads_;
  std::map<BatchId, BatchOp> batches_;
  std::deque<std::pair<LoadCommand, Nanos>> deferred_loads_;
  // Shards that a deferred load's compaction must move but that batches still read: their next
  // batches wait, so the load runs as soon as the batches running now end, instead of after every
  // batch the engine keeps issuing on them (rebuilt by each retry of the deferred loads).
  std::set<Key> in_the_way_;
  std::deque<ExecuteCommand> deferred_execs_;
  std::deque<StepCommand> deferred_steps_;
  std::map<OpId, std::pair<GpuId, std::vector<Key>>> relocations_;
  std::vector<bool> compacting_;
  std::vector<std::string> lost_;  // per GPU: why it was lost; empty while it serves
  std::vector<LoadRecord> records_;
  std::vector<ModelId> store_model_;  // model -> the model whose host shards it uses
  std::int64_t undelivered_internal_ = 0;
  std::ostream* command_log_ = nullptr;
  OpId next_token_ = 1;
  std::int64_t compactions_ = 0;
};

}  // namespace computron::runtime
