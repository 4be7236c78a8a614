// The discrete-event simulator: implements the core's Backend and Clock over a model of the
// cluster (links shared fairly, NVLink, a compute cost model), feeds the engine arrivals from a
// request stream, and runs until every request is served. No global state: a test can build many.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>

#include "common/core/engine.h"
#include "common/scenario/scenario.h"
#include "common/cost_model.h"
#include "common/device_pool.h"
#include "sim/event_queue.h"
#include "sim/link_model.h"

namespace computron::sim {

// Where a run stands, for a progress display.
struct SimProgress {
  Nanos now = 0;                // simulated time
  std::uint64_t events = 0;     // events handled so far
  std::int64_t arrivals = 0;    // requests arrived
  std::int64_t completed = 0;   // requests finished (served or failed)
  bool finished = false;        // the last call, when the run has ended
};

struct SimOptions {
  bool check_invariants = false;  // run Engine::checkInvariants after every event (tests)
  // Called after every `progress_every_events` events and once more when the run ends; it only
  // observes, so no simulated result depends on it or on its interval.
  std::function<void(const SimProgress&)> progress;
  std::uint64_t progress_every_events = 4096;
};

struct SimStats {
  std::uint64_t events = 0;
  std::int64_t arrivals = 0;
  Nanos end_time = 0;
};

class Simulation final : public Backend, public Clock, public EngineObserver {
 public:
  // `observer` receives every engine report (may be null). The source is consumed.
  Simulation(const ClusterSpec& cluster, EngineConfig engine_config, std::unique_ptr<RequestSource> source,
             EngineObserver* observer, SimOptions options = {});
  ~Simulation() override;

  SimStats run();
  const Engine& engine() const { return engine_; }
  // Per model: which source timed its batches, how many batches, and how many of them had a
  // shape outside the profile's measured grid (summary.json's "timing" with a profile).
  nlohmann::json timingReport() const;

  // Clock
  Nanos now() const override { return now_; }
  // Backend
  void load(const LoadCommand& cmd) override;
  void evict(const EvictCommand& cmd) override;
  void execute(const ExecuteCommand& cmd) override;
  bool supportsSteps() const override { return true; }
  void step(const StepCommand& cmd) override;
  // EngineObserver: forwards to the user's observer; completions also feed closed-loop sources.
  void onRequestDone(const RequestRecord& record) override;
  void onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) override;
  void onEvict(const EvictCommand& cmd, Nanos start, Nanos end) override;
  void onBatch(const ExecuteCommand& cmd, const BatchResult& result) override;
  void onStep(const StepCommand& cmd, const StepResult& result) override;
  void onTokenGaps(ModelId m, Nanos gap, std::int64_t count) override;

 private:
  void pullNextArrival();
  void scheduleLinkCheck();
  void handleLinkCheck(std::uint64_t generation);

  const ClusterSpec& cluster_;
  SimOptions options_;
  Nanos now_ = 0;
  EventQueue events_;
  LinkModel links_;
  std::unique_ptr<CostModel> cost_;
  Nanos wake_;  // the profile's realtime wake-up lateness: arrivals reach the engine this late
  std::unique_ptr<RequestSource> source_;
  EngineObserver* observer_;
  Engine engine_;
  std::optional<Request> next_arrival_;
  std::unordered_map<FlowId, OpId> flow_load_;
  std::unordered_map<OpId, int> load_parts_left_;
  // ClusterSpec::host_loads_in_order: per GPU, the direct part copying now (0: none) and the
  // parts queued behind it, started in issue order as each one completes.
  struct QueuedPart {
    OpId op = 0;
    double bytes = 0;
    std::vector<int> path;
    Nanos latency = 0;
  };
  std::vector<FlowId> host_busy_;
  std::vector<std::deque<QueuedPart>> host_queue_;
  std::unordered_map<FlowId, GpuId> host_flow_gpu_;
  FlowId startPart(OpId op, double bytes, std::vector<int> path, Nanos latency);
  std::unordered_map<BatchId, BatchResult> batches_;
  std::unordered_map<BatchId, StepResult> steps_;  // the step in flight of each session
  // Layer-pipelined batches started while their model loads: timed when its last shard arrives.
  struct ShardLoad {
    ModelId model = 0;
    int shard = 0;
    Nanos start = 0;
    GpuId gpu = 0;
  };
  // A batch held back by other models' loads on its GPUs (ClusterSpec::batches_wait_for_loads).
  struct LoadBlockedBatch {
    ExecuteCommand cmd;
    std::vector<OpId> loads;  // still copying
  };
  std::vector<LoadBlockedBatch> load_blocked_;
  void releaseLoadBlocked(OpId finished);
  struct GatedBatch {
    ExecuteCommand cmd;
    Nanos start = 0;
  };
  void timeBatch(const ExecuteCommand& cmd, Nanos start, const std::vector<std::pair<Nanos, Nanos>>* arrivals);
  void releaseGated(ModelId model);
  std::unordered_map<OpId, ShardLoad> load_info_;
  // Per model, per shard: the (start, end) of its latest completed load.
  std::unordered_map<ModelId, std::vector<std::pair<Nanos, Nanos>>> last_loads_;
  std::set<Nanos> wakes_;  // times of pending kWake events
  std::vector<GatedBatch> gated_;
  std::uint64_t link_generation_ = 0;
  std::vector<bool> fresh_;  // per model: loaded since its last batch started
  std::vector<Nanos> gpu_free_;  // per GPU: when its last batch ended
  // Per GPU: when its current stretch of work began (the power model: a stretch ends when the GPU
  // has run no prefill for the cost model's powerRecover(): idle, or decoding, which is bound by
  // memory bandwidth and lets the GPU cool as idling does), and when its last prefill ended.
  std::vector<Nanos> busy_since_;
  std::vector<Nanos> heat_end_;
  // How long `gpus` have worked before `start` without resting `recover` (0 when recover is 0).
  Nanos busyBefore(const std::vector<GpuId>& gpus, Nanos start, Nanos recover);
  std::vector<std::int64_t> batches_timed_, batches_outside_;
  // Decode graphs (a profile's decode_graph_ms, CostModel::decodeGraphCapture): the runtime
  // captures one per decode batch size and captures them again when a shard of the model lands at
  // another address of its GPU's weight pool. The pools are mirrored here (the runtime's
  // DevicePool, best fit, same regions) only when some model has a capture cost.
  std::vector<bool> graph_tracked_;         // per model: the cost model has a capture cost for it
  std::vector<std::set<int>> graph_sizes_;  // per model: batch sizes with a graph
  std::vector<std::int64_t> graph_captures_;  // per model: captures timed
  std::vector<DevicePool> pools_;           // per GPU
  std::map<std::pair<ModelId, int>, std::pair<GpuId, Extent>> extents_;  // (model, shard): where it lies
  std::map<std::pair<ModelId, int>, std::int64_t> last_offset_;          // (model, shard): its last offset
  // The runtime's compaction of a fragmented pool (RealBackend::tryStartLoad): it moves only shards
  // that no batch reads and that are not loading. A load whose room needs such a shard moved waits
  // (and the shard's next batches wait behind it) until the shard is free, then for the
  // device-local copy of the moved bytes (read and written at the GPU's HBM bandwidth).
  std::vector<Nanos> busy_until_;  // per model: when its batch or step in flight ends
  std::vector<Nanos> held_until_;  // per model: its shards move until then; its batches start no earlier
  std::unordered_map<OpId, LoadCommand> waiting_room_;  // placed loads whose copies start at a kLoadStart
  std::deque<LoadCommand> room_waits_;                 // loads waiting for shards in the way to be free
  std::set<ModelId> in_the_way_;                       // models whose shards those loads must move
  std::vector<ExecuteCommand> held_execs_;             // batches of those models, started after the moves
  std::vector<StepCommand> held_steps_;
  // Places the shard in its GPU's pool mirror and starts (or schedules) its copy; false when it
  // must wait for shards in the way (then in room_waits_).
  bool tryRoom(const LoadCommand& cmd);
  void retryRoom();  // after every batch, step, load or eviction that ends
  bool shardLoading(ModelId model, int shard) const;
  void startLoad(const LoadCommand& cmd);
  void releaseShard(const EvictCommand& cmd);
  // The capture time of a decode step of `size` sequences of model `m` (0 when its graph exists),
  // recording the graph.
  Nanos graphCapture(std::size_t m, int size);
  // A request-level batch's decode runs at each size from all its requests down to its longest
  // alone (finished sequences leave): each size without a graph adds a capture to that step and
  // every later one.
  void addGraphCaptures(std::size_t m, const std::vector<Request>& requests, BatchTimes& times);
  SimStats stats_;
  std::int64_t completed_ = 0;  // requests reported done, for progress only
};

// Runs a scenario: builds the workload, runs the simulation with a RunRecorder, writes the
// outputs and returns summary.json's content.
nlohmann::json runScenario(const Scenario& scenario, std::ostream* table_out, SimOptions options = {});

}  // namespace computron::sim
