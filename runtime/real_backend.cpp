#include "runtime/real_backend.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace computron::runtime {
namespace {

std::string gibText(std::int64_t bytes) {
  std::ostringstream s;
  s.precision(3);
  s << static_cast<double>(bytes) / static_cast<double>(kGiB) << " GiB";
  return s.str();
}

}  // namespace

ShardLayout RealBackend::shardLayout(const ModelDeployment& model, int shard) {
  return model.spec.shard(model.tp, model.pp, shard % model.tp, shard / model.tp);
}

void RealBackend::validate(const EngineConfig& config, int device_count) {
  for (std::size_t m = 0; m < config.models.size(); ++m) {
    const ModelDeployment& d = config.models[m];
    const std::string where = "models[" + std::to_string(m) + "] '" + d.name + "'";
    if (d.tp < 1 || d.pp < 1) throw ConfigError(where + ": tp and pp must be at least 1");
    d.spec.validateParallel(d.tp, d.pp, where);
    if (static_cast<int>(d.gpus.size()) != d.numShards()) {
      throw ConfigError(where + ": " + std::to_string(d.numShards()) + " shards but " +
                        std::to_string(d.gpus.size()) + " GPUs in its placement");
    }
    for (int s = 0; s < d.numShards(); ++s) {
      const GpuId g = d.gpus[static_cast<std::size_t>(s)];
      if (g < 0 || g >= device_count || static_cast<std::size_t>(g) >= config.gpu_weight_budget.size()) {
        throw ConfigError(where + ": shard " + std::to_string(s) + " is placed on GPU " + std::to_string(g) +
                          " but the runtime has " + std::to_string(device_count) + " device(s)");
      }
      const ShardLayout layout = shardLayout(d, s);
      const std::int64_t budget = config.gpu_weight_budget[static_cast<std::size_t>(g)];
      if (layout.bytes > budget) {
        throw ConfigError(where + ": shard " + std::to_string(s) + " needs " + gibText(layout.bytes) +
                          " but GPU " + std::to_string(g) + "'s weight budget is " + gibText(budget) +
                          "; split the model over more GPUs (tp/pp) or raise the budget");
      }
    }
  }
}

RealBackend::RealBackend(const EngineConfig& config, DeviceFactory& factory, RuntimeOptions options)
    : options_(std::move(options)), config_(config), device_kind_(factory.name()) {
  const int gpus = factory.deviceCount();
  validate(config_, gpus);
  if (options_.chunk_bytes <= 0) throw ConfigError("runtime: chunk size must be positive");

  StorePlan store_plan = planStore(config_, [&](GpuId g) { return factory.holdsShardsOf(g); });
  store_model_ = store_plan.store_model;
  HostStoreOptions host = options_.host;
  host.pinner = factory.pinner();
  if (options_.execution) {
    options_.execution->validate(config_);
    host.fill = [this](const ShardRequest& r, std::span<std::byte> image) {
      options_.execution->fillShard(config_.models[static_cast<std::size_t>(r.model)], r.model, r.shard, image);
    };
  }
  store_ = std::make_unique<HostWeightStore>(store_plan.requests, host);
  // Shards other processes hold: their checksums, once those processes have built their stores.
  const auto remote = factory.remoteChecksums();
  for (const ShardRequest& r : store_plan.requests) {
    if (r.held) continue;
    auto it = remote.find({r.model, r.shard});
    if (it == remote.end())
      throw ConfigError("runtime: no process holds shard " + std::to_string(r.shard) + " of model " +
                        config_.models[static_cast<std::size_t>(r.model)].name);
    store_->setRemoteChecksum(r.model, r.shard, it->second);
  }

  for (std::int64_t region : poolRegions(config_, options_.granule, gpus)) pools_.emplace_back(region, options_.granule);
  lost_.assign(pools_.size(), std::string());
  compacting_.assign(pools_.size(), false);
  for (std::size_t g = 0; g < pools_.size(); ++g) {
    devices_.push_back(factory.create(static_cast<GpuId>(g), pools_[g].capacity(), options_.chunk_bytes, queue_, clock_));
  }
  std::vector<Device*> all;
  for (auto& d : devices_) all.push_back(d.get());
  for (auto& d : devices_) d->connect(all);
  if (options_.execution) options_.execution->start(config_, all, queue_, clock_);
}

RealBackend::StorePlan RealBackend::planStore(const EngineConfig& config, const std::function<bool(GpuId)>& holds) {
  StorePlan plan;
  // Twins (same `weights`, same split) hold identical parameters: one host copy serves them all,
  // and a shard copied from a resident twin over NVLink checks against the same checksum.
  auto twins = [&](const ModelDeployment& a, const ModelDeployment& b) {
    return !a.weights.empty() && a.weights == b.weights && a.tp == b.tp && a.pp == b.pp &&
           a.spec.totalBytes() == b.spec.totalBytes();
  };
  for (std::size_t m = 0; m < config.models.size(); ++m) {
    const ModelDeployment& d = config.models[m];
    ModelId canonical = static_cast<ModelId>(m);
    for (std::size_t o = 0; o < m; ++o) {
      if (twins(config.models[o], d)) {
        canonical = plan.store_model[o];
        break;
      }
    }
    plan.store_model.push_back(canonical);
    if (canonical != static_cast<ModelId>(m)) continue;
    for (int s = 0; s < d.numShards(); ++s) {
      ShardRequest r;
      r.model = static_cast<ModelId>(m);
      r.shard = s;
      r.layout = shardLayout(d, s);
      r.dtype = d.spec.dtype;
      r.model_seed = m + 1;
      r.held = false;
      plan.requests.push_back(r);
    }
  }
  // A process holds a store shard when any deployment using it places that shard on a GPU of
  // the process (its loads read the host copy there).
  for (std::size_t m = 0; m < config.models.size(); ++m) {
    const ModelDeployment& d = config.models[m];
    for (int s = 0; s < d.numShards(); ++s) {
      if (!holds(d.gpus[static_cast<std::size_t>(s)])) continue;
      for (ShardRequest& r : plan.requests)
        if (r.model == plan.store_model[m] && r.shard == s) r.held = true;
    }
  }
  return plan;
}

std::vector<std::int64_t> RealBackend::poolRegions(const EngineConfig& config, std::int64_t granule, int gpus) {
  // Each GPU's region: its weight budget plus one granule per shard it may hold (weightPoolBytes).
  std::vector<int> shards_on(static_cast<std::size_t>(gpus), 0);
  for (const ModelDeployment& d : config.models)
    for (GpuId g : d.gpus)
      if (g >= 0 && g < gpus) ++shards_on[static_cast<std::size_t>(g)];
  std::vector<std::int64_t> regions;
  const std::size_t used = std::min(static_cast<std::size_t>(gpus), config.gpu_weight_budget.size());
  for (std::size_t g = 0; g < used; ++g) {
    const std::int64_t budget = config.gpu_weight_budget[g];
    regions.push_back(weightPoolBytes(budget, shards_on[g], granule));
  }
  return regions;
}

RealBackend::~RealBackend() {
  if (options_.execution) options_.execution->stop();
  for (auto& d : devices_) d->stop();
  devices_.clear();
}

const HostShard& RealBackend::hostShard(ModelId model, int shard) const {
  if (model < 0 || static_cast<std::size_t>(model) >= store_model_.size()) {
    throw std::out_of_range("runtime: no model " + std::to_string(model));
  }
  return store_->at(store_model_[static_cast<std::size_t>(model)], shard);
}

std::optional<Extent> RealBackend::residentExtent(ModelId model, int shard, GpuId gpu) const {
  auto it = placements_.find({model, shard, gpu});
  if (it == placements_.end() || it->second.loading || it->second.evicted) return std::nullopt;
  return it->second.extent;
}

std::vector<LoadRecord> RealBackend::takeLoadRecords() {
  std::vector<LoadRecord> out;
  out.swap(records_);
  return out;
}

bool RealBackend::idle() const {
  return loads_.empty() && batches_.empty() && deferred_loads_.empty() && deferred_execs_.empty() &&
         deferred_steps_.empty() &&
         relocations_.empty() && undelivered_internal_ == 0;
}

void RealBackend::restartClock() {
  if (!idle()) throw std::logic_error("runtime: clock restarted with work in flight");
  clock_.restart();
}

void RealBackend::pushInternal(DeviceEvent ev) {
  ++undelivered_internal_;
  ev.internal = true;
  queue_.push(std::move(ev));
}

void RealBackend::refuseLoad(const LoadCommand& cmd, const std::string& error) {
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kLoadRefused;
  ev.op = cmd.op;
  ev.gpu = cmd.gpu;
  ev.ok = false;
  ev.error = error;
  ev.time = clock_.now();
  LoadRecord rec;
  rec.cmd = cmd;
  rec.issued = rec.done = ev.time;
  rec.ok = false;
  rec.error = error;
  records_.push_back(rec);
  pushInternal(std::move(ev));
}

void RealBackend::load(const LoadCommand& cmd) {
  const Nanos now = clock_.now();
  if (command_log_ != nullptr) {
    *command_log_ << "load model=" << cmd.model << " shard=" << cmd.shard << " gpu=" << cmd.gpu << " route=";
    for (std::size_t i = 0; i < cmd.route.size(); ++i)
      *command_log_ << (i > 0 ? "," : "") << (cmd.route[i].from_device ? "copy:" : "link:") << cmd.route[i].via << ":"
                    << cmd.route[i].bytes;
    *command_log_ << "\n";
  }
  const std::string what = "load of model " + std::to_string(cmd.model) + " shard " + std::to_string(cmd.shard) +
                           " on GPU " + std::to_string(cmd.gpu);
  if (cmd.gpu < 0 || static_cast<std::size_t>(cmd.gpu) >= devices_.size()) {
    refuseLoad(cmd, what + ": no such GPU");
    return;
  }
  const HostShard* host = cmd.model >= 0 && static_cast<std::size_t>(cmd.model) < store_model_.size()
                              ? store_->find(store_model_[static_cast<std::size_t>(cmd.model)], cmd.shard)
                              : nullptr;
  if (host == nullptr) {
    refuseLoad(cmd, what + ": the shard is not registered");
    return;
  }
  if (host->bytes != cmd.bytes) {
    refuseLoad(cmd, what + ": command says " + std::to_string(cmd.bytes) + " bytes, registered shard has " +
                        std::to_string(host->bytes));
    return;
  }
  if (placements_.count({cmd.model, cmd.shard, cmd.gpu}) != 0) {
    refuseLoad(cmd, what + ": the shard is already on that GPU");
    return;
  }
  if (!lost_[static_cast<std::size_t>(cmd.gpu)].empty()) {
    refuseLoad(cmd, what + ": the GPU was lost (" + lost_[static_cast<std::size_t>(cmd.gpu)] + ")");
    return;
  }
  if (!tryStartLoad(cmd, now)) deferred_loads_.emplace_back(cmd, now);
}

bool RealBackend::tryStartLoad(const LoadCommand& cmd, Nanos issued) {
  const auto g = static_cast<std::size_t>(cmd.gpu);
  if (compacting_[g]) return false;
  DevicePool& pool = pools_[g];
  const HostShard& host = hostShard(cmd.model, cmd.shard);
  const std::string what = "load of model " + std::to_string(cmd.model) + " shard " + std::to_string(cmd.shard) +
                           " on GPU " + std::to_string(cmd.gpu);

  LoadPlan plan;
  try {
    plan = makeLoadPlan(host.segments, cmd.gpu, cmd.route, {options_.chunk_bytes, store_->pinPieceBytes()});
  } catch (const std::invalid_argument& e) {
    refuseLoad(cmd, what + ": " + e.what());
    return true;
  }
  std::vector<Key> sources;
  for (const auto& path : plan.paths) {
    if (path.via < 0 || static_cast<std::size_t>(path.via) >= devices_.size()) {
      refuseLoad(cmd, what + ": route goes through GPU " + std::to_string(path.via) + ", which does not exist");
      return true;
    }
    if (path.kind != PathKind::kDirect &&
        devices_[static_cast<std::size_t>(path.via)]->process() != devices_[static_cast<std::size_t>(cmd.gpu)]->process()) {
      refuseLoad(cmd, what + ": route goes through GPU " + std::to_string(path.via) + " of rank " +
                          std::to_string(devices_[static_cast<std::size_t>(path.via)]->process()) +
                          ", but NVLink copies join GPUs of one rank only");
      return true;
    }
    if (path.kind == PathKind::kFromDevice) {
      // The model's own copy or a twin's (same weights), resident on `via`.
      auto it = placements_.end();
      for (auto p = placements_.begin(); p != placements_.end(); ++p) {
        const auto& [model, shard, gpu] = p->first;
        if (gpu == path.via && shard == cmd.shard && !p->second.loading && !p->second.evicted &&
            store_model_[static_cast<std::size_t>(model)] == store_model_[static_cast<std::size_t>(cmd.model)]) {
          it = p;
          break;
        }
      }
      if (it == placements_.end()) {
        refuseLoad(cmd, what + ": route copies from GPU " + std::to_string(path.via) +
                            ", which holds no resident copy of the shard (nor of a twin's)");
        return true;
      }
      if (it->second.moving) return false;
      sources.push_back(it->first);
    }
  }

  std::optional<Extent> extent = pool.allocate(cmd.bytes);
  if (!extent) {
    // Enough bytes but no hole: compact idle extents. Otherwise wait for readers of evicted
    // shards or for running work to finish; refuse only what can never fit.
    auto movable = [&](std::int64_t offset) {
      for (const auto& [key, p] : placements_) {
        if (std::get<2>(key) == cmd.gpu && p.extent.offset == offset) return p.readers == 0 && !p.loading && !p.moving;
      }
      return false;
    };
    if (pool.rounded(cmd.bytes) > pool.capacity()) {
      refuseLoad(cmd, what + ": " + gibText(cmd.bytes) + " exceeds the GPU's whole pool");
      return true;
    }
    auto moves = pool.planCompaction(cmd.bytes, movable);
    if (moves && !moves->empty()) {
      const OpId token = next_token_++;
      std::vector<Key> moved;
      for (const auto& mv : *moves) {
        for (auto& [key, p] : placements_) {
          if (std::get<2>(key) == cmd.gpu && p.extent.offset == mv.from) {
            p.moving = true;
            p.extent.offset = mv.to;
            moved.push_back(key);
            break;
          }
        }
        pool.apply(mv);
      }
      relocations_[token] = {cmd.gpu, moved};
      compacting_[g] = true;
      ++compactions_;
      devices_[g]->submit(RelocateJob{token, *moves});
      return false;
    }
    bool can_wait = false;
    for (const auto& [key, p] : placements_) {
      if (std::get<2>(key) == cmd.gpu && (p.evicted || p.readers > 0 || p.loading)) can_wait = true;
    }
    if (can_wait) {
      // Enough bytes once shards are moved, but batches read some of them or they are still
      // loading: hold those shards' next batches until the compaction has run.
      if (auto all = pool.planCompaction(cmd.bytes, [](std::int64_t) { return true; })) {
        for (const auto& mv : *all) {
          for (const auto& [key, p] : placements_) {
            if (std::get<2>(key) == cmd.gpu && p.extent.offset == mv.from && (p.readers > 0 || p.loading) && !p.evicted)
              in_the_way_.insert(key);
          }
        }
      }
      return false;
    }
    refuseLoad(cmd, what + ": GPU pool has " + gibText(pool.freeBytes()) + " free (largest hole " +
                        gibText(pool.largestHole()) + ") but the shard needs " + gibText(cmd.bytes));
    return true;
  }

  for (const auto& key : sources) ++placements_[key].readers;
  Placement placement;
  placement.extent = *extent;
  placement.loading_op = cmd.op;
  placements_[{cmd.model, cmd.shard, cmd.gpu}] = placement;

  LoadOp op;
  op.cmd = cmd;
  op.plan = plan;
  op.sources = sources;
  op.record.cmd = cmd;
  op.record.issued = issued;
  op.record.started = clock_.now();
  for (const auto& path : plan.paths) {
    op.coverage.push_back(path.initial_coverage);
    op.record.paths.push_back({path.via, path.kind, path.bytes, 0});
  }
  op.open_paths = static_cast<int>(plan.paths.size());
  auto [it, inserted] = loads_.emplace(cmd.op, std::move(op));
  if (!inserted) throw std::logic_error("runtime: load op id reused while in flight");

  for (std::size_t p = 0; p < plan.paths.size(); ++p) {
    const PathPlan& path = plan.paths[p];
    PathJob job;
    job.op = cmd.op;
    job.path = static_cast<int>(p);
    job.model = cmd.model;
    job.shard = cmd.shard;
    job.target = cmd.gpu;
    job.kind = path.kind;
    job.dst_offset = extent->offset;
    job.host = host.data;
    job.host_model = store_model_[static_cast<std::size_t>(cmd.model)];
    if (path.kind == PathKind::kFromDevice) {
      for (const auto& key : sources) {
        if (std::get<2>(key) == path.via) job.src_offset = placements_.at(key).extent.offset;
      }
    }
    job.chunks = path.chunks;
    job.notify = path.notify;
    const GpuId mover = path.kind == PathKind::kDirect ? cmd.gpu : path.via;
    devices_[static_cast<std::size_t>(mover)]->submit(std::move(job));
  }
  return true;
}

void RealBackend::evict(const EvictCommand& cmd) {
  if (command_log_ != nullptr)
    *command_log_ << "evict model=" << cmd.model << " shard=" << cmd.shard << " gpu=" << cmd.gpu << "\n";
  auto it = placements_.find({cmd.model, cmd.shard, cmd.gpu});
  if (it != placements_.end()) {
    if (it->second.loading) {
      throw std::logic_error("runtime: evict of model " + std::to_string(cmd.model) + " shard " +
                             std::to_string(cmd.shard) + " while it is loading");
    }
    if (it->second.readers > 0 || it->second.moving) {
      it->second.evicted = true;  // released by the last reader
    } else {
      pools_[static_cast<std::size_t>(cmd.gpu)].release(it->second.extent);
      placements_.erase(it);
    }
  }
  // Eviction moves no bytes: the host copy is authoritative.
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kEvictDone;
  ev.op = cmd.op;
  ev.gpu = cmd.gpu;
  ev.time = clock_.now();
  pushInternal(std::move(ev));
}

void RealBackend::execute(const ExecuteCommand& cmd) {
  if (command_log_ != nullptr) {
    *command_log_ << "execute batch=" << cmd.batch << " model=" << cmd.model << " requests=";
    for (std::size_t i = 0; i < cmd.requests.size(); ++i) *command_log_ << (i > 0 ? "," : "") << cmd.requests[i].id;
    *command_log_ << "\n";
  }
  if (!tryStartExecute(cmd)) deferred_execs_.push_back(cmd);
}

void RealBackend::step(const StepCommand& cmd) {
  if (!supportsSteps()) throw std::logic_error("runtime: this execution runs no iteration steps");
  if (command_log_ != nullptr) {
    *command_log_ << "step batch=" << cmd.batch << " step=" << cmd.step << " model=" << cmd.model << " prefill=";
    for (std::size_t i = 0; i < cmd.prefill.size(); ++i) *command_log_ << (i > 0 ? "," : "") << cmd.prefill[i].request.id;
    *command_log_ << " decode=";
    for (std::size_t i = 0; i < cmd.decode.size(); ++i) *command_log_ << (i > 0 ? "," : "") << cmd.decode[i].request.id;
    *command_log_ << "\n";
  }
  if (!tryStartExecute(stepAsBatch(cmd), &cmd)) deferred_steps_.push_back(cmd);
}

ExecuteCommand RealBackend::stepAsBatch(const StepCommand& cmd) {
  ExecuteCommand batch;
  batch.batch = cmd.batch;
  batch.model = cmd.model;
  batch.tp = cmd.tp;
  batch.pp = cmd.pp;
  batch.gpus = cmd.gpus;
  return batch;
}

bool RealBackend::tryStartExecute(const ExecuteCommand& cmd, const StepCommand* step) {
  std::string error;
  std::vector<Key> keys;
  const bool real = options_.execution != nullptr;
  for (std::size_t i = 0; i < cmd.gpus.size(); ++i) {
    const Key key{cmd.model, static_cast<int>(i), cmd.gpus[i]};
    auto it = placements_.find(key);
    if (it == placements_.end()) {
      // A pipelined batch whose load still waits for room starts when the load does.
      for (const auto& [load, issued] : deferred_loads_) {
        (void)issued;
        if (load.model == cmd.model && load.shard == static_cast<int>(i) && load.gpu == cmd.gpus[i]) return false;
      }
    }
    // Real execution waits for a loading shard layer by layer; the placeholder only runs on
    // resident shards (a loading one waits for its load).
    if (it != placements_.end() && it->second.loading && !it->second.evicted && !real) return false;
    if (it == placements_.end() || it->second.evicted) {
      error = "batch " + std::to_string(cmd.batch) + ": model " + std::to_string(cmd.model) + " shard " +
              std::to_string(i) + " is not resident on GPU " + std::to_string(cmd.gpus[i]);
      break;
    }
    if (it->second.moving || in_the_way_.count(key) != 0) return false;
    keys.push_back(key);
  }
  BatchOp op;
  op.cmd = cmd;
  op.is_step = step != nullptr;
  op.step = step != nullptr ? step->step : 0;
  const Nanos now = clock_.now();
  if (!error.empty() || cmd.gpus.empty()) {
    if (error.empty()) error = "batch " + std::to_string(cmd.batch) + ": no GPUs";
    op.open_parts = 1;
    batches_[cmd.batch] = std::move(op);
    DeviceEvent ev;
    ev.kind = DeviceEvent::Kind::kExecDone;
    ev.batch = cmd.batch;
    ev.ok = false;
    ev.error = error;
    ev.start = ev.time = now;
    pushInternal(std::move(ev));
    return true;
  }
  if (real) {
    startRealExecute(cmd, keys, step);
    return true;
  }
  PlaceholderTimes times;
  if (step != nullptr) {
    times.first_token = options_.placeholder_step_cost ? options_.placeholder_step_cost(*step) : options_.placeholder_step;
  } else if (options_.placeholder_cost) {
    times = options_.placeholder_cost(cmd);
  } else {
    times.first_token = options_.placeholder_step;
    for (const auto& r : cmd.requests) times.finish.push_back(options_.placeholder_step * std::max(1, r.output_tokens));
  }
  // Phases end at the distinct times something is reported: the first token, then each finish.
  std::vector<Nanos> ends{std::max<Nanos>(0, times.first_token)};
  for (Nanos f : times.finish) ends.push_back(std::max(ends.front(), f));
  std::sort(ends.begin(), ends.end());
  ends.erase(std::unique(ends.begin(), ends.end()), ends.end());
  std::vector<Nanos> phases;
  for (std::size_t i = 0; i < ends.size(); ++i) phases.push_back(ends[i] - (i == 0 ? 0 : ends[i - 1]));
  for (std::size_t i = 0; i < cmd.requests.size(); ++i) {
    const Nanos f = i < times.finish.size() ? std::max(ends.front(), times.finish[i]) : ends.back();
    op.request_phase.push_back(static_cast<int>(std::lower_bound(ends.begin(), ends.end(), f) - ends.begin()));
  }
  op.held = keys;
  op.open_parts = static_cast<int>(keys.size());
  for (const auto& key : keys) ++placements_[key].readers;
  batches_[cmd.batch] = std::move(op);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    ExecJob job;
    job.batch = cmd.batch;
    job.model = cmd.model;
    job.part = static_cast<int>(i);
    job.weights = {placements_[keys[i]].extent};
    job.phase_ns = phases;
    devices_[static_cast<std::size_t>(std::get<2>(keys[i]))]->submit(std::move(job));
  }
  return true;
}

void RealBackend::startRealExecute(const ExecuteCommand& cmd, const std::vector<Key>& keys, const StepCommand* step) {
  BatchOp op;
  op.cmd = cmd;
  op.is_step = step != nullptr;
  op.step = step != nullptr ? step->step : 0;
  const std::shared_ptr<const StepCommand> shared_step = step != nullptr ? std::make_shared<const StepCommand>(*step) : nullptr;
  // Pass 0 is the prefill (each request's first token), pass k its (k+1)-th token.
  for (const auto& r : cmd.requests) op.request_phase.push_back(std::max(0, r.output_tokens - 1));
  op.held = keys;
  op.open_parts = static_cast<int>(keys.size());
  for (const auto& key : keys) ++placements_[key].readers;
  batches_[cmd.batch] = std::move(op);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const Placement& pl = placements_.at(keys[i]);
    ExecPart part;
    part.batch = cmd.batch;
    part.part = static_cast<int>(i);
    part.model = cmd.model;
    part.shard = static_cast<int>(i);
    part.gpu = std::get<2>(keys[i]);
    std::byte* base = devices_[static_cast<std::size_t>(part.gpu)]->poolBase();
    part.weights = base != nullptr ? base + pl.extent.offset : nullptr;  // null: another rank's GPU
    part.weights_offset = pl.extent.offset;
    part.requests = cmd.requests;
    part.step = shared_step;
    if (pl.loading) {
      LoadOp& load = loads_.at(pl.loading_op);
      if (!load.gate) {
        const HostShard& host = hostShard(load.cmd.model, load.cmd.shard);
        load.gate = std::make_shared<SegmentGate>(static_cast<int>(host.segments.size()));
        load.gate->advance(std::min(load.reported + 1, load.gate->segments() - 1));
        if (load.failed) load.gate->fail(load.error);
      }
      part.gate = load.gate;
    }
    options_.execution->submit(std::move(part));
  }
}

void RealBackend::dropReader(const Key& key) {
  auto it = placements_.find(key);
  if (it == placements_.end()) return;
  if (--it->second.readers == 0 && it->second.evicted && !it->second.moving) {
    pools_[static_cast<std::size_t>(std::get<2>(key))].release(it->second.extent);
    placements_.erase(it);
  }
}

void RealBackend::retryDeferred() {
  // In arrival order; a load that still cannot start keeps its place.
  in_the_way_.clear();
  for (std::size_t n = deferred_loads_.size(); n > 0; --n) {
    auto [cmd, issued] = deferred_loads_.front();
    deferred_loads_.pop_front();
    if (!tryStartLoad(cmd, issued)) deferred_loads_.emplace_back(cmd, issued);
  }
  for (std::size_t n = deferred_execs_.size(); n > 0; --n) {
    ExecuteCommand cmd = deferred_execs_.front();
    deferred_execs_.pop_front();
    if (!tryStartExecute(cmd)) deferred_execs_.push_back(cmd);
  }
  for (std::size_t n = deferred_steps_.size(); n > 0; --n) {
    StepCommand cmd = deferred_steps_.front();
    deferred_steps_.pop_front();
    if (!tryStartExecute(stepAsBatch(cmd), &cmd)) deferred_steps_.push_back(cmd);
  }
}

int RealBackend::dispatch(std::chrono::steady_clock::time_point deadline, BackendListener& listener) {
  std::deque<DeviceEvent> events = queue_.waitUntil(deadline);
  int delivered = 0;
  for (auto& ev : events) {
    if (ev.internal) --undelivered_internal_;
    handle(ev, listener, delivered);
    retryDeferred();
  }
  return delivered;
}

void RealBackend::finishLoad(OpId op_id, bool ok, std::string error, Nanos when, BackendListener& listener) {
  auto it = loads_.find(op_id);
  LoadOp op = std::move(it->second);
  loads_.erase(it);
  for (const auto& key : op.sources) dropReader(key);
  const Key key{op.cmd.model, op.cmd.shard, op.cmd.gpu};
  auto pl = placements_.find(key);
  if (op.gate) {
    if (ok) {
      op.gate->advance(op.gate->segments());
    } else {
      op.gate->fail(error);
    }
  }
  if (ok) {
    pl->second.loading = false;
  } else if (pl->second.readers > 0) {
    // A pipelined batch still reads what arrived: released when it is done.
    pl->second.loading = false;
    pl->second.evicted = true;
  } else {
    pools_[static_cast<std::size_t>(op.cmd.gpu)].release(pl->second.extent);
    placements_.erase(pl);
  }
  op.record.done = when;
  op.record.ok = ok;
  op.record.error = error;
  records_.push_back(op.record);
  listener.loadDone(op_id, ok, error);
}

void RealBackend::handle(DeviceEvent& ev, BackendListener& listener, int& delivered) {
  using Kind = DeviceEvent::Kind;
  switch (ev.kind) {
    case Kind::kEvictDone:
      ++delivered;
      listener.evictDone(ev.op);
      return;
    case Kind::kLoadRefused:
      ++delivered;
      listener.loadDone(ev.op, false, ev.error);
      return;
    case Kind::kGpuLost:
      // The device's jobs in flight were failed before this (runtime/mpi/rank_devices.h); later
      // loads onto the GPU are refused here, its batches fail on the device.
      if (ev.gpu < 0 || static_cast<std::size_t>(ev.gpu) >= lost_.size() || !lost_[static_cast<std::size_t>(ev.gpu)].empty()) return;
      lost_[static_cast<std::size_t>(ev.gpu)] = ev.error.empty() ? "lost" : ev.error;
      ++delivered;
      listener.gpuLost(ev.gpu, lost_[static_cast<std::size_t>(ev.gpu)]);
      return;
    case Kind::kPathProgress: {
      auto it = loads_.find(ev.op);
      if (it == loads_.end()) throw std::logic_error("runtime: progress for an unknown load");
      LoadOp& op = it->second;
      const auto p = static_cast<std::size_t>(ev.path);
      if (!ev.ok) {
        if (!op.failed) {
          op.failed = true;
          op.error = "load of model " + std::to_string(op.cmd.model) + " shard " + std::to_string(op.cmd.shard) +
                     " on GPU " + std::to_string(op.cmd.gpu) + " failed on its " + pathKindName(op.plan.paths[p].kind) +
                     " path via GPU " + std::to_string(op.plan.paths[p].via) + ": " + ev.error;
        }
      } else {
        op.coverage[p] = std::max(op.coverage[p], ev.segment);
      }
      if (ev.final) {
        --op.open_paths;
        op.record.paths[p].end = ev.time;
      }
      if (!op.failed) {
        const int ready = *std::min_element(op.coverage.begin(), op.coverage.end());
        const HostShard& host = hostShard(op.cmd.model, op.cmd.shard);
        while (op.reported < ready) {
          ++op.reported;
          LayerReady lr;
          lr.op = op.cmd.op;
          lr.model = op.cmd.model;
          lr.shard = op.cmd.shard;
          lr.gpu = op.cmd.gpu;
          lr.segment = op.reported;
          lr.layer = host.segments[static_cast<std::size_t>(op.reported)].layer;
          lr.time = ev.time;
          listener.layerReady(lr);
        }
        // The last segment opens only in finishLoad, after the device checksum: a batch that ran
        // ahead over arriving layers reports no result computed on weights that fail it.
        if (op.gate) op.gate->advance(std::min(op.reported + 1, op.gate->segments() - 1));
      } else if (op.gate) {
        op.gate->fail(op.error);
      }
      if (op.open_paths > 0) return;
      op.record.copy_done = ev.time;
      if (op.failed) {
        ++delivered;
        finishLoad(ev.op, false, op.error, ev.time, listener);
      } else if (options_.verify_loads) {
        const Extent extent = placements_.at({op.cmd.model, op.cmd.shard, op.cmd.gpu}).extent;
        devices_[static_cast<std::size_t>(op.cmd.gpu)]->submit(VerifyJob{op.cmd.op, extent.offset, op.cmd.bytes});
      } else {
        ++delivered;
        finishLoad(ev.op, true, {}, ev.time, listener);
      }
      return;
    }
    case Kind::kVerifyDone: {
      auto it = loads_.find(ev.op);
      if (it == loads_.end()) throw std::logic_error("runtime: checksum for an unknown load");
      const LoadOp& op = it->second;
      const HostShard& host = hostShard(op.cmd.model, op.cmd.shard);
      std::string error;
      if (!ev.ok) {
        error = "checksum of model " + std::to_string(op.cmd.model) + " shard " + std::to_string(op.cmd.shard) +
                " on GPU " + std::to_string(op.cmd.gpu) + " failed: " + ev.error;
      } else if (ev.checksum != host.checksum) {
        std::ostringstream s;
        s << "integrity: model " << op.cmd.model << " shard " << op.cmd.shard << " on GPU " << op.cmd.gpu
          << " has device checksum " << std::hex << ev.checksum << " but the host's is " << host.checksum;
        error = s.str();
      }
      it->second.record.verified = error.empty();
      ++delivered;
      finishLoad(ev.op, error.empty(), error, ev.time, listener);
      return;
    }
    case Kind::kExecDone: {
      auto it = batches_.find(ev.batch);
      if (it == batches_.end()) throw std::logic_error("runtime: completion of an unknown batch");
      BatchOp& op = it->second;
      if (!ev.ok && op.ok) {
        op.ok = false;
        op.error = ev.error;
      }
      op.parts.push_back(ev);
      if (--op.open_parts > 0) return;
      BatchOp done = std::move(op);
      batches_.erase(it);
      for (const auto& key : done.held) dropReader(key);
      if (done.is_step) {
        StepResult result;
        result.batch = done.cmd.batch;
        result.step = done.step;
        result.ok = done.ok;
        result.error = done.error;
        result.start = done.parts.front().start;
        result.end = done.parts.front().time;
        for (const auto& part : done.parts) {
          result.start = std::min(result.start, part.start);
          result.end = std::max(result.end, part.time);
          result.stopped.insert(result.stopped.end(), part.stopped.begin(), part.stopped.end());
        }
        std::sort(result.stopped.begin(), result.stopped.end());
        result.stopped.erase(std::unique(result.stopped.begin(), result.stopped.end()), result.stopped.end());
        ++delivered;
        listener.stepDone(result);
        return;
      }
      BatchResult result;
      result.batch = done.cmd.batch;
      result.ok = done.ok;
      result.error = done.error;
      result.start = done.parts.front().start;
      for (const auto& part : done.parts) result.start = std::min(result.start, part.start);
      auto stepEnd = [&](int step) {
        Nanos t = result.start;
        for (const auto& part : done.parts) {
          if (part.step_end.empty()) {
            t = std::max(t, part.time);
          } else {
            t = std::max(t, part.step_end[static_cast<std::size_t>(
                                std::clamp(step, 0, static_cast<int>(part.step_end.size()) - 1))]);
          }
        }
        return t;
      };
      result.first_token = stepEnd(0);
      for (std::size_t i = 0; i < done.cmd.requests.size(); ++i) {
        result.finish.push_back(i < done.request_phase.size() ? stepEnd(done.request_phase[i]) : stepEnd(1 << 30));
      }
      ++delivered;
      listener.batchDone(result);
      return;
    }
    case Kind::kRelocateDone: {
      auto it = relocations_.find(ev.op);
      if (it == relocations_.end()) throw std::logic_error("runtime: unknown relocation");
      const GpuId g = it->second.first;
      for (const auto& key : it->second.second) {
        auto pl = placements_.find(key);
        if (pl == placements_.end()) continue;
        pl->second.moving = false;
        if (pl->second.evicted && pl->second.readers == 0) {
          pools_[static_cast<std::size_t>(g)].release(pl->second.extent);
          placements_.erase(pl);
        }
      }
      compacting_[static_cast<std::size_t>(g)] = false;
      relocations_.erase(it);
      return;
    }
  }
}

}  // namespace computron::runtime
