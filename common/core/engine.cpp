#include "common/core/engine.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "common/core/policy.h"

namespace computron {

namespace {
constexpr std::size_t kNone = static_cast<std::size_t>(-1);

// Removes `value` from an unordered index vector, recording positions in `pos` (npos: absent).
void indexErase(std::vector<ModelId>& list, std::vector<std::size_t>& pos, ModelId value) {
  const std::size_t i = pos[static_cast<std::size_t>(value)];
  const ModelId last = list.back();
  list[i] = last;
  pos[static_cast<std::size_t>(last)] = i;
  list.pop_back();
  pos[static_cast<std::size_t>(value)] = kNone;
}
}  // namespace

std::string residencyName(Residency r) {
  switch (r) {
    case Residency::kOffloaded: return "offloaded";
    case Residency::kLoading: return "loading";
    case Residency::kResident: return "resident";
    case Residency::kEvicting: return "evicting";
  }
  return "?";
}

bool PolicyConfig::needsFuture() const { return eviction->needsFuture() || prefetch->needsFuture(); }

Engine::Engine(EngineConfig config, Backend& backend, const Clock& clock, EngineObserver* observer)
    : config_(std::move(config)),
      backend_(backend),
      clock_(clock),
      observer_(observer),
      eviction_(config_.policy.eviction.policy()),
      queue_policy_(config_.policy.queue.policy()),
      prefetch_(config_.policy.prefetch.policy()),
      routing_(config_.policy.routing.policy()) {
  const std::size_t num_gpus = config_.gpu_weight_budget.size();
  gpu_used_.assign(num_gpus, 0);
  gpu_busy_.assign(num_gpus, false);
  gpu_claimed_.assign(num_gpus, false);
  link_loads_.assign(num_gpus, 0);
  resident_on_gpu_.assign(num_gpus, {});
  evicting_bytes_.assign(num_gpus, 0);
  still_short_.assign(num_gpus, 0);
  gpu_lost_.assign(num_gpus, 0);
  if (config_.policy.needsFuture() && !config_.future)
    throw ConfigError("policy " + config_.policy.eviction.name() + "/" + config_.policy.prefetch.name() +
                      " needs the future (EngineConfig::future): an oracle read from the workload");
  models_.resize(config_.models.size());
  copies_out_.assign(config_.models.size(), 0);
  doomed_.assign(config_.models.size(), false);
  resident_pos_.assign(config_.models.size(), kNone);
  waiting_pos_.assign(config_.models.size(), kNone);
  seen_.assign(config_.models.size(), 0);
  pinned_.assign(config_.models.size(), 0);
  unavailable_.assign(config_.models.size(), {});
  for (ModelId m : config_.policy.pinned) {
    if (m < 0 || static_cast<std::size_t>(m) >= config_.models.size())
      throw std::invalid_argument("pinned model " + std::to_string(m) + " does not exist");
    pinned_[static_cast<std::size_t>(m)] = 1;
  }
  started_ = config_.policy.pinned.empty();
  for (std::size_t m = 0; m < config_.models.size(); ++m) {
    const auto& d = config_.models[m];
    if (static_cast<int>(d.gpus.size()) != d.numShards())
      throw std::invalid_argument("model " + d.name + ": gpus must list one GPU per shard");
    for (GpuId g : d.gpus)
      if (g < 0 || static_cast<std::size_t>(g) >= num_gpus)
        throw std::invalid_argument("model " + d.name + ": GPU " + std::to_string(g) + " does not exist");
    models_[m].shard_state.assign(static_cast<std::size_t>(d.numShards()), Residency::kOffloaded);
    std::vector<ShardLayout> layouts;
    std::vector<std::int64_t> shard_bytes;
    std::vector<std::int64_t> need(num_gpus, 0);
    for (int shard = 0; shard < d.numShards(); ++shard) {
      layouts.push_back(d.spec.shard(d.tp, d.pp, shard % d.tp, shard / d.tp));
      shard_bytes.push_back(layouts.back().bytes);
      need[static_cast<std::size_t>(d.gpus[static_cast<std::size_t>(shard)])] += layouts.back().bytes;
    }
    layouts_.push_back(std::move(layouts));
    shard_bytes_.push_back(std::move(shard_bytes));
    gpu_bytes_.push_back(need);
    double reload = 0;
    std::int64_t total = 0;
    for (std::size_t g = 0; g < num_gpus; ++g) {
      double bw = g < config_.gpu_link_bandwidth.size() && config_.gpu_link_bandwidth[g] > 0
                      ? config_.gpu_link_bandwidth[g] : 1e9;
      reload = std::max(reload, static_cast<double>(need[g]) / bw);
      total += need[g];
    }
    reload_seconds_.push_back(reload);
    model_bytes_.push_back(total);
    std::vector<GpuId> distinct(d.gpus.begin(), d.gpus.end());
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    model_gpus_.push_back(std::move(distinct));
    // A model that can never fit would wait forever: refuse it up front.
    if (const auto over = shardOverBudget(d.spec, d.tp, d.pp, d.gpus, config_.gpu_weight_budget))
      throw std::invalid_argument("model " + d.name + ": needs " + std::to_string(over->bytes) + " bytes on GPU " +
                                  std::to_string(over->gpu) + ", budget is " + std::to_string(over->budget));
  }

  for (int node : config_.gpu_node) num_nodes_ = std::max(num_nodes_, node + 1);
  // GPU groups by union-find over the placements.
  std::vector<std::size_t> parent(num_gpus);
  for (std::size_t g = 0; g < num_gpus; ++g) parent[g] = g;
  auto root = [&](std::size_t g) {
    while (parent[g] != g) g = parent[g] = parent[parent[g]];
    return g;
  };
  for (const auto& gpus : model_gpus_)
    for (GpuId g : gpus) parent[root(static_cast<std::size_t>(g))] = root(static_cast<std::size_t>(gpus.front()));
  std::vector<int> group_of_root(num_gpus, -1);
  int groups = 0;
  for (const auto& gpus : model_gpus_) {
    int& group = group_of_root[root(static_cast<std::size_t>(gpus.front()))];
    if (group < 0) group = groups++;
    group_of_model_.push_back(group);
  }
  group_waiting_.assign(static_cast<std::size_t>(groups), {});
  group_waiting_pos_.assign(config_.models.size(), kNone);
  group_unsettled_.assign(static_cast<std::size_t>(groups), 0);
  // KV cache per token on each GPU: a shard holds its stage's layers and 1/tp of the KV heads.
  gpu_kv_used_.assign(num_gpus, 0);
  gpu_runner_.assign(num_gpus, -1);
  gpu_epoch_.assign(num_gpus, 0);
  session_of_.assign(config_.models.size(), 0);
  for (std::size_t m = 0; m < config_.models.size(); ++m) {
    const auto& d = config_.models[m];
    std::vector<std::int64_t> per_gpu(num_gpus, 0);
    const std::int64_t per_layer = d.spec.num_layers > 0 ? d.spec.kvBytesPerToken() / d.spec.num_layers : 0;
    for (int shard = 0; shard < d.numShards(); ++shard) {
      const std::int64_t layers = layouts_[m][static_cast<std::size_t>(shard)].num_layers;
      per_gpu[static_cast<std::size_t>(d.gpus[static_cast<std::size_t>(shard)])] += (per_layer * layers + d.tp - 1) / d.tp;
    }
    kv_per_token_.push_back(std::move(per_gpu));
  }
  if (config_.policy.batching == Batching::kIteration && !backend_.supportsSteps())
    throw ConfigError("$.policy.batching: \"iteration\" is not supported by this backend (computron sim, replay and "
                      "serve run it)");
  if (!config_.gpu_kv_budget.empty() && config_.gpu_kv_budget.size() != num_gpus)
    throw std::invalid_argument("gpu_kv_budget must list one budget per GPU");
  local_passes_ = config_.policy.max_loaded_models <= 0 && !config_.policy.admission && !prefetch_.active() &&
                  !config_.policy.layer_pipelined && !queue_policy_.drainsBeforeSwap() && routing_.readsOnlyOwnGpus();
}

Engine::~Engine() = default;

double Engine::gdsfPriority(ModelId m) const {
  const auto i = static_cast<std::size_t>(m);
  const double cost_per_gb = reload_seconds_[i] / std::max(1e-9, static_cast<double>(model_bytes_[i]) / 1e9);
  return gdsf_inflation_ + static_cast<double>(models_[i].hits_since_load) * cost_per_gb;
}

double Engine::lfuScore(ModelId m) const {
  const auto& s = models_.at(static_cast<std::size_t>(m));
  if (config_.policy.lfu_half_life <= 0) return s.lfu_count;
  return s.lfu_count * std::exp2(-static_cast<double>(clock_.now() - s.lfu_time) /
                                 static_cast<double>(config_.policy.lfu_half_life));
}

double Engine::arrivalRate(ModelId m) const {
  const auto& s = models_.at(static_cast<std::size_t>(m));
  double window = static_cast<double>(std::max<Nanos>(config_.policy.rate_window, 1));
  return s.rate_count * std::exp(-static_cast<double>(clock_.now() - s.rate_time) / window) / (window / 1e9);
}

Nanos Engine::deadline(ModelId m, Nanos arrival) const {
  Nanos slo = config_.models.at(static_cast<std::size_t>(m)).slo;
  return slo > 0 ? arrival + slo : arrival + 3600 * kNanosPerSecond;
}

void Engine::setResidency(ModelId m, Residency r) {
  const auto i = static_cast<std::size_t>(m);
  const Residency old = models_[i].residency;
  if (old == r) return;
  auto loaded = [](Residency x) { return x == Residency::kLoading || x == Residency::kResident; };
  loaded_models_ += (loaded(r) ? 1 : 0) - (loaded(old) ? 1 : 0);
  const auto& need = gpu_bytes_[i];
  if (old == Residency::kResident) {
    indexErase(resident_, resident_pos_, m);
    for (GpuId g : model_gpus_[i]) {
      auto& on = resident_on_gpu_[static_cast<std::size_t>(g)];
      on.erase(std::find(on.begin(), on.end(), m));
    }
  }
  if (r == Residency::kResident) {
    resident_pos_[i] = resident_.size();
    resident_.push_back(m);
    for (GpuId g : model_gpus_[i]) resident_on_gpu_[static_cast<std::size_t>(g)].push_back(m);
  }
  if (old == Residency::kEvicting)
    for (GpuId g : model_gpus_[i]) evicting_bytes_[static_cast<std::size_t>(g)] -= need[static_cast<std::size_t>(g)];
  if (r == Residency::kEvicting)
    for (GpuId g : model_gpus_[i]) evicting_bytes_[static_cast<std::size_t>(g)] += need[static_cast<std::size_t>(g)];
  models_[i].residency = r;
}

void Engine::queueChanged(ModelId m) {
  const auto i = static_cast<std::size_t>(m);
  const bool listed = waiting_pos_[i] != kNone;
  if (models_[i].queue.empty() == !listed) return;
  auto& group = group_waiting_[static_cast<std::size_t>(group_of_model_[i])];
  if (listed) {
    indexErase(waiting_, waiting_pos_, m);
    indexErase(group, group_waiting_pos_, m);
  } else {
    waiting_pos_[i] = waiting_.size();
    waiting_.push_back(m);
    group_waiting_pos_[i] = group.size();
    group.push_back(m);
  }
}

void Engine::onArrival(const Request& request) {
  if (request.model < 0 || static_cast<std::size_t>(request.model) >= models_.size())
    throw std::invalid_argument("request " + std::to_string(request.id) + " names unknown model " +
                                std::to_string(request.model));
  if (const std::string& lost = unavailable_[static_cast<std::size_t>(request.model)]; !lost.empty()) {
    // Ends at once, as a refusal does, but it is no refusal: the request itself was fine.
    RequestRecord record;
    record.request = request;
    record.start = record.first_token = record.finish = clock_.now();
    record.ok = false;
    record.error = lost;
    ++in_flight_requests_;
    finishRequest(record);
    return;
  }
  if (std::string why = refusal(request); !why.empty()) {
    RequestRecord record;
    record.request = request;
    record.start = record.first_token = record.finish = clock_.now();
    record.ok = false;
    record.refused = true;
    record.error = std::move(why);
    ++in_flight_requests_;
    ++refused_requests_;
    finishRequest(record);
    return;
  }
  auto& state = models_[static_cast<std::size_t>(request.model)];
  state.queue.push_back({request, state.residency != Residency::kResident});
  queueChanged(request.model);
  const Nanos now = clock_.now();
  state.lfu_count = lfuScore(request.model) + 1;
  state.lfu_time = now;
  state.rate_count = arrivalRate(request.model) * (static_cast<double>(std::max<Nanos>(config_.policy.rate_window, 1)) / 1e9) + 1;
  state.rate_time = now;
  ++state.hits_since_load;
  if (state.residency == Residency::kResident || state.residency == Residency::kLoading) {
    state.gdsf_priority = gdsfPriority(request.model);
  }
  ++in_flight_requests_;
  schedule(request.model);
}

void Engine::onLoadDone(OpId op, bool ok, const std::string& error) {
  auto it = ops_.find(op);
  if (it == ops_.end() || !it->second.is_load) throw std::logic_error("onLoadDone: unknown load " + std::to_string(op));
  PendingOp pending = std::move(it->second);
  ops_.erase(it);
  const LoadCommand& cmd = pending.load;
  auto& state = models_[static_cast<std::size_t>(cmd.model)];
  for (const auto& part : cmd.route)
    if (!part.from_device) --link_loads_[static_cast<std::size_t>(part.via)];
  if (pending.copy_from >= 0) {
    --copies_out_[static_cast<std::size_t>(pending.copy_from)];
    evictIfUnavailable(pending.copy_from);  // it was kept for this copy
  }
  if (observer_) observer_->onLoad(cmd, pending.start, clock_.now(), ok);
  if (ok) {
    state.shard_state[static_cast<std::size_t>(cmd.shard)] = Residency::kResident;
  } else {
    // The backend released what the failed load held.
    state.shard_state[static_cast<std::size_t>(cmd.shard)] = Residency::kOffloaded;
    gpu_used_[static_cast<std::size_t>(cmd.gpu)] -= cmd.bytes;
    if (!state.load_failed) state.load_error = error;
    state.load_failed = true;
  }
  if (--state.pending_ops == 0) {
    if (state.load_failed) {
      // Release the shards that did arrive, then fail the requests that waited for this load.
      ModelId m = cmd.model;
      state.load_failed = false;
      std::string message = "loading model " + config_.models[static_cast<std::size_t>(m)].name +
                            " failed: " + state.load_error;
      bool any_resident = std::any_of(state.shard_state.begin(), state.shard_state.end(),
                                      [](Residency r) { return r == Residency::kResident; });
      if (state.running) {
        // A pipelined batch still reads the shards that arrived; the backend fails it, and the
        // eviction follows when it is done.
        setResidency(m, Residency::kEvicting);
        state.evict_when_idle = true;
      } else if (any_resident) {
        startEvict(m);
      } else {
        setResidency(m, Residency::kOffloaded);
      }
      failQueued(m, message);
    } else {
      setResidency(cmd.model, Residency::kResident);
      state.served_since_load = state.running;  // a pipelined batch is serving it already
      state.last_used = clock_.now();
      state.last_load_time = clock_.now() - state.load_issued;
      // Its GPU was lost after that shard arrived: the load succeeded, but nothing may run on it.
      evictIfUnavailable(cmd.model);
    }
  }
  schedule(cmd.model);
}

void Engine::onEvictDone(OpId op) {
  auto it = ops_.find(op);
  if (it == ops_.end() || it->second.is_load) throw std::logic_error("onEvictDone: unknown eviction " + std::to_string(op));
  PendingOp pending = std::move(it->second);
  ops_.erase(it);
  const EvictCommand& cmd = pending.evict;
  auto& state = models_[static_cast<std::size_t>(cmd.model)];
  state.shard_state[static_cast<std::size_t>(cmd.shard)] = Residency::kOffloaded;
  gpu_used_[static_cast<std::size_t>(cmd.gpu)] -= cmd.bytes;
  if (observer_) observer_->onEvict(cmd, pending.start, clock_.now());
  if (--state.pending_ops == 0) setResidency(cmd.model, Residency::kOffloaded);
  schedule(cmd.model);
}

void Engine::onBatchDone(const BatchResult& result) {
  auto it = batches_.find(result.batch);
  if (it == batches_.end()) throw std::logic_error("onBatchDone: unknown batch " + std::to_string(result.batch));
  RunningBatch batch = std::move(it->second);
  batches_.erase(it);
  const ExecuteCommand& cmd = batch.cmd;
  auto& state = models_[static_cast<std::size_t>(cmd.model)];
  state.running = false;
  for (GpuId g : cmd.gpus) gpu_busy_[static_cast<std::size_t>(g)] = false;
  kvAdd(cmd.model, -batch.kv_tokens);
  if (state.evict_when_idle) {
    state.evict_when_idle = false;
    startEvict(cmd.model);
  }
  evictIfUnavailable(cmd.model);  // the backend failed its batch on a lost GPU
  {
    Nanos end = result.start;
    for (Nanos f : result.finish) end = std::max(end, f);
    Nanos took = end - result.start;
    if (result.ok && took > 0 && (state.min_batch_time == 0 || took < state.min_batch_time)) state.min_batch_time = took;
    const Nanos prefill = result.first_token - result.start;
    if (result.ok && !batch.behind_load && prefill > 0 && (state.min_prefill_time == 0 || prefill < state.min_prefill_time))
      state.min_prefill_time = prefill;
  }
  if (observer_) observer_->onBatch(cmd, result);
  for (std::size_t i = 0; i < cmd.requests.size(); ++i) {
    RequestRecord record;
    record.request = cmd.requests[i];
    record.batch = cmd.batch;
    record.start = result.start;
    record.first_token = result.first_token;
    record.finish = i < result.finish.size() ? result.finish[i] : clock_.now();
    record.waited_for_load = batch.waited[i];
    record.ok = result.ok;
    record.error = result.error;
    if (observer_ && record.ok && record.request.output_tokens > 1 && record.finish > record.first_token) {
      const std::int64_t gaps = record.request.output_tokens - 1;
      observer_->onTokenGaps(cmd.model, (record.finish - record.first_token) / gaps, gaps);
    }
    finishRequest(record);
  }
  schedule(cmd.model);
}

void Engine::finishRequest(const RequestRecord& record) {
  --in_flight_requests_;
  ++completed_requests_;
  if (observer_) observer_->onRequestDone(record);
}

void Engine::failQueued(ModelId m, const std::string& error) {
  auto& state = models_[static_cast<std::size_t>(m)];
  Nanos now = clock_.now();
  while (!state.queue.empty()) {
    RequestRecord record;
    record.request = state.queue.front().request;
    record.waited_for_load = state.queue.front().waited_for_load;
    record.start = record.first_token = record.finish = now;
    record.ok = false;
    record.error = error;
    state.queue.pop_front();
    finishRequest(record);
  }
  queueChanged(m);
}

void Engine::start() {
  if (started_) return;
  started_ = true;
  // The scenario parser checked that the pinned models fit together; at the first pass nothing
  // else holds their room, so each loads now (in the order listed).
  for (ModelId m : config_.policy.pinned) {
    const auto mi = static_cast<std::size_t>(m);
    if (models_[mi].residency != Residency::kOffloaded || !unavailable_[mi].empty()) continue;
    bool fits = true;
    for (GpuId g : model_gpus_[mi]) {
      const auto gi = static_cast<std::size_t>(g);
      if (gpu_used_[gi] + gpu_bytes_[mi][gi] > config_.gpu_weight_budget[gi]) fits = false;
    }
    const int cap = config_.policy.max_loaded_models;
    if (cap > 0 && loadedModels() + 1 > cap) fits = false;
    if (!fits) continue;  // loaded on demand later, evicting unpinned models as needed
    startLoad(m);
    const auto group = static_cast<std::size_t>(group_of_model_[mi]);
    if (local_passes_ && !group_unsettled_[group]) {
      group_unsettled_[group] = 1;
      unsettled_.push_back(static_cast<int>(group));
    }
  }
}

void Engine::schedule(ModelId touched) {
  if (!started_) start();
  if (config_.policy.admission) rejectLate();
  // The models with queued requests come from their index; the queue policies order by a total
  // key (head request's arrival or deadline, then its id), so the index's order does not matter.
  // With local passes, only the touched model's GPU group and the groups whose last pass issued
  // commands (a second pass there may issue more, as it would on any event): every other group
  // was left at rest and nothing there has changed since, so a pass there would issue nothing
  // (checkPassIsLocal checks this in tests). The commands come out in the same order as from a
  // pass over every group, since groups never share a claim, a victim or a GPU.
  std::vector<ModelId>& order = order_;
  if (local_passes_ && touched >= 0) {
    const int touched_group = group_of_model_[static_cast<std::size_t>(touched)];
    order.assign(group_waiting_[static_cast<std::size_t>(touched_group)].begin(),
                 group_waiting_[static_cast<std::size_t>(touched_group)].end());
    for (int g : unsettled_)
      if (g != touched_group) order.insert(order.end(), group_waiting_[static_cast<std::size_t>(g)].begin(),
                                           group_waiting_[static_cast<std::size_t>(g)].end());
  } else {
    order.assign(waiting_.begin(), waiting_.end());
  }
  runPass(order);
  if (prefetch_.active() && !load_blocked_) tryPrefetch();
}

void Engine::runPass(std::vector<ModelId>& order) {
  for (int g : unsettled_) group_unsettled_[static_cast<std::size_t>(g)] = 0;
  unsettled_.clear();
  load_blocked_ = false;
  if (!order.empty()) {
    queue_policy_.order(order, *this);
    // Iteration batching: a model preempted for others goes after them until something else
    // has started on its GPUs (it cannot be protected from swaps and block them forever).
    if (config_.policy.batching == Batching::kIteration)
      std::stable_partition(order.begin(), order.end(), [&](ModelId m) { return !yielding(m); });
    // Claims and doom marks of the previous pass were set only on the GPUs and victims of the
    // models it visited; clear those rather than every GPU and model of the fleet.
    for (GpuId g : claimed_list_) gpu_claimed_[static_cast<std::size_t>(g)] = false;
    claimed_list_.clear();
    for (ModelId v : doomed_list_) doomed_[static_cast<std::size_t>(v)] = false;
    doomed_list_.clear();
    count_cap_claimed_ = false;
    const bool pipelined = config_.policy.layer_pipelined;
    for (ModelId m : order) {
      const OpId ops = next_op_;
      const BatchId batches = next_batch_;
      switch (models_[static_cast<std::size_t>(m)].residency) {
        case Residency::kResident: tryRunBatch(m); break;
        case Residency::kOffloaded:
          if (!tryLoad(m)) {
            load_blocked_ = true;
          } else if (pipelined && models_[static_cast<std::size_t>(m)].residency == Residency::kLoading &&
                     pipelinedReady(m, order)) {
            tryRunBatch(m);  // runs layer by layer behind its load
          }
          break;
        case Residency::kLoading:
          if (pipelined && pipelinedReady(m, order)) tryRunBatch(m);
          break;
        case Residency::kEvicting: break;
      }
      // A group where this pass issued commands may have more to issue on the next pass.
      if (local_passes_ && (next_op_ != ops || next_batch_ != batches)) {
        const auto group = static_cast<std::size_t>(group_of_model_[static_cast<std::size_t>(m)]);
        if (!group_unsettled_[group]) {
          group_unsettled_[group] = 1;
          unsettled_.push_back(static_cast<int>(group));
        }
      }
    }
  }
}

// layer_pipelined: whether a loading model's batch may start now. It holds its GPUs from its start
// to the load's end, so it starts about its prefill time before the load is expected to end (the
// shortest first token seen on the resident model; the load's end from the link speed or the
// model's last load, whichever is later): requests that arrive in between join it, and other
// models keep the GPUs meanwhile. Without that estimate (the model's first batch) it starts with
// the load. Either way, while other models with requests waiting need one of its GPUs it starts
// early only on the estimate and with serial loads; otherwise it waits for the load's end. A load
// with a failed shard starts no batch: its requests fail with it.
bool Engine::pipelinedReady(ModelId m, const std::vector<ModelId>& waiting) {
  auto& state = models_[static_cast<std::size_t>(m)];
  if (state.load_failed) return false;
  if (state.pipelined_start < 0 || clock_.now() < state.pipelined_start) return false;
  state.pipelined_due = true;
  const bool gpus_contended =
      std::any_of(waiting.begin(), waiting.end(), [&](ModelId other) { return other != m && sharesGpu(m, other); });
  if (!gpus_contended) return true;
  // With other models waiting for its GPUs, only on a trustworthy estimate of the load's end: one
  // load per host link at a time (serial_loads). Loads sharing links end unpredictably late, and
  // the batch would hold its GPUs past its own prefill.
  return state.min_prefill_time > 0 && config_.policy.serial_loads;
}

bool Engine::sharesGpu(ModelId a, ModelId b) const {
  const auto& ga = config_.models[static_cast<std::size_t>(a)].gpus;
  const auto& gb = config_.models[static_cast<std::size_t>(b)].gpus;
  return std::any_of(ga.begin(), ga.end(), [&](GpuId g) { return std::find(gb.begin(), gb.end(), g) != gb.end(); });
}

std::optional<Nanos> Engine::nextWake() const {
  if (!config_.policy.layer_pipelined) return std::nullopt;
  std::optional<Nanos> wake;
  for (const auto& state : models_) {
    if (state.residency != Residency::kLoading || state.running || state.queue.empty() || state.pipelined_start < 0 ||
        state.pipelined_due || state.load_failed)
      continue;
    if (!wake || state.pipelined_start < *wake) wake = state.pipelined_start;
  }
  return wake;
}

void Engine::onTimer() { schedule(); }

// Admission control: a queued request that cannot finish by its deadline even if served next
// (load if not resident, plus the model's shortest batch so far) is refused now, so it stops
// taking capacity from requests that can still make it.
void Engine::rejectLate() {
  const Nanos now = clock_.now();
  // In model order, as the requests' records are reported in that order.
  std::vector<ModelId>& waiting = candidates_;
  waiting.assign(waiting_.begin(), waiting_.end());
  std::sort(waiting.begin(), waiting.end());
  for (ModelId id : waiting) {
    const auto m = static_cast<std::size_t>(id);
    auto& state = models_[m];
    const auto& d = config_.models[m];
    if (d.slo <= 0 || state.queue.empty()) continue;
    Nanos estimate = state.min_batch_time;
    if (state.residency != Residency::kResident) estimate += secondsToNanos(reload_seconds_[m]);
    while (!state.queue.empty() && now + estimate > state.queue.front().request.arrival + d.slo) {
      RequestRecord record;
      record.request = state.queue.front().request;
      record.waited_for_load = state.queue.front().waited_for_load;
      record.start = record.first_token = record.finish = now;
      record.ok = false;
      record.rejected = true;
      record.error = "rejected: cannot meet its SLO";
      state.queue.pop_front();
      ++rejected_requests_;
      finishRequest(record);
    }
    queueChanged(id);
  }
}

// Swap-aware batching: a resident model with queued requests is not swapped out while the model
// that needs its room can still meet its head request's deadline after waiting for it.
bool Engine::protectedFromSwap(ModelId victim, ModelId needing) const {
  if (!queue_policy_.drainsBeforeSwap()) return false;
  const auto& v = models_[static_cast<std::size_t>(victim)];
  if (v.queue.empty()) return false;
  const auto& n = models_[static_cast<std::size_t>(needing)];
  if (n.queue.empty()) return false;
  const auto& d = config_.models[static_cast<std::size_t>(needing)];
  Nanos reload = secondsToNanos(reload_seconds_[static_cast<std::size_t>(needing)]);
  // Without an SLO, drain for at most ten reload times.
  Nanos budget = d.slo > 0 ? d.slo : 10 * reload;
  Nanos slack = n.queue.front().request.arrival + budget - clock_.now() - reload - n.min_batch_time -
                v.min_batch_time;
  return slack > 0;
}

// Prefetch into idle link time: when no demand load waits, load the model the prefetch policy
// picks (the hottest offloaded one) if its links are idle, making room only from idle models
// colder than the policy's threshold.
void Engine::tryPrefetch() {
  const PrefetchPolicy::Pick pick = prefetch_.pick(*this);
  const ModelId best = pick.model;
  if (best < 0 || !unavailable_[static_cast<std::size_t>(best)].empty()) return;
  const auto& d = config_.models[static_cast<std::size_t>(best)];
  for (GpuId g : d.gpus)
    if (link_loads_[static_cast<std::size_t>(g)] > 0) return;
  const double threshold = prefetch_.keepThreshold(pick.score);
  auto prefetchScore = [&](ModelId m) { return prefetch_.score(m, *this); };
  const std::vector<std::int64_t>& need = bytesNeeded(best);
  std::vector<std::int64_t> short_by(need.size(), 0);
  for (std::size_t g = 0; g < need.size(); ++g) short_by[g] = gpu_used_[g] + need[g] - config_.gpu_weight_budget[g];
  const int cap = config_.policy.max_loaded_models;
  int over_cap = cap > 0 ? loadedModels() + 1 - cap : 0;
  auto satisfied = [&]() {
    for (std::size_t g = 0; g < need.size(); ++g)
      if (need[g] > 0 && short_by[g] > 0) return false;
    return over_cap <= 0;
  };
  if (satisfied()) {
    startLoad(best);
    return;
  }
  for (std::size_t v = 0; v < models_.size(); ++v) {
    if (models_[v].residency != Residency::kEvicting) continue;
    const auto& freed = bytesNeeded(static_cast<ModelId>(v));
    for (std::size_t g = 0; g < freed.size(); ++g) short_by[g] -= freed[g];
  }
  if (satisfied()) return;  // evictions in flight make the room; wait for them
  std::vector<ModelId> victims;
  for (std::size_t v = 0; v < models_.size(); ++v) {
    const auto& sv = models_[v];
    if (sv.residency != Residency::kResident || sv.running || !sv.queue.empty() || pinned_[v]) continue;
    if (copySource(static_cast<ModelId>(v))) continue;
    if (prefetchScore(static_cast<ModelId>(v)) >= threshold) continue;
    victims.push_back(static_cast<ModelId>(v));
  }
  std::stable_sort(victims.begin(), victims.end(),
                   [&](ModelId a, ModelId b) { return prefetchScore(a) < prefetchScore(b); });
  std::vector<ModelId> plan;
  for (ModelId v : victims) {
    if (satisfied()) break;
    const auto& frees = bytesNeeded(v);
    bool helps = over_cap > 0;
    for (std::size_t g = 0; g < need.size(); ++g)
      if (need[g] > 0 && short_by[g] > 0 && frees[g] > 0) helps = true;
    if (!helps) continue;
    plan.push_back(v);
    for (std::size_t g = 0; g < need.size(); ++g) short_by[g] -= frees[g];
    --over_cap;
  }
  if (!satisfied()) return;
  for (ModelId v : plan) startEvict(v);
  // The load starts on a later pass, once the evictions have freed the room.
}

bool Engine::tryRunBatch(ModelId m) {
  if (config_.policy.batching == Batching::kIteration) return tryStartSession(m);
  auto& state = models_[static_cast<std::size_t>(m)];
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  if (state.running || doomed_[static_cast<std::size_t>(m)] || state.queue.empty()) return false;
  for (GpuId g : d.gpus)
    if (gpu_busy_[static_cast<std::size_t>(g)]) return false;
  RunningBatch batch;
  batch.behind_load = state.residency == Residency::kLoading;
  batch.cmd.batch = next_batch_++;
  batch.cmd.model = m;
  batch.cmd.tp = d.tp;
  batch.cmd.pp = d.pp;
  batch.cmd.gpus = d.gpus;
  const auto size = std::min(state.queue.size(), static_cast<std::size_t>(std::max(d.max_batch, 0)));
  batch.cmd.requests.reserve(size);  // one allocation each, not one per doubling
  batch.waited.reserve(size);
  // The batch reserves every request's whole KV cache (prompt + output) up front; a request that
  // would overflow the budget waits for the next batch (the first always fits: see refusal()).
  std::int64_t kv_tokens = 0;
  while (!state.queue.empty() && static_cast<int>(batch.cmd.requests.size()) < d.max_batch) {
    const Request& next = state.queue.front().request;
    const std::int64_t tokens = static_cast<std::int64_t>(next.prompt_tokens) + next.output_tokens;
    if (!batch.cmd.requests.empty() && !kvFits(m, kv_tokens, tokens)) break;
    kv_tokens += tokens;
    batch.cmd.requests.push_back(state.queue.front().request);
    batch.waited.push_back(state.queue.front().waited_for_load);
    state.queue.pop_front();
  }
  queueChanged(m);
  state.running = true;
  state.served_since_load = true;
  state.last_used = clock_.now();
  for (GpuId g : d.gpus) gpu_busy_[static_cast<std::size_t>(g)] = true;
  for (GpuId g : model_gpus_[static_cast<std::size_t>(m)]) ++gpu_epoch_[static_cast<std::size_t>(g)];
  batch.kv_tokens = kv_tokens;
  kvAdd(m, kv_tokens);
  BatchId id = batch.cmd.batch;
  auto [it, inserted] = batches_.emplace(id, std::move(batch));
  (void)inserted;
  backend_.execute(it->second.cmd);
  return true;
}

bool Engine::tryLoad(ModelId m) {
  const auto mi = static_cast<std::size_t>(m);
  if (!unavailable_[mi].empty()) {
    // Not reached: its requests end on arrival. Should one be queued anyway, it ends here.
    failQueued(m, unavailable_[mi]);
    return true;
  }
  const std::vector<GpuId>& gpus = model_gpus_[mi];
  auto claimGpus = [&]() {
    for (GpuId g : gpus) {
      if (gpu_claimed_[static_cast<std::size_t>(g)]) continue;
      gpu_claimed_[static_cast<std::size_t>(g)] = true;
      claimed_list_.push_back(g);
    }
  };
  for (GpuId g : gpus)
    if (gpu_claimed_[static_cast<std::size_t>(g)]) return false;
  const int cap = config_.policy.max_loaded_models;
  if (cap > 0 && count_cap_claimed_) return false;
  if (config_.policy.serial_loads) {
    bool link_busy = false;
    for (GpuId g : gpus) link_busy = link_busy || link_loads_[static_cast<std::size_t>(g)] > 0;
    if (link_busy) {
      claimGpus();
      if (cap > 0 && loadedModels() + 1 > cap) count_cap_claimed_ = true;
      return false;
    }
  }

  // Room still missing on each of m's GPUs (the only ones where it needs bytes), counting bytes
  // of models already being evicted as freed soon.
  const std::vector<std::int64_t>& need = bytesNeeded(m);
  bool short_of_bytes = false;
  for (GpuId g : gpus) {
    const auto gi = static_cast<std::size_t>(g);
    if (gpu_used_[gi] + need[gi] - config_.gpu_weight_budget[gi] > 0) short_of_bytes = true;
  }
  int over_cap = cap > 0 ? loadedModels() + 1 - cap : 0;

  if (!short_of_bytes && over_cap <= 0) {
    startLoad(m);
    return true;
  }

  // Plan victims in the eviction policy's order among resident models (not loading). Running
  // ones may be planned but are only evicted once their batch ends.
  // A model loaded for queued requests serves them once before it can be evicted, so two
  // models can never evict each other forever without serving anything.
  // Only a model on m's GPUs can free bytes it needs; any model helps while the count cap is
  // exceeded. The ranking is a total order, so gathering from the indexes ranks the same.
  gatherCandidates(m, over_cap > 0);
  eviction_.rank(candidates_, *this, m);

  // Bytes being freed by evictions in flight already count towards the room.
  std::vector<std::int64_t>& still_short = still_short_;
  for (GpuId g : gpus) {
    const auto gi = static_cast<std::size_t>(g);
    still_short[gi] = gpu_used_[gi] + need[gi] - config_.gpu_weight_budget[gi] - evicting_bytes_[gi];
  }
  auto satisfied = [&]() {
    for (GpuId g : gpus)
      if (still_short[static_cast<std::size_t>(g)] > 0) return false;
    return over_cap <= 0;
  };
  std::vector<ModelId>& plan = plan_;
  plan.clear();
  for (ModelId v : candidates_) {
    if (satisfied()) break;
    const auto& frees = bytesNeeded(v);
    bool helps = over_cap > 0;
    for (GpuId g : gpus)
      if (still_short[static_cast<std::size_t>(g)] > 0 && frees[static_cast<std::size_t>(g)] > 0) helps = true;
    if (!helps) continue;
    plan.push_back(v);
    for (GpuId g : gpus) still_short[static_cast<std::size_t>(g)] -= frees[static_cast<std::size_t>(g)];
    --over_cap;
  }
  if (satisfied()) {
    for (ModelId v : plan) {
      if (models_[static_cast<std::size_t>(v)].running) {
        for (GpuId g : model_gpus_[static_cast<std::size_t>(v)]) requestDrain(g);
        if (!doomed_[static_cast<std::size_t>(v)]) doomed_list_.push_back(v);
        doomed_[static_cast<std::size_t>(v)] = true;
      } else {
        startEvict(v);
      }
    }
  }
  // Either victims are on their way out or nothing can make room yet: wait, and keep later
  // (lower-priority) models from taking the GPUs this load needs.
  claimGpus();
  if (cap > 0 && loadedModels() + 1 > cap) count_cap_claimed_ = true;
  return false;
}

void Engine::gatherCandidates(ModelId m, bool any_gpu) {
  candidates_.clear();
  if (++seen_stamp_ == 0) {  // the stamp wrapped: forget every old mark
    std::fill(seen_.begin(), seen_.end(), 0);
    seen_stamp_ = 1;
  }
  auto consider = [&](ModelId v) {
    const auto vi = static_cast<std::size_t>(v);
    if (seen_[vi] == seen_stamp_) return;
    seen_[vi] = seen_stamp_;
    const auto& sv = models_[vi];
    if (v == m || sv.residency != Residency::kResident || doomed_[vi] || pinned_[vi]) return;
    if (copySource(v)) return;
    if (!sv.served_since_load && !sv.queue.empty()) return;
    if (protectedFromSwap(v, m)) return;
    candidates_.push_back(v);
  };
  if (any_gpu) {
    for (ModelId v : resident_) consider(v);
  } else {
    for (GpuId g : model_gpus_[static_cast<std::size_t>(m)])
      for (ModelId v : resident_on_gpu_[static_cast<std::size_t>(g)]) consider(v);
  }
}

void Engine::startLoad(ModelId m) {
  auto& state = models_[static_cast<std::size_t>(m)];
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  setResidency(m, Residency::kLoading);
  state.load_issued = clock_.now();
  for (GpuId g : model_gpus_[static_cast<std::size_t>(m)]) ++gpu_epoch_[static_cast<std::size_t>(g)];
  if (config_.policy.layer_pipelined) {
    // Start a batch behind this load about one prefill before its expected end (see pipelinedReady).
    // The longer of the link-speed estimate and the model's last load (links may be shared).
    const Nanos reload = std::max(secondsToNanos(reload_seconds_[static_cast<std::size_t>(m)]), state.last_load_time);
    state.pipelined_start = clock_.now() + std::max<Nanos>(0, reload - state.min_prefill_time);
    if (state.min_prefill_time == 0) state.pipelined_start = clock_.now();
    state.pipelined_due = false;
  }
  state.load_failed = false;
  state.load_error.clear();
  ++state.loads;
  state.pending_ops = d.numShards();
  Nanos now = clock_.now();
  state.hits_since_load = std::max<std::int64_t>(1, static_cast<std::int64_t>(state.queue.size()));
  state.gdsf_priority = gdsfPriority(m);
  // How each shard's bytes travel: planned for all shards before any is issued.
  const std::vector<ShardRoute> routes = routing_.plan(m, *this);
  if (static_cast<int>(routes.size()) != d.numShards())
    throw std::logic_error("routing policy " + config_.policy.routing.name() + " planned " +
                           std::to_string(routes.size()) + " routes for model " + d.name + "'s " +
                           std::to_string(d.numShards()) + " shards");
  if (!unavailable_[static_cast<std::size_t>(m)].empty())
    throw std::logic_error("loading model " + d.name + ", which is unavailable: " + unavailable_[static_cast<std::size_t>(m)]);
  for (const ShardRoute& route : routes)
    for (const RoutePart& part : route.parts)
      if (gpu_lost_[static_cast<std::size_t>(part.via)])
        throw std::logic_error("routing policy " + config_.policy.routing.name() + " planned a part of model " + d.name +
                               " via GPU " + std::to_string(part.via) + ", which was lost");
  // Issue every shard before any completion can arrive: all shards of a model load at once.
  std::vector<LoadCommand> cmds;
  for (int pp = 0; pp < d.pp; ++pp) {
    for (int tp = 0; tp < d.tp; ++tp) {
      int shard = pp * d.tp + tp;
      LoadCommand cmd;
      cmd.op = next_op_++;
      cmd.model = m;
      cmd.shard = shard;
      cmd.gpu = d.gpus[static_cast<std::size_t>(shard)];
      cmd.layout = layouts_[static_cast<std::size_t>(m)][static_cast<std::size_t>(shard)];
      cmd.bytes = cmd.layout.bytes;
      const ShardRoute& planned = routes[static_cast<std::size_t>(shard)];
      cmd.route = planned.parts;
      const ModelId twin = planned.copy_from;
      if (twin >= 0) ++copies_out_[static_cast<std::size_t>(twin)];
      for (const auto& part : cmd.route)
        if (!part.from_device) ++link_loads_[static_cast<std::size_t>(part.via)];
      state.shard_state[static_cast<std::size_t>(shard)] = Residency::kLoading;
      gpu_used_[static_cast<std::size_t>(cmd.gpu)] += cmd.bytes;
      PendingOp op;
      op.copy_from = twin;
      op.is_load = true;
      op.load = cmd;
      op.start = now;
      ops_.emplace(cmd.op, std::move(op));
      cmds.push_back(std::move(cmd));
    }
  }
  for (const auto& cmd : cmds) backend_.load(cmd);
}

double Engine::hostLinkBandwidth(GpuId g) const {
  const auto i = static_cast<std::size_t>(g);
  return i < config_.gpu_link_bandwidth.size() && config_.gpu_link_bandwidth[i] > 0 ? config_.gpu_link_bandwidth[i] : 1e9;
}

ModelId Engine::twinHolding(ModelId m, int shard, GpuId target) const {
  if (!config_.nvlink) return -1;
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  for (std::size_t o = 0; o < config_.models.size(); ++o) {
    const auto& od = config_.models[o];
    if (static_cast<ModelId>(o) == m || od.weights != d.weights || od.tp != d.tp || od.pp != d.pp) continue;
    const auto& os = models_[o];
    // Only a fully resident twin that is not planned for eviction this pass.
    if (os.residency != Residency::kResident || doomed_[o] || !unavailable_[o].empty()) continue;
    if (os.shard_state[static_cast<std::size_t>(shard)] != Residency::kResident) continue;
    if (od.gpus[static_cast<std::size_t>(shard)] == target) continue;
    if (gpu_lost_[static_cast<std::size_t>(od.gpus[static_cast<std::size_t>(shard)])]) continue;
    if (nodeOf(od.gpus[static_cast<std::size_t>(shard)]) != nodeOf(target)) continue;  // NVLink stays in a node
    return static_cast<ModelId>(o);
  }
  return -1;
}

std::optional<std::string> Engine::evictOnDemand(ModelId m) {
  if (m < 0 || static_cast<std::size_t>(m) >= models_.size()) return "no model " + std::to_string(m);
  const auto& state = models_[static_cast<std::size_t>(m)];
  const std::string& name = config_.models[static_cast<std::size_t>(m)].name;
  switch (state.residency) {
    case Residency::kOffloaded: return "model " + name + " is not resident (offloaded)";
    case Residency::kLoading: return "model " + name + " is loading";
    case Residency::kEvicting: return "model " + name + " is already being evicted";
    case Residency::kResident: break;
  }
  if (pinned_[static_cast<std::size_t>(m)]) return "model " + name + " is pinned (policy.pinned)";
  if (state.running) return "model " + name + " is running a batch";
  if (!state.queue.empty())
    return "model " + name + " has " + std::to_string(state.queue.size()) + " requests queued";
  if (copySource(m)) return "model " + name + " is the source of a copy in flight";
  startEvict(m);
  schedule(m);
  return std::nullopt;
}

bool Engine::cancelQueued(ModelId m, RequestId id) {
  if (m < 0 || static_cast<std::size_t>(m) >= models_.size()) return false;
  auto& state = models_[static_cast<std::size_t>(m)];
  const auto it = std::find_if(state.queue.begin(), state.queue.end(),
                               [id](const QueuedRequest& q) { return q.request.id == id; });
  if (it == state.queue.end()) return false;
  RequestRecord record;
  record.request = it->request;
  record.waited_for_load = it->waited_for_load;
  record.start = record.first_token = record.finish = clock_.now();
  record.ok = false;
  record.error = "cancelled";
  state.queue.erase(it);
  queueChanged(m);
  finishRequest(record);
  schedule(m);
  return true;
}

void Engine::onGpuLost(GpuId g, const std::string& reason) {
  if (g < 0 || static_cast<std::size_t>(g) >= gpu_lost_.size())
    throw std::invalid_argument("onGpuLost: no GPU " + std::to_string(g));
  if (gpu_lost_[static_cast<std::size_t>(g)]) return;
  gpu_lost_[static_cast<std::size_t>(g)] = 1;
  for (std::size_t m = 0; m < models_.size(); ++m) {
    const auto& gpus = model_gpus_[m];
    if (!unavailable_[m].empty() || !std::binary_search(gpus.begin(), gpus.end(), g)) continue;
    unavailable_[m] = "model " + config_.models[m].name + " needs GPU " + std::to_string(g) +
                      ", which was lost: " + reason;
    failQueued(static_cast<ModelId>(m), unavailable_[m]);
    // Loading: the backend fails the loads on g, and the failed-load path evicts what arrived.
    // Running: the backend fails the batch or step, and its end evicts the model.
    evictIfUnavailable(static_cast<ModelId>(m));
  }
  schedule();
}

void Engine::evictIfUnavailable(ModelId m) {
  const auto mi = static_cast<std::size_t>(m);
  const auto& state = models_[mi];
  if (unavailable_[mi].empty() || state.residency != Residency::kResident || state.running || copySource(m)) return;
  startEvict(m);
}

void Engine::startEvict(ModelId m) {
  auto& state = models_[static_cast<std::size_t>(m)];
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  if (state.running) throw std::logic_error("evicting model " + d.name + " while it runs a batch");
  if (state.residency == Residency::kLoading && state.pending_ops > 0)
    throw std::logic_error("evicting model " + d.name + " while it loads");
  setResidency(m, Residency::kEvicting);
  gdsf_inflation_ = std::max(gdsf_inflation_, state.gdsf_priority);
  state.hits_since_load = 0;
  Nanos now = clock_.now();
  std::vector<EvictCommand> cmds;
  for (int shard = 0; shard < d.numShards(); ++shard) {
    if (state.shard_state[static_cast<std::size_t>(shard)] != Residency::kResident) continue;
    EvictCommand cmd;
    cmd.op = next_op_++;
    cmd.model = m;
    cmd.shard = shard;
    cmd.gpu = d.gpus[static_cast<std::size_t>(shard)];
    cmd.bytes = shardBytes(m, shard);
    state.shard_state[static_cast<std::size_t>(shard)] = Residency::kEvicting;
    PendingOp op;
    op.is_load = false;
    op.evict = cmd;
    op.start = now;
    ops_.emplace(cmd.op, std::move(op));
    cmds.push_back(cmd);
  }
  state.pending_ops = static_cast<int>(cmds.size());
  if (cmds.empty()) setResidency(m, Residency::kOffloaded);
  for (const auto& cmd : cmds) backend_.evict(cmd);
}

void Engine::checkPassIsLocal() {
  if (!local_passes_) return;
  // Every group whose last pass issued nothing is at rest: a pass over all of them issues nothing.
  std::vector<ModelId> order;
  for (ModelId m : waiting_)
    if (!group_unsettled_[static_cast<std::size_t>(group_of_model_[static_cast<std::size_t>(m)])]) order.push_back(m);
  const OpId ops = next_op_;
  const BatchId batches = next_batch_;
  const std::vector<int> unsettled = unsettled_;
  runPass(order);
  if (next_op_ != ops || next_batch_ != batches)
    throw std::logic_error("a pass over GPU groups at rest issued commands: the passes are not local");
  for (int g : unsettled_) group_unsettled_[static_cast<std::size_t>(g)] = 0;
  unsettled_ = unsettled;
  for (int g : unsettled_) group_unsettled_[static_cast<std::size_t>(g)] = 1;
}

void Engine::checkInvariants() const {
  std::vector<std::int64_t> used(gpu_used_.size(), 0);
  std::vector<int> busy_count(gpu_used_.size(), 0);
  int loaded = 0;
  for (std::size_t m = 0; m < models_.size(); ++m) {
    const auto& s = models_[m];
    const auto& d = config_.models[m];
    for (int shard = 0; shard < d.numShards(); ++shard) {
      if (s.shard_state[static_cast<std::size_t>(shard)] != Residency::kOffloaded)
        used[static_cast<std::size_t>(d.gpus[static_cast<std::size_t>(shard)])] +=
            shardBytes(static_cast<ModelId>(m), shard);
    }
    if (s.running) {
      const bool pipelined_ok = config_.policy.layer_pipelined &&
                                (s.residency == Residency::kLoading ||
                                 (s.residency == Residency::kEvicting && s.evict_when_idle));
      if (s.residency != Residency::kResident && !pipelined_ok)
        throw std::logic_error("model " + d.name + " is running while " + residencyName(s.residency));
      for (GpuId g : d.gpus) ++busy_count[static_cast<std::size_t>(g)];
    }
    if (s.residency == Residency::kResident)
      for (Residency r : s.shard_state)
        if (r != Residency::kResident) throw std::logic_error("model " + d.name + " resident with a shard not resident");
    if (s.residency == Residency::kLoading || s.residency == Residency::kResident) ++loaded;
    if (!unavailable_[m].empty() && !s.queue.empty())
      throw std::logic_error("model " + d.name + " is unavailable with requests queued");
  }
  for (std::size_t g = 0; g < used.size(); ++g) {
    if (used[g] != gpu_used_[g])
      throw std::logic_error("GPU " + std::to_string(g) + " byte count " + std::to_string(gpu_used_[g]) +
                             " disagrees with shard states " + std::to_string(used[g]));
    if (used[g] > config_.gpu_weight_budget[g])
      throw std::logic_error("GPU " + std::to_string(g) + " over its weight budget");
    if (busy_count[g] > 1) throw std::logic_error("GPU " + std::to_string(g) + " runs two batches");
    if ((busy_count[g] == 1) != gpu_busy_[g]) throw std::logic_error("GPU " + std::to_string(g) + " busy flag wrong");
  }
  if (config_.policy.max_loaded_models > 0 && loaded > config_.policy.max_loaded_models)
    throw std::logic_error("more models loaded than the cap");
  // The indexes the scheduling pass reads instead of scanning every model.
  if (loaded != loaded_models_) throw std::logic_error("loaded-model count disagrees with residencies");
  std::vector<std::int64_t> evicting(gpu_used_.size(), 0);
  std::vector<std::size_t> resident_on(gpu_used_.size(), 0);
  std::size_t resident = 0, waiting = 0;
  for (std::size_t m = 0; m < models_.size(); ++m) {
    const auto& s = models_[m];
    const bool listed_waiting = waiting_pos_[m] != kNone;
    if (listed_waiting != !s.queue.empty() || (listed_waiting && waiting_[waiting_pos_[m]] != static_cast<ModelId>(m)))
      throw std::logic_error("model " + config_.models[m].name + " wrongly indexed as waiting");
    waiting += listed_waiting ? 1 : 0;
    const bool is_resident = s.residency == Residency::kResident;
    if (is_resident != (resident_pos_[m] != kNone) ||
        (is_resident && resident_[resident_pos_[m]] != static_cast<ModelId>(m)))
      throw std::logic_error("model " + config_.models[m].name + " wrongly indexed as resident");
    for (GpuId g : model_gpus_[m]) {
      const auto gi = static_cast<std::size_t>(g);
      if (s.residency == Residency::kEvicting) evicting[gi] += gpu_bytes_[m][gi];
      if (is_resident) {
        const auto& on = resident_on_gpu_[gi];
        if (std::find(on.begin(), on.end(), static_cast<ModelId>(m)) == on.end())
          throw std::logic_error("model " + config_.models[m].name + " missing from GPU " + std::to_string(g) + "'s residents");
        ++resident_on[gi];
      }
    }
    resident += is_resident ? 1 : 0;
  }
  if (resident != resident_.size() || waiting != waiting_.size())
    throw std::logic_error("resident or waiting index holds stale models");
  for (std::size_t g = 0; g < gpu_used_.size(); ++g) {
    if (evicting[g] != evicting_bytes_[g]) throw std::logic_error("GPU " + std::to_string(g) + " evicting bytes wrong");
    if (resident_on[g] != resident_on_gpu_[g].size())
      throw std::logic_error("GPU " + std::to_string(g) + " resident index holds stale models");
  }
  // KV cache: what runs reserves its sequences' prompt + output tokens, within the budget.
  std::vector<std::int64_t> kv(gpu_used_.size(), 0);
  auto addKv = [&](ModelId m, std::int64_t tokens) {
    for (GpuId g : model_gpus_[static_cast<std::size_t>(m)])
      kv[static_cast<std::size_t>(g)] += tokens * kv_per_token_[static_cast<std::size_t>(m)][static_cast<std::size_t>(g)];
  };
  for (const auto& [id, batch] : batches_) addKv(batch.cmd.model, batch.kv_tokens);
  for (const auto& [id, session] : sessions_) {
    const auto mi = static_cast<std::size_t>(session.model);
    const auto& s = models_[mi];
    if (session_of_[mi] != id || !s.running || s.residency != Residency::kResident)
      throw std::logic_error("session of model " + config_.models[mi].name + " is not its running batch");
    std::int64_t tokens = 0;
    for (const auto* list : {&session.decoding, &session.joining})
      for (const auto& seq : *list) tokens += static_cast<std::int64_t>(seq.q.request.prompt_tokens) + seq.q.request.output_tokens;
    if (tokens != session.kv_tokens) throw std::logic_error("session KV reservation disagrees with its sequences");
    if (static_cast<int>(session.decoding.size() + session.joining.size()) > config_.models[mi].max_batch)
      throw std::logic_error("session of model " + config_.models[mi].name + " holds more than max_batch sequences");
    for (GpuId g : model_gpus_[mi])
      if (gpu_runner_[static_cast<std::size_t>(g)] != session.model) throw std::logic_error("GPU runner index wrong");
    addKv(session.model, tokens);
  }
  for (std::size_t g = 0; g < gpu_used_.size(); ++g) {
    if (kv[g] != gpu_kv_used_[g]) throw std::logic_error("GPU " + std::to_string(g) + " KV count disagrees with what runs");
    if (!config_.gpu_kv_budget.empty() && kv[g] > config_.gpu_kv_budget[g])
      throw std::logic_error("GPU " + std::to_string(g) + " over its KV budget");
  }
}

}  // namespace computron

namespace computron {

// ---- KV budget and refusals ------------------------------------------------------------------

std::string Engine::refusal(const Request& request) const {
  const auto m = static_cast<std::size_t>(request.model);
  const auto& d = config_.models[m];
  const std::int64_t tokens = static_cast<std::int64_t>(request.prompt_tokens) + request.output_tokens;
  if (d.spec.max_positions > 0 && tokens > d.spec.max_positions)
    return "refused: prompt + output tokens (" + std::to_string(tokens) + ") exceed the maximum positions of " +
           d.name + " (" + std::to_string(d.spec.max_positions) + ")";
  if (!config_.gpu_kv_budget.empty()) {
    for (GpuId g : model_gpus_[m]) {
      const auto gi = static_cast<std::size_t>(g);
      const std::int64_t need = tokens * kv_per_token_[m][gi];
      if (need > config_.gpu_kv_budget[gi])
        return "refused: its KV cache (" + std::to_string(tokens) + " tokens, " + std::to_string(need) +
               " bytes on GPU " + std::to_string(g) + ") exceeds the KV budget (" +
               std::to_string(config_.gpu_kv_budget[gi]) + " bytes)";
    }
  }
  return {};
}

bool Engine::kvFits(ModelId m, std::int64_t used_tokens, std::int64_t more_tokens) const {
  if (config_.gpu_kv_budget.empty()) return true;
  const auto mi = static_cast<std::size_t>(m);
  for (GpuId g : model_gpus_[mi]) {
    const auto gi = static_cast<std::size_t>(g);
    if ((used_tokens + more_tokens) * kv_per_token_[mi][gi] > config_.gpu_kv_budget[gi]) return false;
  }
  return true;
}

void Engine::kvAdd(ModelId m, std::int64_t tokens) {
  const auto mi = static_cast<std::size_t>(m);
  for (GpuId g : model_gpus_[mi]) gpu_kv_used_[static_cast<std::size_t>(g)] += tokens * kv_per_token_[mi][static_cast<std::size_t>(g)];
}

// ---- Iteration-level batching ----------------------------------------------------------------
//
// A resident model with queued requests and free GPUs starts a session: the queue's head requests
// join (up to max_batch sequences and the KV budget, each reserving its prompt + output tokens)
// and run a prefill step; then decode steps make one token of every sequence. Between steps,
// sequences that made their last token leave, and, while no other model waits for the session's
// GPUs, queued requests join with a prefill step of their own (the sequences already decoding
// wait that step). Once another model waits (a load whose eviction plan needs this model, or a
// batch blocked by its GPUs), the session admits nobody and drains; what is still in flight
// after policy.max_drain is preempted at the next step boundary: requeued at the head of the queue
// with its tokens so far, recomputed by a prefill when it rejoins. A preempted model comes last in
// the scheduling passes while another model waits for its GPUs and nothing else has started there.

int Engine::sessionSequences(ModelId m) const {
  const BatchId id = session_of_.at(static_cast<std::size_t>(m));
  if (id == 0) return 0;
  const Session& s = sessions_.at(id);
  return static_cast<int>(s.decoding.size() + s.joining.size());
}

bool Engine::sessionDraining(ModelId m) const {
  const BatchId id = session_of_.at(static_cast<std::size_t>(m));
  if (id == 0) return false;
  const Session& s = sessions_.at(id);
  return s.drain_requested && clock_.now() >= std::max(s.drain_since, s.started + config_.policy.session_quantum);
}

void Engine::requestDrain(GpuId g) {
  const ModelId runner = gpu_runner_[static_cast<std::size_t>(g)];
  if (runner < 0) return;
  Session& s = sessions_.at(session_of_[static_cast<std::size_t>(runner)]);
  if (!s.drain_requested) {
    s.drain_requested = true;
    s.drain_since = clock_.now();
  }
}

std::int64_t Engine::gpuEpochSum(ModelId m) const {
  std::int64_t sum = 0;
  for (GpuId g : model_gpus_[static_cast<std::size_t>(m)]) sum += gpu_epoch_[static_cast<std::size_t>(g)];
  return sum;
}

bool Engine::yielding(ModelId m) const {
  const auto& state = models_[static_cast<std::size_t>(m)];
  if (state.yield_epoch < 0 || gpuEpochSum(m) != state.yield_epoch) return false;
  for (ModelId o : waiting_)
    if (o != m && sharesGpu(m, o)) return true;
  return false;
}

bool Engine::tryStartSession(ModelId m) {
  const auto mi = static_cast<std::size_t>(m);
  auto& state = models_[mi];
  const auto& d = config_.models[mi];
  if (state.running || doomed_[mi] || state.queue.empty()) return false;
  if (state.residency != Residency::kResident) return false;  // sessions start on resident models only
  bool busy = false;
  for (GpuId g : model_gpus_[mi]) {
    if (gpu_busy_[static_cast<std::size_t>(g)]) {
      requestDrain(g);
      busy = true;
    }
  }
  if (busy) return false;
  state.yield_epoch = -1;
  Session session;
  session.id = next_batch_++;
  session.model = m;
  session.started = clock_.now();
  state.running = true;
  state.served_since_load = true;
  for (GpuId g : d.gpus) gpu_busy_[static_cast<std::size_t>(g)] = true;
  for (GpuId g : model_gpus_[mi]) {
    ++gpu_epoch_[static_cast<std::size_t>(g)];
    gpu_runner_[static_cast<std::size_t>(g)] = m;
  }
  session_of_[mi] = session.id;
  Session& s = sessions_.emplace(session.id, std::move(session)).first->second;
  advanceSession(s);
  return true;
}

void Engine::advanceSession(Session& s) {
  const ModelId m = s.model;
  const auto mi = static_cast<std::size_t>(m);
  auto& state = models_[mi];
  const auto& d = config_.models[mi];
  const Nanos now = clock_.now();
  if (s.drain_requested) {
    // Withdrawn when no other model waits for the session's GPUs any more (its requests were
    // served elsewhere, rejected or cancelled, or its load failed).
    bool still_wanted = false;
    for (ModelId o : waiting_) still_wanted = still_wanted || (o != m && sharesGpu(m, o));
    if (!still_wanted) {
      s.drain_requested = false;
      s.drain_since = -1;
    }
  }
  const Nanos drain_from = std::max(s.drain_since, s.started + config_.policy.session_quantum);
  const bool draining = s.drain_requested && now >= drain_from;
  if (draining && !s.decoding.empty() && now - drain_from >= config_.policy.max_drain) {
    // Preempt: back to the head of the queue in their order, with the tokens they made.
    for (auto it = s.decoding.rbegin(); it != s.decoding.rend(); ++it) {
      QueuedRequest q = it->q;
      ++q.preemptions;
      q.last_token = it->last_token;
      const std::int64_t tokens = static_cast<std::int64_t>(q.request.prompt_tokens) + q.request.output_tokens;
      s.kv_tokens -= tokens;
      kvAdd(m, -tokens);
      state.queue.push_front(std::move(q));
    }
    s.decoding.clear();
    queueChanged(m);
    state.yield_epoch = gpuEpochSum(m);
  }
  if (!draining) {
    bool admitted = false;
    while (!state.queue.empty() && static_cast<int>(s.decoding.size() + s.joining.size()) < d.max_batch) {
      const Request& next = state.queue.front().request;
      const std::int64_t tokens = static_cast<std::int64_t>(next.prompt_tokens) + next.output_tokens;
      if (!kvFits(m, s.kv_tokens, tokens)) break;  // admission waits for sequences to leave
      s.kv_tokens += tokens;
      kvAdd(m, tokens);
      Sequence seq{state.queue.front(), state.queue.front().last_token};
      if (seq.q.start < 0) seq.q.start = now;
      s.joining.push_back(std::move(seq));
      state.queue.pop_front();
      admitted = true;
    }
    if (admitted) queueChanged(m);
  }
  if (s.joining.empty() && s.decoding.empty()) {
    endSession(m);
    return;
  }
  state.last_used = now;
  issueStep(s);
}

void Engine::issueStep(Session& s) {
  const auto& d = config_.models[static_cast<std::size_t>(s.model)];
  StepCommand& cmd = s.cmd;
  cmd.batch = s.id;
  cmd.step = s.step++;
  cmd.model = s.model;
  cmd.tp = d.tp;
  cmd.pp = d.pp;
  cmd.gpus = d.gpus;
  cmd.prefill.clear();
  cmd.decode.clear();
  auto entry = [](const Sequence& seq) {
    return StepSequence{seq.q.request, seq.q.request.prompt_tokens + seq.q.generated, seq.q.generated};
  };
  if (!s.joining.empty()) {
    for (const auto& seq : s.joining) cmd.prefill.push_back(entry(seq));
  } else {
    for (const auto& seq : s.decoding) cmd.decode.push_back(entry(seq));
  }
  auto& state = models_[static_cast<std::size_t>(s.model)];
  cmd.retired = std::move(state.retired_unsent);
  state.retired_unsent.clear();
  cmd.retired.insert(cmd.retired.end(), s.retired.begin(), s.retired.end());
  s.retired.clear();
  backend_.step(cmd);
}

void Engine::endSession(ModelId m) {
  const auto mi = static_cast<std::size_t>(m);
  auto& state = models_[mi];
  const auto& d = config_.models[mi];
  const BatchId id = session_of_[mi];
  {
    const Session& s = sessions_.at(id);
    kvAdd(m, -s.kv_tokens);
    // Ended sequences the backend was not told of yet: named in the model's next step, so a rank
    // that did not see them end (a cancel seen on another rank) forgets their tokens then.
    state.retired_unsent.insert(state.retired_unsent.end(), s.retired.begin(), s.retired.end());
  }
  sessions_.erase(id);
  session_of_[mi] = 0;
  state.running = false;
  for (GpuId g : d.gpus) gpu_busy_[static_cast<std::size_t>(g)] = false;
  for (GpuId g : model_gpus_[mi]) gpu_runner_[static_cast<std::size_t>(g)] = -1;
  if (state.evict_when_idle) {
    state.evict_when_idle = false;
    startEvict(m);
  }
  evictIfUnavailable(m);  // the backend failed its step on a lost GPU
}

void Engine::onStepDone(const StepResult& result) {
  auto it = sessions_.find(result.batch);
  if (it == sessions_.end() || it->second.cmd.step != result.step)
    throw std::logic_error("onStepDone: unknown step " + std::to_string(result.step) + " of session " +
                           std::to_string(result.batch));
  Session& s = it->second;
  const ModelId m = s.model;
  auto& state = models_[static_cast<std::size_t>(m)];
  if (observer_) observer_->onStep(s.cmd, result);
  const Nanos end = result.end;
  auto report = [&](const Sequence& seq, bool ok, const std::string& error) {
    RequestRecord record;
    record.request = seq.q.request;
    record.batch = s.id;
    record.start = seq.q.start >= 0 ? seq.q.start : result.start;
    record.first_token = seq.q.first_token >= 0 ? seq.q.first_token : end;
    record.finish = end;
    record.waited_for_load = seq.q.waited_for_load;
    record.preemptions = seq.q.preemptions;
    record.ok = ok;
    record.error = error;
    finishRequest(record);
  };
  if (!result.ok) {
    // A failed step fails every sequence of the session; the model stays resident.
    for (const auto& seq : s.decoding) {
      report(seq, false, result.error);
      s.retired.push_back(seq.q.request.id);
    }
    for (const auto& seq : s.joining) {
      report(seq, false, result.error);
      s.retired.push_back(seq.q.request.id);
    }
    endSession(m);
    schedule(m);
    return;
  }
  const bool prefill = !s.cmd.prefill.empty();
  if (prefill) {
    const Nanos took = end - result.start;
    if (took > 0 && (state.min_prefill_time == 0 || took < state.min_prefill_time)) state.min_prefill_time = took;
    if (took > 0 && (state.min_batch_time == 0 || took < state.min_batch_time)) state.min_batch_time = took;
    for (auto& seq : s.joining) {
      ++seq.q.generated;
      if (seq.q.first_token < 0) {
        seq.q.first_token = end;
      } else if (observer_) {
        observer_->onTokenGaps(m, end - seq.last_token, 1);  // a rejoin after preemption
      }
      seq.last_token = end;
      s.decoding.push_back(std::move(seq));
    }
    s.joining.clear();
  } else {
    for (auto& seq : s.decoding) {
      ++seq.q.generated;
      if (observer_) observer_->onTokenGaps(m, end - seq.last_token, 1);
      seq.last_token = end;
    }
  }
  // Sequences that made their last token leave, in order; so do those the backend stopped early (a
  // served request's stop id), whose record then counts the tokens they made.
  std::size_t kept = 0;
  for (std::size_t i = 0; i < s.decoding.size(); ++i) {
    Sequence& seq = s.decoding[i];
    const bool stopped = !result.stopped.empty() &&
                         std::find(result.stopped.begin(), result.stopped.end(), seq.q.request.id) != result.stopped.end();
    if (stopped || seq.q.generated >= std::max(1, seq.q.request.output_tokens)) {
      const std::int64_t tokens = static_cast<std::int64_t>(seq.q.request.prompt_tokens) + seq.q.request.output_tokens;
      s.kv_tokens -= tokens;
      kvAdd(m, -tokens);
      s.retired.push_back(seq.q.request.id);
      if (stopped) seq.q.request.output_tokens = std::min(seq.q.request.output_tokens, seq.q.generated);
      report(seq, true, {});
    } else {
      if (kept != i) s.decoding[kept] = std::move(seq);
      ++kept;
    }
  }
  s.decoding.resize(kept);
  advanceSession(s);
  schedule(m);
}

}  // namespace computron
