#include "sim/simulator.h"

#include <algorithm>
#include <cmath>
#include <ostream>

#include "common/scenario/run_recorder.h"

namespace computron::sim {

Simulation::Simulation(const ClusterSpec& cluster, EngineConfig engine_config, std::unique_ptr<RequestSource> source,
                       EngineObserver* observer, SimOptions options)
    : cluster_(cluster),
      options_(options),
      links_(cluster),
      cost_(makeCostModel(cluster)),
      wake_(cluster.profile ? static_cast<Nanos>(std::llround(cluster.profile->wake_ms * 1e6)) : 0),
      source_(std::move(source)),
      observer_(observer),
      engine_(std::move(engine_config), *this, *this, this) {
  const std::size_t models = engine_.config().models.size();
  fresh_.assign(models, false);
  batches_timed_.assign(models, 0);
  batches_outside_.assign(models, 0);
  gpu_free_.assign(static_cast<std::size_t>(cluster.numGpus()), 0);
  busy_since_.assign(static_cast<std::size_t>(cluster.numGpus()), 0);
  heat_end_.assign(static_cast<std::size_t>(cluster.numGpus()), 0);
  host_busy_.assign(static_cast<std::size_t>(cluster.numGpus()), 0);
  host_queue_.resize(static_cast<std::size_t>(cluster.numGpus()));
  graph_tracked_.assign(models, false);
  graph_sizes_.resize(models);
  graph_captures_.assign(models, 0);
  busy_until_.assign(models, 0);
  held_until_.assign(models, 0);
  // The pools are mirrored for a run timed by a profile (the GPUs' own behaviour: graphs that a
  // move invalidates, loads that wait for a compaction); a roofline run keeps bytes only.
  bool mirror = false;
  for (std::size_t m = 0; m < models; ++m) {
    graph_tracked_[m] = cost_->tracksDecodeGraphs(engine_.config().models[m]);
    mirror = mirror || graph_tracked_[m] || cost_->sourceFor(engine_.config().models[m]) == "profile";
  }
  if (mirror) {
    // The runtime's regions (RealBackend::poolRegions): the weight budget plus a granule per shard.
    std::vector<int> shards_on(static_cast<std::size_t>(cluster.numGpus()), 0);
    for (const ModelDeployment& d : engine_.config().models)
      for (GpuId g : d.gpus)
        if (g >= 0 && g < cluster.numGpus()) ++shards_on[static_cast<std::size_t>(g)];
    const auto& budget = engine_.config().gpu_weight_budget;
    for (int g = 0; g < cluster.numGpus(); ++g) {
      const std::int64_t bytes = static_cast<std::size_t>(g) < budget.size() ? budget[static_cast<std::size_t>(g)] : 0;
      pools_.emplace_back(weightPoolBytes(bytes, shards_on[static_cast<std::size_t>(g)], DevicePool::kDefaultGranule),
                          DevicePool::kDefaultGranule);
    }
  }
}

bool Simulation::shardLoading(ModelId model, int shard) const {
  for (const auto& [op, info] : load_info_)
    if (info.model == model && info.shard == shard) return true;
  return false;
}

bool Simulation::tryRoom(const LoadCommand& cmd) {
  const auto g = static_cast<std::size_t>(cmd.gpu);
  const auto m = static_cast<std::size_t>(cmd.model);
  if (pools_.empty() || g >= pools_.size()) {
    startLoad(cmd);
    return true;
  }
  DevicePool& pool = pools_[g];
  Nanos ready = now_;
  std::optional<Extent> extent = pool.allocate(cmd.bytes);
  if (!extent) {
    // The runtime compacts the pool: shards that move get new addresses, and so new graphs. It
    // moves free shards only (no batch in flight, not loading); when that cannot make the room,
    // the load waits for the shards in the way, whose next batches wait behind it.
    std::map<std::int64_t, std::pair<ModelId, int>> on_gpu;  // offset -> (model, shard)
    for (const auto& [key, where] : extents_)
      if (where.first == cmd.gpu) on_gpu.emplace(where.second.offset, key);
    auto owner = [&](std::int64_t offset) -> const std::pair<ModelId, int>* {
      auto it = on_gpu.find(offset);
      return it == on_gpu.end() ? nullptr : &it->second;
    };
    auto free = [&](std::int64_t offset) {
      const auto* key = owner(offset);
      return key == nullptr || (busy_until_[static_cast<std::size_t>(key->first)] <= now_ &&
                                !shardLoading(key->first, key->second));
    };
    auto moves = pool.planCompaction(cmd.bytes, free);
    if (!moves || moves->empty()) {
      if (auto all = pool.planCompaction(cmd.bytes, [](std::int64_t) { return true; }); all && !all->empty()) {
        for (const DevicePool::Move& mv : *all)
          if (const auto* key = owner(mv.from); key != nullptr && !free(mv.from)) in_the_way_.insert(key->first);
        return false;
      }
    }
    if (moves && !moves->empty()) {
      double moved = 0;
      for (const DevicePool::Move& mv : *moves) moved += static_cast<double>(mv.bytes);
      const double hbm = cluster_.gpus[g].hbm_bandwidth;
      ready = now_ + (hbm > 0 ? static_cast<Nanos>(std::llround(2 * moved / hbm * 1e9)) : 0);
      for (const DevicePool::Move& mv : *moves) {
        pool.apply(mv);
        for (auto& [key, where] : extents_) {
          if (where.first != cmd.gpu || where.second.offset != mv.from) continue;
          where.second.offset = mv.to;
          last_offset_[key] = mv.to;
          graph_sizes_[static_cast<std::size_t>(key.first)].clear();
          auto& held = held_until_[static_cast<std::size_t>(key.first)];
          held = std::max(held, ready);
        }
      }
      extent = pool.allocate(cmd.bytes);
    }
  }
  const std::pair<ModelId, int> key{cmd.model, cmd.shard};
  auto last = last_offset_.find(key);
  if (!extent || last == last_offset_.end() || last->second != extent->offset) graph_sizes_[m].clear();
  if (!extent) {
    last_offset_.erase(key);
  } else {
    last_offset_[key] = extent->offset;
    extents_[key] = {cmd.gpu, *extent};
  }
  if (ready > now_) {
    waiting_room_.emplace(cmd.op, cmd);
    events_.push(ready, EventKind::kLoadStart, cmd.op);
  } else {
    startLoad(cmd);
  }
  return true;
}

void Simulation::retryRoom() {
  if (room_waits_.empty() && held_execs_.empty() && held_steps_.empty()) return;
  in_the_way_.clear();
  for (std::size_t n = room_waits_.size(); n > 0; --n) {
    LoadCommand cmd = std::move(room_waits_.front());
    room_waits_.pop_front();
    if (!tryRoom(cmd)) room_waits_.push_back(std::move(cmd));
  }
  std::vector<ExecuteCommand> execs;
  execs.swap(held_execs_);
  for (const ExecuteCommand& cmd : execs) execute(cmd);
  std::vector<StepCommand> steps;
  steps.swap(held_steps_);
  for (const StepCommand& cmd : steps) step(cmd);
}

void Simulation::releaseShard(const EvictCommand& cmd) {
  if (pools_.empty()) return;
  auto it = extents_.find({cmd.model, cmd.shard});
  if (it == extents_.end() || it->second.first != cmd.gpu) return;
  pools_[static_cast<std::size_t>(cmd.gpu)].release(it->second.second);
  extents_.erase(it);
}

void Simulation::addGraphCaptures(std::size_t m, const std::vector<Request>& requests, BatchTimes& times) {
  std::vector<std::int32_t> outputs;
  outputs.reserve(requests.size());
  for (const Request& r : requests) outputs.push_back(std::max<std::int32_t>(1, r.output_tokens));
  std::sort(outputs.begin(), outputs.end());
  if (outputs.empty()) return;
  // (first step of a size, captures up to and including that step)
  std::vector<std::pair<std::int32_t, Nanos>> from;
  Nanos extra = 0;
  std::size_t gone = 0;
  for (std::int32_t step = 1; step < outputs.back();) {
    while (gone < outputs.size() && outputs[gone] <= step) ++gone;
    extra += graphCapture(m, static_cast<int>(outputs.size() - gone));
    from.emplace_back(step, extra);
    step = outputs[gone];  // the next step at which a sequence has left
  }
  if (extra == 0) return;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    // Its last token comes at step output - 1 (0: the prefill's).
    const std::int32_t last = std::max<std::int32_t>(1, requests[i].output_tokens) - 1;
    auto it = std::upper_bound(from.begin(), from.end(), last,
                               [](std::int32_t v, const std::pair<std::int32_t, Nanos>& e) { return v < e.first; });
    if (it != from.begin()) times.finish[i] += std::prev(it)->second;
  }
  times.total += extra;
}

Nanos Simulation::graphCapture(std::size_t m, int size) {
  if (!graph_tracked_[m] || size <= 0) return 0;
  if (!graph_sizes_[m].insert(size).second) return 0;
  ++graph_captures_[m];
  return cost_->decodeGraphCapture(engine_.config().models[m], size);
}

Simulation::~Simulation() = default;

void Simulation::pullNextArrival() {
  if (next_arrival_) return;
  next_arrival_ = source_->next();
  if (!next_arrival_) return;
  // A closed-loop source may date a request at its predecessor's finish, which can be a moment
  // before the batch that finished it was reported.
  next_arrival_->arrival = std::max(next_arrival_->arrival, now_);
  // With a profile, the engine sees a request when the realtime driver would wake for it.
  events_.push(next_arrival_->arrival + wake_, EventKind::kArrival);
}

SimStats Simulation::run() {
  pullNextArrival();
  Nanos last_event = 0;  // time of the last event other than a wake-up: the run's end
  while (!events_.empty()) {
    Event e = events_.pop();
    ++stats_.events;
    if (e.kind == EventKind::kWake) {
      wakes_.erase(e.time);
      // A wake-up the engine no longer wants (the load it was for ended early) is dropped
      // without moving the clock, so it cannot stretch the run past its last completion.
      const std::optional<Nanos> due = engine_.nextWake();
      if (!due || *due > e.time) continue;
    }
    now_ = e.time;
    if (e.kind != EventKind::kWake) last_event = now_;
    switch (e.kind) {
      case EventKind::kArrival: {
        Request r = *next_arrival_;
        next_arrival_.reset();
        ++stats_.arrivals;
        engine_.onArrival(r);
        pullNextArrival();
        break;
      }
      case EventKind::kLinkCheck: handleLinkCheck(e.a); break;
      case EventKind::kLoadDone: {
        auto info = load_info_.find(e.a);
        ModelId model = -1;
        if (info != load_info_.end()) {
          model = info->second.model;
          auto& loads = last_loads_[model];
          const auto& d = engine_.config().models[static_cast<std::size_t>(model)];
          loads.resize(static_cast<std::size_t>(d.numShards()), {0, 0});
          loads[static_cast<std::size_t>(info->second.shard)] = {info->second.start, now_};
          fresh_[static_cast<std::size_t>(model)] = true;
          load_info_.erase(info);
        }
        engine_.onLoadDone(e.a);
        if (model >= 0) releaseGated(model);
        releaseLoadBlocked(e.a);
        break;
      }
      case EventKind::kEvictDone: engine_.onEvictDone(e.a); break;
      case EventKind::kBatchDone: {
        auto it = batches_.find(static_cast<BatchId>(e.a));
        BatchResult result = std::move(it->second);
        batches_.erase(it);
        engine_.onBatchDone(result);
        break;
      }
      case EventKind::kWake: engine_.onTimer(); break;
      case EventKind::kLoadStart: {
        auto it = waiting_room_.find(e.a);
        const LoadCommand cmd = std::move(it->second);
        waiting_room_.erase(it);
        startLoad(cmd);
        break;
      }
      case EventKind::kStepDone: {
        auto it = steps_.find(static_cast<BatchId>(e.a));
        StepResult result = std::move(it->second);
        steps_.erase(it);
        engine_.onStepDone(result);
        break;
      }
    }
    // Loads waiting for room retry once a batch, step, load or eviction has ended (after the
    // engine has heard of it, as on the GPUs).
    if (e.kind == EventKind::kLoadDone || e.kind == EventKind::kBatchDone || e.kind == EventKind::kStepDone ||
        e.kind == EventKind::kEvictDone)
      retryRoom();
    // The engine's wake-up (a batch due to start behind a load), once per distinct time.
    if (auto wake = engine_.nextWake()) {
      const Nanos at = std::max(*wake, now_);
      if (wakes_.insert(at).second) events_.push(at, EventKind::kWake);
    }
    if (options_.check_invariants) {
      engine_.checkInvariants();
      engine_.checkPassIsLocal();
    }
    if (options_.progress && options_.progress_every_events > 0 && stats_.events % options_.progress_every_events == 0)
      options_.progress(SimProgress{now_, stats_.events, stats_.arrivals, completed_});
  }
  if (engine_.requestsInFlight() != 0)
    throw std::logic_error("simulation ended with " + std::to_string(engine_.requestsInFlight()) +
                           " requests unserved");
  stats_.end_time = last_event;
  if (options_.progress) options_.progress(SimProgress{now_, stats_.events, stats_.arrivals, completed_, true});
  return stats_;
}

FlowId Simulation::startPart(OpId op, double bytes, std::vector<int> path, Nanos latency) {
  const FlowId flow = links_.start(now_, bytes, std::move(path), latency);
  flow_load_.emplace(flow, op);
  // A load whose parts all waited in order starts when its first part does.
  auto info = load_info_.find(op);
  if (info != load_info_.end() && info->second.start < 0) info->second.start = now_;
  return flow;
}

void Simulation::load(const LoadCommand& cmd) {
  load_info_[cmd.op] = ShardLoad{cmd.model, cmd.shard, -1, cmd.gpu};
  if (!tryRoom(cmd)) room_waits_.push_back(cmd);
}

void Simulation::startLoad(const LoadCommand& cmd) {
  int parts = 0;
  for (const auto& part : cmd.route) {
    const bool direct = part.from_node < 0 && part.via == cmd.gpu && !part.from_device;
    std::vector<int> path = part.from_node >= 0 ? links_.remotePath(part.from_node, cmd.gpu)
                            : direct            ? links_.hostPath(cmd.gpu)
                                                : links_.peerPath(part.via, cmd.gpu, part.from_device);
    Nanos latency = part.from_node >= 0 ? cluster_.network.nic_latency
                    : part.from_device  ? cluster_.nvlink_latency
                                        : cluster_.gpus[static_cast<std::size_t>(part.via)].host_link_latency;
    ++parts;
    if (direct && cluster_.host_loads_in_order) {
      const auto g = static_cast<std::size_t>(cmd.gpu);
      if (host_busy_[g] != 0) {
        host_queue_[g].push_back({cmd.op, static_cast<double>(part.bytes), std::move(path), latency});
        continue;
      }
      host_busy_[g] = startPart(cmd.op, static_cast<double>(part.bytes), std::move(path), latency);
      host_flow_gpu_.emplace(host_busy_[g], cmd.gpu);
      continue;
    }
    startPart(cmd.op, static_cast<double>(part.bytes), std::move(path), latency);
  }
  if (parts == 0) {
    load_info_[cmd.op].start = now_;
    events_.push(now_, EventKind::kLoadDone, cmd.op);
    return;
  }
  load_parts_left_[cmd.op] = parts;
  scheduleLinkCheck();
}

void Simulation::scheduleLinkCheck() {
  ++link_generation_;
  if (auto t = links_.nextCompletion()) events_.push(*t, EventKind::kLinkCheck, link_generation_);
}

void Simulation::handleLinkCheck(std::uint64_t generation) {
  if (generation != link_generation_) return;  // superseded by a later change of rates
  for (FlowId flow : links_.takeCompleted(now_)) {
    auto it = flow_load_.find(flow);
    OpId op = it->second;
    flow_load_.erase(it);
    // The next direct part of this GPU, in issue order (ClusterSpec::host_loads_in_order).
    if (auto h = host_flow_gpu_.find(flow); h != host_flow_gpu_.end()) {
      const auto g = static_cast<std::size_t>(h->second);
      host_flow_gpu_.erase(h);
      host_busy_[g] = 0;
      if (!host_queue_[g].empty()) {
        QueuedPart next = std::move(host_queue_[g].front());
        host_queue_[g].pop_front();
        host_busy_[g] = startPart(next.op, next.bytes, std::move(next.path), next.latency);
        host_flow_gpu_.emplace(host_busy_[g], static_cast<GpuId>(g));
      }
    }
    if (--load_parts_left_[op] == 0) {
      load_parts_left_.erase(op);
      // Delivered through the queue so completions at one instant keep their order.
      events_.push(now_, EventKind::kLoadDone, op);
    }
  }
  scheduleLinkCheck();
}

void Simulation::evict(const EvictCommand& cmd) {
  releaseShard(cmd);
  events_.push(now_ + cluster_.evict_latency, EventKind::kEvictDone, cmd.op);
}

void Simulation::execute(const ExecuteCommand& cmd) {
  if (in_the_way_.count(cmd.model) != 0) {  // a waiting load must move its shards first
    held_execs_.push_back(cmd);
    return;
  }
  if (engine_.model(cmd.model).residency == Residency::kLoading) {
    gated_.push_back({cmd, now_});
    return;
  }
  if (cluster_.batches_wait_for_loads) {
    std::vector<OpId> loads;
    for (const auto& [op, info] : load_info_) {
      if (info.model == cmd.model) continue;
      if (std::find(cmd.gpus.begin(), cmd.gpus.end(), info.gpu) != cmd.gpus.end()) loads.push_back(op);
    }
    if (!loads.empty()) {
      std::sort(loads.begin(), loads.end());
      load_blocked_.push_back({cmd, std::move(loads)});
      return;
    }
  }
  timeBatch(cmd, now_, nullptr);
}

void Simulation::releaseLoadBlocked(OpId finished) {
  for (std::size_t i = 0; i < load_blocked_.size();) {
    auto& loads = load_blocked_[i].loads;
    loads.erase(std::remove(loads.begin(), loads.end(), finished), loads.end());
    if (!loads.empty()) {
      ++i;
      continue;
    }
    const ExecuteCommand cmd = std::move(load_blocked_[i].cmd);
    load_blocked_.erase(load_blocked_.begin() + static_cast<std::ptrdiff_t>(i));
    timeBatch(cmd, now_, nullptr);
  }
}

Nanos Simulation::busyBefore(const std::vector<GpuId>& gpus, Nanos start, Nanos recover) {
  if (recover <= 0) return 0;
  Nanos busy = 0;
  for (GpuId g : gpus) {
    const auto gi = static_cast<std::size_t>(g);
    if (start - heat_end_[gi] >= recover) busy_since_[gi] = start;  // rested (or decoded): a new stretch
    busy = std::max(busy, start - busy_since_[gi]);
  }
  return busy;
}

// A session's step: a prefill step over its joining sequences' contexts, or a decode step over
// every decoding sequence, timed by the cost model (a profile's grids where it has one).
void Simulation::step(const StepCommand& cmd) {
  if (in_the_way_.count(cmd.model) != 0) {  // a waiting load must move its shards first
    held_steps_.push_back(cmd);
    return;
  }
  const auto& model = engine_.config().models[static_cast<std::size_t>(cmd.model)];
  const auto m = static_cast<std::size_t>(cmd.model);
  StepTime t;
  const Nanos busy = busyBefore(cmd.gpus, now_, cost_->powerRecover(model));
  if (!cmd.prefill.empty()) {
    Nanos free_since = 0;
    for (GpuId g : cmd.gpus) free_since = std::max(free_since, gpu_free_[static_cast<std::size_t>(g)]);
    std::vector<std::int32_t> contexts;
    contexts.reserve(cmd.prefill.size());
    for (const auto& s : cmd.prefill) contexts.push_back(s.context);
    t = cost_->prefillStep(model, contexts, fresh_[m], cmd.step == 0 ? std::max<Nanos>(0, now_ - free_since) : 0, busy);
  } else {
    double context = 0;
    for (const auto& s : cmd.decode) context += s.context;
    t = cost_->decodeStep(model, static_cast<int>(cmd.decode.size()), context);
    t.time += graphCapture(m, static_cast<int>(cmd.decode.size()));
  }
  fresh_[m] = false;
  ++batches_timed_[m];
  if (t.outside_profile) ++batches_outside_[m];
  StepResult result;
  result.batch = cmd.batch;
  result.step = cmd.step;
  result.start = std::max(now_, held_until_[m]);  // its shards are being moved by a compaction
  result.end = result.start + t.time;
  busy_until_[m] = std::max(busy_until_[m], result.end);
  for (GpuId g : cmd.gpus) {
    gpu_free_[static_cast<std::size_t>(g)] = result.end;
    if (!cmd.prefill.empty()) heat_end_[static_cast<std::size_t>(g)] = result.end;
  }
  steps_[cmd.batch] = result;
  events_.push(result.end, EventKind::kStepDone, static_cast<std::uint64_t>(cmd.batch));
}

// Layer-pipelined timing: the prefill is spread evenly over the model's decoder layers and its head, walked in
// order (pipeline stages run one after another); each layer starts when the previous one is done
// and its own bytes are on its GPU. A shard's bytes are taken to arrive evenly over its load's
// (start, end): embeddings first, then layer by layer, the head last, as the runtime copies them.
// Decode steps follow the prefill unchanged.
void Simulation::timeBatch(const ExecuteCommand& cmd, Nanos start,
                           const std::vector<std::pair<Nanos, Nanos>>* arrivals) {
  const auto& model = engine_.config().models[static_cast<std::size_t>(cmd.model)];
  const auto m = static_cast<std::size_t>(cmd.model);
  start = std::max(start, held_until_[m]);  // its shards are being moved by a compaction
  Nanos free_since = 0;
  for (GpuId g : cmd.gpus) free_since = std::max(free_since, gpu_free_[static_cast<std::size_t>(g)]);
  const Nanos busy = busyBefore(cmd.gpus, start, cost_->powerRecover(model));
  BatchTimes times = cost_->batchTimes(model, cmd.requests, fresh_[m], std::max<Nanos>(0, start - free_since), busy);
  fresh_[m] = false;
  if (graph_tracked_[m]) addGraphCaptures(m, cmd.requests, times);
  ++batches_timed_[m];
  if (times.outside_profile) ++batches_outside_[m];
  Nanos shift = 0;
  if (arrivals != nullptr) {
    const ModelSpec& spec = model.spec;
    const int layers = std::max(1, spec.num_layers);
    const double per_layer = static_cast<double>(times.first_token) / (layers + 1);  // the head is one more
    // When layer bytes [before, before + layer_bytes) of a shard are all present.
    auto arrival = [&](int shard, std::int64_t upto) {
      const ShardLayout l = spec.shard(model.tp, model.pp, shard % model.tp, shard / model.tp);
      const auto [s, e] = (*arrivals)[static_cast<std::size_t>(shard)];
      const double frac = l.bytes > 0 ? static_cast<double>(upto) / static_cast<double>(l.bytes) : 1.0;
      return static_cast<double>(s) + frac * static_cast<double>(e - s);
    };
    double t = static_cast<double>(start);
    for (int stage = 0; stage < model.pp; ++stage) {
      const ShardLayout first = spec.shard(model.tp, model.pp, 0, stage);
      for (int i = 0; i < first.num_layers; ++i) {
        double ready = 0;
        for (int r = 0; r < model.tp; ++r) {
          const ShardLayout l = spec.shard(model.tp, model.pp, r, stage);
          ready = std::max(ready, arrival(stage * model.tp + r, l.prefix_bytes + (i + 1) * l.layer_bytes));
        }
        t = std::max(t, ready) + per_layer;
      }
      if (stage == model.pp - 1) {
        for (int r = 0; r < model.tp; ++r) {
          const ShardLayout l = spec.shard(model.tp, model.pp, r, stage);
          t = std::max(t, arrival(stage * model.tp + r, l.bytes));
        }
        t += per_layer;
      }
    }
    shift = std::max<Nanos>(0, static_cast<Nanos>(std::llround(t)) - (start + times.first_token));
  }
  BatchResult result;
  result.batch = cmd.batch;
  result.start = start;
  result.first_token = start + times.first_token + shift;
  result.finish.reserve(times.finish.size());
  for (Nanos f : times.finish) result.finish.push_back(start + f + shift);
  batches_.emplace(cmd.batch, std::move(result));
  for (GpuId g : cmd.gpus) {
    gpu_free_[static_cast<std::size_t>(g)] = start + times.total + shift;
    heat_end_[static_cast<std::size_t>(g)] = start + times.first_token + shift;  // decode steps follow: no heat
  }
  busy_until_[m] = std::max(busy_until_[m], start + times.total + shift);
  events_.push(start + times.total + shift, EventKind::kBatchDone, static_cast<std::uint64_t>(cmd.batch));
}

void Simulation::releaseGated(ModelId model) {
  if (gated_.empty() || engine_.model(model).residency == Residency::kLoading) return;
  for (std::size_t i = 0; i < gated_.size();) {
    if (gated_[i].cmd.model != model) {
      ++i;
      continue;
    }
    GatedBatch g = std::move(gated_[i]);
    gated_.erase(gated_.begin() + static_cast<std::ptrdiff_t>(i));
    timeBatch(g.cmd, g.start, &last_loads_[model]);
  }
}

void Simulation::onRequestDone(const RequestRecord& record) {
  ++completed_;
  if (observer_) observer_->onRequestDone(record);
  source_->onRequestDone(record.request, record.finish);
  pullNextArrival();
}
void Simulation::onLoad(const LoadCommand& cmd, Nanos start, Nanos end, bool ok) {
  if (observer_) observer_->onLoad(cmd, start, end, ok);
}
void Simulation::onEvict(const EvictCommand& cmd, Nanos start, Nanos end) {
  if (observer_) observer_->onEvict(cmd, start, end);
}
void Simulation::onBatch(const ExecuteCommand& cmd, const BatchResult& result) {
  if (observer_) observer_->onBatch(cmd, result);
}
void Simulation::onStep(const StepCommand& cmd, const StepResult& result) {
  if (observer_) observer_->onStep(cmd, result);
}
void Simulation::onTokenGaps(ModelId m, Nanos gap, std::int64_t count) {
  if (observer_) observer_->onTokenGaps(m, gap, count);
}

nlohmann::json Simulation::timingReport() const {
  nlohmann::json models = nlohmann::json::object();
  const auto& config = engine_.config();
  for (std::size_t m = 0; m < config.models.size(); ++m) {
    const ModelDeployment& d = config.models[m];
    models[d.name] = {{"source", cost_->sourceFor(d)},
                      {"batches", batches_timed_[m]},
                      {"batches_outside_profile", batches_outside_[m]}};
    if (const std::string shape = cost_->prefillShapeFor(d); !shape.empty()) models[d.name]["prefill_shape"] = shape;
    if (graph_tracked_[m]) models[d.name]["decode_graph_captures"] = graph_captures_[m];
  }
  return models;
}

nlohmann::json runScenario(const Scenario& scenario, std::ostream* table_out, SimOptions options) {
  RunRecorder recorder(scenario, "sim");
  Simulation simulation(scenario.cluster, scenario.engine, scenario.makeWorkload(), &recorder, options);
  SimStats stats = simulation.run();
  nlohmann::json extra = {{"simulator", {{"events", stats.events}}}};
  // Only with a profile, so that runs without one keep their summary byte for byte.
  if (scenario.cluster.profile) {
    nlohmann::json models = simulation.timingReport();
    nlohmann::json warnings = nlohmann::json::array();
    for (const auto& [name, t] : models.items()) {
      if (t["source"] == "roofline")
        warnings.push_back("model " + name + ": the profile has no entry for its preset and layout; the roofline timed it");
      if (t["batches_outside_profile"].get<std::int64_t>() > 0)
        warnings.push_back("model " + name + ": " + t["batches_outside_profile"].dump() + " of " + t["batches"].dump() +
                           " batches had a shape outside the profile's measured grid (extrapolated)");
    }
    extra["timing"] = {{"profile", scenario.cluster.profile_file},
                       {"provenance", scenario.cluster.profile->provenance},
                       {"models", models},
                       {"warnings", warnings}};
  }
  nlohmann::json summary = recorder.finish(stats.end_time, extra);
  if (table_out) recorder.printTable(summary, *table_out);
  return summary;
}

}  // namespace computron::sim
