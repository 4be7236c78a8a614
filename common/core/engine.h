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
#include "common/core/policy.h"
#include "common/deployment.h"
#include "common/model_spec.h"
#include "common/types.h"
#include "common/workload.h"

namespace computron {

enum class Residency { kOffloaded, kLoading, kResident, kEvicting };

// How requests are grouped into work (docs/policies.md "Batching").
enum class Batching {
  kRequest,    // the seed's: a batch runs prefill, then decode steps until its longest request ends
  kIteration,  // sequences join and leave a model's session between steps, within the KV budget
};
std::string residencyName(Residency r);

// The policy choices. Each is a handle to a registered policy (policy.h, registry.h), made from
// its name when the scenario is read; docs/policies.md lists what each registry holds.
struct PolicyConfig {
  PolicySetChoice name{"computron"};  // the policy set; applyPolicySet fills the choices below
  int max_loaded_models = 0;          // cap on loaded models (computron); 0 = no cap
  EvictionChoice eviction{"lru"};
  QueueChoice queue{"fcfs"};
  PrefetchChoice prefetch{"none"};
  RoutingChoice routing{"direct"};
  bool admission = false;             // reject requests that can no longer meet their SLO
  // Loads one at a time per host link: a load waits while any link it would use carries another
  // (first come, first loaded) instead of sharing the links, so the first model is ready sooner.
  bool serial_loads = false;
  // Layer-pipelined execution: a model's queued requests start as soon as its load is issued; the
  // backend runs each layer when that layer's bytes have arrived, so a cold request finishes in
  // little more than the load time instead of load time + batch time.
  bool layer_pipelined = false;
  Nanos lfu_half_life = 60 * kNanosPerSecond;  // lfu: an access counts half after this long
  Nanos rate_window = 10 * kNanosPerSecond;    // prefetch rate: EWMA time constant
  // Models pinned resident: never an eviction candidate of any policy (nor of prefetch, nor of an
  // operator's evictOnDemand), loaded by the engine's first scheduling pass (Engine::start) and
  // kept. The scenario parser checks they fit together and leave room for every other model.
  std::vector<ModelId> pinned;
  Batching batching = Batching::kRequest;
  // Iteration batching: once another model waits for a session's GPUs, the session admits no more
  // sequences; those in flight that have not ended after this long are preempted and requeued
  // (their tokens so far recomputed by a prefill when they rejoin).
  // The default is long: a preempted sequence recomputes its prompt and tokens, which on GPUs
  // costs more than waiting (bench/results/iteration-h200-2026-12-01.md).
  Nanos max_drain = 30 * kNanosPerSecond;
  // Iteration batching: a session keeps admitting for at least this long after it starts, even
  // while other models wait for its GPUs (its drain starts then).
  Nanos session_quantum = 2 * kNanosPerSecond;

  // An eviction or prefetch policy reads the future (EngineConfig::future must be given).
  bool needsFuture() const;
};

class ArrivalOracle;

struct EngineConfig {
  std::vector<ModelDeployment> models;
  std::vector<std::int64_t> gpu_weight_budget;  // per GPU, bytes
  PolicyConfig policy;
  // Per GPU host-link bandwidth, bytes/s: reload-time estimates (GDSF, deadlines) and multi-path
  // splits. Empty: every link counts as 1 GB/s.
  std::vector<double> gpu_link_bandwidth;
  bool nvlink = false;  // GPUs of one node are NVLink peers: shards may be copied from a resident twin
  // Per GPU: the node it sits in (empty: all in one node), and each GPU's share of its node's NIC
  // in bytes/s (routes from another node's host memory).
  std::vector<int> gpu_node;
  double nic_share_bandwidth = 0;
  // Per GPU: bytes of KV cache a batch or session may hold there (empty: no limit). A request
  // whose prompt + output tokens need more than this alone is refused on arrival.
  std::vector<std::int64_t> gpu_kv_budget;
  // The future, for the offline policies (belady eviction, oracle prefetch); null otherwise.
  std::shared_ptr<const ArrivalOracle> future;
};

struct RequestRecord {
  Request request;
  BatchId batch = -1;
  Nanos start = 0;        // batch start
  Nanos first_token = 0;  // end of prefill
  Nanos finish = 0;       // last token
  bool waited_for_load = false;  // its model was not resident when it arrived
  bool ok = true;
  bool rejected = false;  // refused by admission control: it could no longer meet its SLO (ok is false)
  // Refused on arrival, never queued (ok is false, error says why): its prompt + output tokens
  // exceed the model's maximum positions, or its KV cache alone exceeds the KV budget.
  bool refused = false;
  std::int32_t preemptions = 0;  // iteration batching: times it was preempted and requeued
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
  // One step of an iteration-level session ended.
  virtual void onStep(const StepCommand& /*cmd*/, const StepResult& /*result*/) {}
  // Output tokens of served requests of model m came `gap` after the request's previous token,
  // `count` of them (inter-token latency). Request-level batches report each served request's
  // decode time spread evenly over its tokens after the first, once, when the batch ends;
  // iteration-level batching reports every decoding sequence's gap at every step.
  virtual void onTokenGaps(ModelId /*m*/, Nanos /*gap*/, std::int64_t /*count*/) {}
};

struct QueuedRequest {
  Request request;
  bool waited_for_load = false;
  // Iteration batching, a request preempted from a session: the tokens it made before (a
  // rejoin recomputes them), its first and last tokens' times and its first step's start.
  std::int32_t generated = 0;
  Nanos first_token = -1;
  Nanos start = -1;
  Nanos last_token = -1;
  std::int32_t preemptions = 0;
};

// Scheduler-visible state of one model, shared with policies.
struct ModelRuntimeState {
  Residency residency = Residency::kOffloaded;
  std::deque<QueuedRequest> queue;
  std::vector<Residency> shard_state;
  int pending_ops = 0;      // loads or evictions in flight
  bool load_failed = false; // a shard load of the current attempt failed
  std::string load_error;
  bool running = false;     // a batch is executing (with layer_pipelined, possibly while loading)
  bool evict_when_idle = false;  // its load failed under a running pipelined batch: evict after it
  bool served_since_load = false;  // ran a batch since its last load (until then it is not evicted)
  Nanos last_used = -1;     // last batch start or load finish (LRU key)
  std::int64_t loads = 0;     // times it was loaded (swaps in)
  // Policy keys, kept up to date by the engine so policies stay stateless.
  double lfu_count = 0;        // accesses, halved every lfu_half_life (as of lfu_time)
  Nanos lfu_time = 0;
  double rate_count = 0;       // EWMA arrival count (as of rate_time); rate = count / window
  Nanos rate_time = 0;
  std::int64_t hits_since_load = 0;  // GDSF frequency: accesses since its last load began
  double gdsf_priority = 0;    // GDSF H = inflation + frequency * reload cost / size
  Nanos min_batch_time = 0;    // shortest batch seen so far (0 = none yet): deadline estimates
  Nanos min_prefill_time = 0;  // shortest first token of a batch on the resident model (0 = none yet)
  // layer_pipelined: when a batch may start behind the current load (-1: no load), and whether
  // that time has been reached (the drivers' wake-up for it is then spent).
  Nanos pipelined_start = -1;
  Nanos load_issued = 0;     // when its current (or last) load was issued
  Nanos last_load_time = 0;  // issue to done of its last successful load
  bool pipelined_due = false;
  // Iteration batching: preempted from its session, it comes last in scheduling passes while
  // another model waits for its GPUs and nothing else has started there since (-1: not yielding).
  std::int64_t yield_epoch = -1;
  // Iteration batching: sequences that ended (last token, stopped, or failed) in a session that
  // ended before naming them to the backend; named in the model's next step (StepCommand::retired).
  std::vector<RequestId> retired_unsent;
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
  void onStepDone(const StepResult& result);
  // layer_pipelined: the time at which the engine wants to run its scheduling pass again (a batch
  // due to start behind a load), if any; possibly already past. Drivers call onTimer() then.
  std::optional<Nanos> nextWake() const;
  void onTimer();
  // An operator's eviction (serve's POST /v1/models/NAME/evict): starts evicting model m now,
  // followed by a scheduling pass, and returns nothing; or returns why it cannot, changing
  // nothing: not resident (offloaded, loading or already evicting), running a batch, requests
  // queued (they would only load it again), or the source of a copy in flight.
  std::optional<std::string> evictOnDemand(ModelId m);
  // Starts loading the pinned models (PolicyConfig::pinned) that are offloaded and not yet tried.
  // Each is tried once: the first scheduling pass calls this, so drivers need not, but a driver
  // that wants them loaded before the first request calls it once its backend takes commands. A
  // pinned model whose load failed is loaded again on demand, like any other, and then kept.
  void start();
  bool pinned(ModelId m) const { return pinned_.at(static_cast<std::size_t>(m)) != 0; }
  // A client gave up on request `id` of model m: if it is still queued, it leaves the queue and
  // ends failed with the error "cancelled" (reported to the observer), followed by a scheduling
  // pass, and the result is true; a request already in a batch, done or unknown is left alone.
  bool cancelQueued(ModelId m, RequestId id);
  // GPU g is gone for good (the runtime's rank for it died or stopped answering), followed by a
  // scheduling pass. Every model with a shard on g becomes unavailable: its queued requests end
  // failed now, and so does each later arrival for it (ok false, not refused); it is never loaded
  // again, and no load is routed through g (helper links, twin copies). Its memory is released:
  // evicted now if resident and idle, after its batch or session if one runs (the backend fails
  // it), through the failed-load path if loading (the backend fails the loads on g). The backend
  // completes evictions of shards on g at once. Calling it again for the same GPU does nothing.
  void onGpuLost(GpuId g, const std::string& reason);
  bool gpuLost(GpuId g) const { return gpu_lost_.at(static_cast<std::size_t>(g)) != 0; }
  // Whether model m can still be served; if not, why (the error its requests end with).
  bool modelAvailable(ModelId m) const { return unavailable_.at(static_cast<std::size_t>(m)).empty(); }
  const std::string& unavailableReason(ModelId m) const { return unavailable_.at(static_cast<std::size_t>(m)); }

  // Introspection (tests, outputs).
  const EngineConfig& config() const { return config_; }
  const ModelRuntimeState& model(ModelId m) const { return models_.at(static_cast<std::size_t>(m)); }
  std::int64_t gpuBytesUsed(GpuId g) const { return gpu_used_.at(static_cast<std::size_t>(g)); }
  bool gpuBusy(GpuId g) const { return gpu_busy_.at(static_cast<std::size_t>(g)); }
  std::int64_t requestsInFlight() const { return in_flight_requests_; }
  std::int64_t requestsCompleted() const { return completed_requests_; }
  int loadedModels() const { return loaded_models_; }
  Nanos now() const { return clock_.now(); }
  // Estimated time to load model m over its GPUs' host links (the slowest shard), in seconds.
  double reloadSeconds(ModelId m) const { return reload_seconds_.at(static_cast<std::size_t>(m)); }
  std::int64_t modelBytes(ModelId m) const { return model_bytes_.at(static_cast<std::size_t>(m)); }
  // Decayed access count (lfu) and predicted arrival rate in requests/s (prefetch), as of now.
  double lfuScore(ModelId m) const;
  double arrivalRate(ModelId m) const;
  // Deadline of a request of model m that arrived at `arrival` (no SLO: far in the future).
  Nanos deadline(ModelId m, Nanos arrival) const;
  const ArrivalOracle* future() const { return config_.future.get(); }
  // For routing policies: load parts in flight over GPU g's host link, that link's bandwidth in
  // bytes/s (1 GB/s when unknown), the bytes of one shard, and a twin to copy a shard from: a
  // resident model with the same weights and split, not planned for eviction, whose shard `shard`
  // lies on a GPU other than `target` (-1: none, or no NVLink). A routing policy sends no bytes
  // via a lost GPU (gpuLost); twinHolding never names a twin on one.
  int hostLinkLoads(GpuId g) const { return link_loads_.at(static_cast<std::size_t>(g)); }
  double hostLinkBandwidth(GpuId g) const;
  std::int64_t shardBytes(ModelId m, int shard) const {
    return shard_bytes_[static_cast<std::size_t>(m)][static_cast<std::size_t>(shard)];
  }
  ModelId twinHolding(ModelId m, int shard, GpuId target) const;
  int nodeOf(GpuId g) const {
    return config_.gpu_node.empty() ? 0 : config_.gpu_node[static_cast<std::size_t>(g)];
  }
  int numNodes() const { return num_nodes_; }
  std::int64_t requestsRejected() const { return rejected_requests_; }
  std::int64_t requestsRefused() const { return refused_requests_; }
  // KV cache bytes one token of model m takes on GPU g (0 where m has no shard), and the bytes a
  // running batch or session of a model holds on g now.
  std::int64_t kvBytesPerToken(ModelId m, GpuId g) const {
    return kv_per_token_[static_cast<std::size_t>(m)][static_cast<std::size_t>(g)];
  }
  std::int64_t gpuKvUsed(GpuId g) const { return gpu_kv_used_.at(static_cast<std::size_t>(g)); }
  // Iteration batching: sequences in model m's session now (0: none), and whether it is draining.
  int sessionSequences(ModelId m) const;
  bool sessionDraining(ModelId m) const;
  // Throws std::logic_error when an invariant is broken (memory over budget, a running model not
  // resident, a GPU running two batches...). Cheap enough to call after every event in tests.
  void checkInvariants() const;
  // Whether each event's scheduling pass visits only the GPU group of the model it concerns (see
  // schedule()). Tests check the premise after every event with checkPassIsLocal.
  bool localPasses() const { return local_passes_; }
  // With local passes: runs a pass over every group and throws std::logic_error if it issues any
  // command, i.e. if some group was not left at rest by its own passes. Changes no state
  // otherwise (a pass that issues nothing only redraws its per-pass marks). Tests only.
  void checkPassIsLocal();

 private:
  struct PendingOp {
    bool is_load = true;
    LoadCommand load;
    EvictCommand evict;
    Nanos start = 0;
    ModelId copy_from = -1;  // a load copied from this model's resident shard (from_device)
  };
  struct RunningBatch {
    ExecuteCommand cmd;
    std::vector<bool> waited;  // per request: its model was not resident when it arrived
    bool behind_load = false;  // started while its model was loading (layer_pipelined)
    std::int64_t kv_bytes_per_gpu_token = 0;  // tokens reserved (prompt + output), for the KV count
    std::int64_t kv_tokens = 0;
  };
  // Iteration batching: a model's session and its sequences.
  struct Sequence {
    QueuedRequest q;
    Nanos last_token = 0;
  };
  struct Session {
    BatchId id = 0;
    ModelId model = 0;
    std::int64_t step = 0;
    StepCommand cmd;                 // the step in flight
    std::vector<Sequence> decoding;  // have their first token
    std::vector<Sequence> joining;   // in the prefill step in flight
    std::vector<RequestId> retired;  // ended since the last step was issued (not the preempted)
    std::int64_t kv_tokens = 0;      // reserved by every sequence (prompt + output)
    bool drain_requested = false;    // another model waits for its GPUs
    Nanos drain_since = -1;          // when it was asked to drain (it drains from its quantum's end)
    Nanos started = 0;
  };

  // One scheduling pass. With local passes and `touched` >= 0, over the models with queued
  // requests in touched's GPU group only; otherwise over every model with queued requests.
  void schedule(ModelId touched = -1);
  // The pass itself over `order` (reordered by the queue policy).
  void runPass(std::vector<ModelId>& order);
  // GDSF: the inflation floor plus the model's hits since its last load times its reload cost per
  // GB; kept in ModelRuntimeState::gdsf_priority when it is hit or loaded.
  double gdsfPriority(ModelId m) const;
  void rejectLate();
  bool tryRunBatch(ModelId m);
  // `waiting`: the models with queued requests this scheduling pass.
  bool pipelinedReady(ModelId m, const std::vector<ModelId>& waiting);
  bool sharesGpu(ModelId a, ModelId b) const;
  void tryPrefetch();
  bool protectedFromSwap(ModelId victim, ModelId needing) const;
  // Makes room for and starts loading `m`. Returns false while it must wait; then the GPUs it
  // needs are claimed for the rest of the pass and the models it plans to evict are doomed.
  bool tryLoad(ModelId m);
  const std::vector<std::int64_t>& bytesNeeded(ModelId m) const { return gpu_bytes_[static_cast<std::size_t>(m)]; }
  void startEvict(ModelId m);
  void startLoad(ModelId m);
  // Every change of a model's residency goes through here, so the indexes below stay true.
  void setResidency(ModelId m, Residency r);
  // Queue bookkeeping: the set of models with queued requests follows every push and pop.
  void queueChanged(ModelId m);
  // Eviction candidates for `m` into candidates_: the resident models on m's GPUs, or every
  // resident model when the count cap must also shrink (any victim helps then).
  void gatherCandidates(ModelId m, bool any_gpu);
  void failQueued(ModelId m, const std::string& error);
  // A model made unavailable by a lost GPU: starts evicting it once it is resident, idle and no
  // copy reads from it (called wherever one of those conditions may have just become true).
  void evictIfUnavailable(ModelId m);
  // Iteration batching: starts a session for m (like tryRunBatch), issues its next step or ends it.
  bool tryStartSession(ModelId m);
  void advanceSession(Session& session);
  void issueStep(Session& session);
  void endSession(ModelId m);
  // Another model needs GPU g (blocked by a batch there, or claimed for a load): a session
  // running there stops admitting.
  void requestDrain(GpuId g);
  bool yielding(ModelId m) const;
  std::int64_t gpuEpochSum(ModelId m) const;
  // The KV tokens a request reserves (prompt + output) and whether `tokens` more fit m's GPUs.
  bool kvFits(ModelId m, std::int64_t used_tokens, std::int64_t more_tokens) const;
  // Why a request cannot ever be served (max positions, KV budget), or empty.
  std::string refusal(const Request& request) const;
  void kvAdd(ModelId m, std::int64_t tokens);
  void finishRequest(const RequestRecord& record);

  EngineConfig config_;
  Backend& backend_;
  const Clock& clock_;
  EngineObserver* observer_;
  // The chosen policies (config_.policy's handles), for short.
  const EvictionPolicy& eviction_;
  const QueuePolicy& queue_policy_;
  const PrefetchPolicy& prefetch_;
  const RoutingPolicy& routing_;
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
  std::int64_t rejected_requests_ = 0;
  std::int64_t refused_requests_ = 0;
  std::unordered_map<BatchId, Session> sessions_;
  std::vector<BatchId> session_of_;             // per model: its session (0: none)
  std::vector<ModelId> gpu_runner_;             // per GPU: the model whose session runs there (-1)
  std::vector<std::int64_t> gpu_epoch_;         // per GPU: loads and batches started there
  std::vector<std::vector<std::int64_t>> kv_per_token_;  // per model, per GPU
  std::vector<std::int64_t> gpu_kv_used_;       // per GPU: KV bytes reserved by what runs there
  std::vector<double> reload_seconds_;
  std::vector<std::int64_t> model_bytes_;
  std::vector<int> link_loads_;  // per GPU: load parts in flight over its host link
  std::vector<int> copies_out_;  // per model: shard copies in flight from it (it is not evicted)
  bool copySource(ModelId m) const { return copies_out_[static_cast<std::size_t>(m)] > 0; }
  double gdsf_inflation_ = 0;
  bool load_blocked_ = false;    // this pass, a demand load waits for room
  std::vector<char> pinned_;     // per model: PolicyConfig::pinned
  bool started_ = false;         // start() has issued the pinned models' loads
  std::vector<char> gpu_lost_;          // per GPU: reported lost (onGpuLost)
  std::vector<std::string> unavailable_;  // per model: why it cannot be served (empty: it can)

  // Indexes that keep a scheduling pass's cost independent of the fleet's size (each updated
  // where the state it mirrors changes; checkInvariants recomputes them from scratch).
  std::vector<std::vector<GpuId>> model_gpus_;  // per model: its distinct GPUs, ascending
  int loaded_models_ = 0;                       // models loading or resident
  std::vector<std::vector<ModelId>> resident_on_gpu_;  // per GPU: resident models with a shard there
  std::vector<ModelId> resident_;                      // every resident model
  std::vector<std::size_t> resident_pos_;              // per model: index in resident_ (npos: none)
  std::vector<std::int64_t> evicting_bytes_;    // per GPU: bytes of models being evicted
  std::vector<ModelId> waiting_;                // models with queued requests, in no order
  std::vector<std::size_t> waiting_pos_;        // per model: index in waiting_ (npos: none)
  // GPU groups: GPUs joined by a model placed over both. With policies that read only a model's
  // own GPUs (no count cap, prefetch, admission, swap-aware draining, layer-pipelined starts or
  // routing through other GPUs), a pass in one group cannot change what another group does.
  bool local_passes_ = false;
  int num_nodes_ = 1;
  std::vector<int> group_of_model_;
  std::vector<std::vector<ModelId>> group_waiting_;  // per group: its models with queued requests
  std::vector<std::size_t> group_waiting_pos_;
  std::vector<int> unsettled_;          // groups whose last pass issued commands
  std::vector<char> group_unsettled_;   // per group: listed in unsettled_
  // Scratch space reused by every pass, so the hot path does not allocate.
  std::vector<ModelId> order_, candidates_, plan_;
  std::vector<std::int64_t> still_short_;       // per GPU, only m's GPUs meaningful
  std::vector<GpuId> claimed_list_;              // GPUs claimed this pass (cleared at the next)
  std::vector<ModelId> doomed_list_;             // models doomed this pass
  std::vector<std::uint32_t> seen_;             // per model: stamp of the last gatherCandidates
  std::uint32_t seen_stamp_ = 0;
};

}  // namespace computron
