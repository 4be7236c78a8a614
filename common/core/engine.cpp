#include "common/core/engine.h"

#include <algorithm>
#include <stdexcept>

#include "common/core/policy.h"

namespace computron {

std::string residencyName(Residency r) {
  switch (r) {
    case Residency::kOffloaded: return "offloaded";
    case Residency::kLoading: return "loading";
    case Residency::kResident: return "resident";
    case Residency::kEvicting: return "evicting";
  }
  return "?";
}

Engine::Engine(EngineConfig config, Backend& backend, const Clock& clock, EngineObserver* observer)
    : config_(std::move(config)), backend_(backend), clock_(clock), observer_(observer) {
  eviction_ = makeEvictionPolicy(config_.policy.eviction);
  queue_policy_ = makeQueuePolicy(config_.policy.queue);
  const std::size_t num_gpus = config_.gpu_weight_budget.size();
  gpu_used_.assign(num_gpus, 0);
  gpu_busy_.assign(num_gpus, false);
  gpu_claimed_.assign(num_gpus, false);
  models_.resize(config_.models.size());
  doomed_.assign(config_.models.size(), false);
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
    // A model that can never fit would wait forever: refuse it up front.
    for (std::size_t g = 0; g < num_gpus; ++g)
      if (need[g] > config_.gpu_weight_budget[g])
        throw std::invalid_argument("model " + d.name + ": needs " + std::to_string(need[g]) + " bytes on GPU " +
                                    std::to_string(g) + ", budget is " +
                                    std::to_string(config_.gpu_weight_budget[g]));
  }
}

Engine::~Engine() = default;

int Engine::loadedModels() const {
  int n = 0;
  for (const auto& m : models_)
    if (m.residency == Residency::kLoading || m.residency == Residency::kResident) ++n;
  return n;
}

void Engine::onArrival(const Request& request) {
  if (request.model < 0 || static_cast<std::size_t>(request.model) >= models_.size())
    throw std::invalid_argument("request " + std::to_string(request.id) + " names unknown model " +
                                std::to_string(request.model));
  auto& state = models_[static_cast<std::size_t>(request.model)];
  state.queue.push_back({request, state.residency != Residency::kResident});
  ++state.accesses;
  ++in_flight_requests_;
  schedule();
}

void Engine::onLoadDone(OpId op, bool ok, const std::string& error) {
  auto it = ops_.find(op);
  if (it == ops_.end() || !it->second.is_load) throw std::logic_error("onLoadDone: unknown load " + std::to_string(op));
  PendingOp pending = std::move(it->second);
  ops_.erase(it);
  const LoadCommand& cmd = pending.load;
  auto& state = models_[static_cast<std::size_t>(cmd.model)];
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
      if (any_resident) {
        startEvict(m);
      } else {
        state.residency = Residency::kOffloaded;
      }
      failQueued(m, message);
    } else {
      state.residency = Residency::kResident;
      state.served_since_load = false;
      state.last_used = clock_.now();
    }
  }
  schedule();
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
  if (--state.pending_ops == 0) state.residency = Residency::kOffloaded;
  schedule();
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
    finishRequest(record);
  }
  schedule();
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
}

void Engine::schedule() {
  std::vector<ModelId> order;
  for (std::size_t m = 0; m < models_.size(); ++m)
    if (!models_[m].queue.empty()) order.push_back(static_cast<ModelId>(m));
  if (order.empty()) return;
  queue_policy_->order(order, *this);
  std::fill(gpu_claimed_.begin(), gpu_claimed_.end(), false);
  std::fill(doomed_.begin(), doomed_.end(), false);
  count_cap_claimed_ = false;
  for (ModelId m : order) {
    switch (models_[static_cast<std::size_t>(m)].residency) {
      case Residency::kResident: tryRunBatch(m); break;
      case Residency::kOffloaded: tryLoad(m); break;
      case Residency::kLoading:
      case Residency::kEvicting: break;
    }
  }
}

bool Engine::tryRunBatch(ModelId m) {
  auto& state = models_[static_cast<std::size_t>(m)];
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  if (state.running || doomed_[static_cast<std::size_t>(m)] || state.queue.empty()) return false;
  for (GpuId g : d.gpus)
    if (gpu_busy_[static_cast<std::size_t>(g)]) return false;
  RunningBatch batch;
  batch.cmd.batch = next_batch_++;
  batch.cmd.model = m;
  batch.cmd.tp = d.tp;
  batch.cmd.pp = d.pp;
  batch.cmd.gpus = d.gpus;
  while (!state.queue.empty() && static_cast<int>(batch.cmd.requests.size()) < d.max_batch) {
    batch.cmd.requests.push_back(state.queue.front().request);
    batch.waited.push_back(state.queue.front().waited_for_load);
    state.queue.pop_front();
  }
  state.running = true;
  state.served_since_load = true;
  state.last_used = clock_.now();
  for (GpuId g : d.gpus) gpu_busy_[static_cast<std::size_t>(g)] = true;
  BatchId id = batch.cmd.batch;
  auto [it, inserted] = batches_.emplace(id, std::move(batch));
  (void)inserted;
  backend_.execute(it->second.cmd);
  return true;
}

bool Engine::tryLoad(ModelId m) {
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  for (GpuId g : d.gpus)
    if (gpu_claimed_[static_cast<std::size_t>(g)]) return false;
  const int cap = config_.policy.max_loaded_models;
  if (cap > 0 && count_cap_claimed_) return false;

  // Room still missing per GPU, counting bytes of models already being evicted as freed soon.
  const std::vector<std::int64_t>& need = bytesNeeded(m);
  std::vector<std::int64_t> short_by(need.size(), 0);
  bool short_of_bytes = false;
  for (std::size_t g = 0; g < need.size(); ++g) {
    short_by[g] = gpu_used_[g] + need[g] - config_.gpu_weight_budget[g];
    if (need[g] > 0 && short_by[g] > 0) short_of_bytes = true;
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
  std::vector<ModelId> candidates;
  for (std::size_t v = 0; v < models_.size(); ++v) {
    const auto& sv = models_[v];
    if (static_cast<ModelId>(v) == m || sv.residency != Residency::kResident || doomed_[v]) continue;
    if (!sv.served_since_load && !sv.queue.empty()) continue;
    candidates.push_back(static_cast<ModelId>(v));
  }
  eviction_->rank(candidates, *this, m);

  // Bytes being freed by evictions in flight already count towards the room.
  std::vector<std::int64_t> still_short = short_by;
  for (std::size_t v = 0; v < models_.size(); ++v) {
    if (models_[v].residency != Residency::kEvicting) continue;
    const auto& freed = bytesNeeded(static_cast<ModelId>(v));
    for (std::size_t g = 0; g < freed.size(); ++g) still_short[g] -= freed[g];
  }
  auto satisfied = [&]() {
    for (std::size_t g = 0; g < need.size(); ++g)
      if (need[g] > 0 && still_short[g] > 0) return false;
    return over_cap <= 0;
  };
  std::vector<ModelId> plan;
  for (ModelId v : candidates) {
    if (satisfied()) break;
    const auto& frees = bytesNeeded(v);
    bool helps = over_cap > 0;
    for (std::size_t g = 0; g < need.size(); ++g)
      if (need[g] > 0 && still_short[g] > 0 && frees[g] > 0) helps = true;
    if (!helps) continue;
    plan.push_back(v);
    for (std::size_t g = 0; g < need.size(); ++g) still_short[g] -= frees[g];
    --over_cap;
  }
  if (satisfied()) {
    for (ModelId v : plan) {
      if (models_[static_cast<std::size_t>(v)].running) {
        doomed_[static_cast<std::size_t>(v)] = true;
      } else {
        startEvict(v);
      }
    }
  }
  // Either victims are on their way out or nothing can make room yet: wait, and keep later
  // (lower-priority) models from taking the GPUs this load needs.
  for (GpuId g : d.gpus) gpu_claimed_[static_cast<std::size_t>(g)] = true;
  if (cap > 0 && loadedModels() + 1 > cap) count_cap_claimed_ = true;
  return false;
}

void Engine::startLoad(ModelId m) {
  auto& state = models_[static_cast<std::size_t>(m)];
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  state.residency = Residency::kLoading;
  state.load_failed = false;
  state.load_error.clear();
  ++state.loads;
  state.pending_ops = d.numShards();
  Nanos now = clock_.now();
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
      cmd.route = {RoutePart{cmd.gpu, cmd.bytes, false}};
      state.shard_state[static_cast<std::size_t>(shard)] = Residency::kLoading;
      gpu_used_[static_cast<std::size_t>(cmd.gpu)] += cmd.bytes;
      PendingOp op;
      op.is_load = true;
      op.load = cmd;
      op.start = now;
      ops_.emplace(cmd.op, std::move(op));
      cmds.push_back(std::move(cmd));
    }
  }
  for (const auto& cmd : cmds) backend_.load(cmd);
}

void Engine::startEvict(ModelId m) {
  auto& state = models_[static_cast<std::size_t>(m)];
  const auto& d = config_.models[static_cast<std::size_t>(m)];
  if (state.running) throw std::logic_error("evicting model " + d.name + " while it runs a batch");
  if (state.residency == Residency::kLoading && state.pending_ops > 0)
    throw std::logic_error("evicting model " + d.name + " while it loads");
  state.residency = Residency::kEvicting;
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
  if (cmds.empty()) state.residency = Residency::kOffloaded;
  for (const auto& cmd : cmds) backend_.evict(cmd);
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
      if (s.residency != Residency::kResident)
        throw std::logic_error("model " + d.name + " is running while " + residencyName(s.residency));
      for (GpuId g : d.gpus) ++busy_count[static_cast<std::size_t>(g)];
    }
    if (s.residency == Residency::kResident)
      for (Residency r : s.shard_state)
        if (r != Residency::kResident) throw std::logic_error("model " + d.name + " resident with a shard not resident");
    if (s.residency == Residency::kLoading || s.residency == Residency::kResident) ++loaded;
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
}

}  // namespace computron
