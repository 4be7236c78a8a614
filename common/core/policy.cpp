#include "common/core/policy.h"

#include <limits>
#include <numeric>

#include "common/core/placement.h"

#include <algorithm>
#include <functional>

#include "common/core/oracle.h"

namespace computron {
namespace {

// Sorts ascending by `key` (most evictable first), ties by least recently used, then model id.
template <typename Key>
void rankBy(std::vector<ModelId>& candidates, const Engine& engine, Key key) {
  std::vector<std::pair<ModelId, decltype(key(ModelId{}))>> keyed;
  for (ModelId m : candidates) keyed.emplace_back(m, key(m));
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    if (a.second != b.second) return a.second < b.second;
    const auto& ma = engine.model(a.first);
    const auto& mb = engine.model(b.first);
    if (ma.last_used != mb.last_used) return ma.last_used < mb.last_used;
    return a.first < b.first;
  });
  for (std::size_t i = 0; i < keyed.size(); ++i) candidates[i] = keyed[i].first;
}

class LruEviction final : public EvictionPolicy {
 public:
  std::string name() const override { return "lru"; }
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    rankBy(candidates, engine, [&](ModelId m) { return engine.model(m).last_used; });
  }
};

// Least frequently used, each access's weight halving every PolicyConfig::lfu_half_life.
class LfuEviction final : public EvictionPolicy {
 public:
  std::string name() const override { return "lfu"; }
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    rankBy(candidates, engine, [&](ModelId m) { return engine.lfuScore(m); });
  }
};

// GreedyDual-Size-Frequency: H = L + frequency * cost / size with cost = reload time over the
// model's host links and size = its bytes; L rises to the H of each evicted model (aging).
class GdsfEviction final : public EvictionPolicy {
 public:
  std::string name() const override { return "gdsf"; }
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    rankBy(candidates, engine, [&](ModelId m) { return engine.model(m).gdsf_priority; });
  }
};

// Demand-aware (as Clockwork): evict the model with the least outstanding work, queued requests
// weighted by their tokens; ties by LRU.
class DemandEviction final : public EvictionPolicy {
 public:
  std::string name() const override { return "demand"; }
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    rankBy(candidates, engine, [&](ModelId m) {
      std::int64_t work = 0;
      for (const auto& q : engine.model(m).queue) work += q.request.prompt_tokens + q.request.output_tokens;
      return work;
    });
  }
};

// Belady's offline optimum: evict the model whose next request comes furthest in the future.
// A model with queued requests is needed now.
class BeladyEviction final : public EvictionPolicy {
 public:
  std::string name() const override { return "belady"; }
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    const ArrivalOracle* future = engine.future();
    const Nanos now = engine.now();
    rankBy(candidates, engine, [&](ModelId m) {
      Nanos next = engine.model(m).queue.empty() ? future->nextArrival(m, now) : now;
      return -(next == ArrivalOracle::kNever ? ArrivalOracle::kNever : next - now);  // furthest first
    });
  }
};

class FcfsQueue final : public QueuePolicy {
 public:
  std::string name() const override { return "fcfs"; }
  void order(std::vector<ModelId>& models, const Engine& engine) const override {
    std::stable_sort(models.begin(), models.end(), [&](ModelId a, ModelId b) {
      const auto& ha = engine.model(a).queue.front().request;
      const auto& hb = engine.model(b).queue.front().request;
      if (ha.arrival != hb.arrival) return ha.arrival < hb.arrival;
      return ha.id < hb.id;
    });
  }
};

// Earliest deadline first: each model's head request's arrival plus its model's SLO.
class EdfQueue : public QueuePolicy {
 public:
  std::string name() const override { return "edf"; }
  void order(std::vector<ModelId>& models, const Engine& engine) const override {
    std::stable_sort(models.begin(), models.end(), [&](ModelId a, ModelId b) {
      const auto& ha = engine.model(a).queue.front().request;
      const auto& hb = engine.model(b).queue.front().request;
      Nanos da = engine.deadline(a, ha.arrival), db = engine.deadline(b, hb.arrival);
      if (da != db) return da < db;
      return ha.id < hb.id;
    });
  }
};

// EDF order, and a resident model drains its queue before it is swapped out while the waiting
// model's deadline allows.
class SwapAwareQueue final : public EdfQueue {
 public:
  std::string name() const override { return "swap-aware"; }
  bool drainsBeforeSwap() const override { return true; }
};

std::string joinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

std::vector<std::string> evictionPolicyNames() { return {"lru", "lfu", "gdsf", "demand", "belady"}; }
std::vector<std::string> queuePolicyNames() { return {"fcfs", "edf", "swap-aware"}; }
std::vector<std::string> prefetchPolicyNames() { return {"none", "rate", "oracle"}; }
std::vector<std::string> routingPolicyNames() { return {"direct", "peer", "multipath"}; }
std::vector<std::string> policySetNames() {
  return {"computron", "lru-bytes", "lfu", "gdsf", "best", "best-serial", "oracle"};
}

std::unique_ptr<EvictionPolicy> makeEvictionPolicy(const std::string& name) {
  if (name == "lru") return std::make_unique<LruEviction>();
  if (name == "lfu") return std::make_unique<LfuEviction>();
  if (name == "gdsf") return std::make_unique<GdsfEviction>();
  if (name == "demand") return std::make_unique<DemandEviction>();
  if (name == "belady") return std::make_unique<BeladyEviction>();
  throw ConfigError("unknown eviction policy '" + name + "' (known: " + joinNames(evictionPolicyNames()) + ")");
}

std::unique_ptr<QueuePolicy> makeQueuePolicy(const std::string& name) {
  if (name == "fcfs") return std::make_unique<FcfsQueue>();
  if (name == "edf") return std::make_unique<EdfQueue>();
  if (name == "swap-aware") return std::make_unique<SwapAwareQueue>();
  throw ConfigError("unknown queue policy '" + name + "' (known: " + joinNames(queuePolicyNames()) + ")");
}

void applyPolicySet(PolicyConfig& config, const std::string& where) {
  auto set = [&](const char* eviction, const char* queue, const char* prefetch, const char* routing, bool admission) {
    config.eviction = eviction;
    config.queue = queue;
    config.prefetch = prefetch;
    config.routing = routing;
    config.admission = admission;
    config.serial_loads = false;
  };
  if (config.name == "computron") {
    set("lru", "fcfs", "none", "direct", false);
  } else if (config.name == "lru-bytes") {
    // LRU bounded by each GPU's weight budget alone: no count cap.
    set("lru", "fcfs", "none", "direct", false);
    config.max_loaded_models = 0;
  } else if (config.name == "lfu") {
    set("lfu", "fcfs", "none", "direct", false);
  } else if (config.name == "gdsf") {
    set("gdsf", "fcfs", "none", "direct", false);
  } else if (config.name == "best") {
    // The online set that did best in docs/results.md.
    set("gdsf", "swap-aware", "none", "multipath", false);
  } else if (config.name == "best-serial") {
    // `best` with loads one at a time per host link: the best online set in docs/results.md.
    set("gdsf", "swap-aware", "none", "multipath", false);
    config.serial_loads = true;
  } else if (config.name == "oracle") {
    // Offline bound: knows every future arrival.
    set("belady", "swap-aware", "oracle", "multipath", false);
  } else {
    throw ConfigError(where + ": unknown policy set '" + config.name + "' (known: " + joinNames(policySetNames()) + ")");
  }
}

// ---- Placement (placement.h): in this file so it links with the engine ----------------------

namespace placement_detail {

bool fits(const ModelDeployment& d, int tp, int pp, const std::vector<GpuId>& gpus,
          const std::vector<std::int64_t>& budgets) {
  for (int p = 0; p < pp; ++p)
    for (int t = 0; t < tp; ++t)
      if (d.spec.shard(tp, pp, t, p).bytes > budgets[static_cast<std::size_t>(gpus[static_cast<std::size_t>(p * tp + t)])])
        return false;
  return true;
}

bool validSplit(const ModelSpec& spec, int tp, int pp) {
  try {
    spec.validateParallel(tp, pp, "");
    return true;
  } catch (const ConfigError&) {
    return false;
  }
}

// The split of a group of `size` GPUs: the widest valid tensor parallelism (pipeline stages add
// no speed to one batch), the rest as pipeline stages. {0, 0} when no split is valid.
std::pair<int, int> splitFor(const ModelSpec& spec, int size) {
  for (int tp = size; tp >= 1; tp /= 2)
    if (size % tp == 0 && validSplit(spec, tp, size / tp)) return {tp, size / tp};
  return {0, 0};
}

}  // namespace placement_detail

using namespace placement_detail;

std::vector<std::string> placementPolicyNames() { return {"all-gpus", "greedy"}; }

std::vector<ModelDeployment> placeModels(const std::vector<ModelDeployment>& models, const std::vector<double>& loads,
                                         const std::vector<std::int64_t>& gpu_budgets, const PlacementConfig& config,
                                         const std::string& where) {
  if (config.policy == "all-gpus") return models;
  if (config.policy != "greedy")
    throw ConfigError(where + ".policy: unknown placement '" + config.policy + "' (known: all-gpus, greedy)");
  const int num_gpus = static_cast<int>(gpu_budgets.size());
  if (config.group_gpus < 0 || (config.group_gpus > 0 && (num_gpus % config.group_gpus != 0 ||
                                                          (config.group_gpus & (config.group_gpus - 1)) != 0)))
    throw ConfigError(where + ".group_gpus: must be 0 (the fewest that fit) or a power of two dividing the " +
                      std::to_string(num_gpus) + " GPUs (it is " + std::to_string(config.group_gpus) + ")");
  if (config.share_below < 0 || config.share_below > 1)
    throw ConfigError(where + ".share_below: must be between 0 and 1");
  if (loads.size() != models.size()) throw ConfigError(where + ": one expected load per model is needed");

  std::vector<std::size_t> order(models.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return loads[a] > loads[b]; });
  const double hottest = loads.empty() ? 0 : *std::max_element(loads.begin(), loads.end());

  std::vector<ModelDeployment> placed = models;
  std::vector<double> gpu_load(static_cast<std::size_t>(num_gpus), 0);
  for (std::size_t m : order) {
    ModelDeployment& d = placed[m];
    if (config.share_below > 0 && loads[m] < config.share_below * hottest) {
      // Cold: keeps the scenario's own group, shared with the other cold models.
      for (GpuId g : d.gpus) gpu_load[static_cast<std::size_t>(g)] += loads[m];
      continue;
    }
    // Group size: the one asked for, else the fewest GPUs (a power of two) the model fits on.
    std::vector<int> sizes;
    if (config.group_gpus > 0) {
      sizes.push_back(config.group_gpus);
    } else {
      for (int s = 1; s <= num_gpus; s *= 2)
        if (num_gpus % s == 0) sizes.push_back(s);
    }
    bool done = false;
    for (int size : sizes) {
      auto [tp, pp] = splitFor(d.spec, size);
      if (tp == 0) continue;
      // Aligned blocks of `size` GPUs; the one with the least expected load on its busiest GPU.
      int best_block = -1;
      double best_load = std::numeric_limits<double>::infinity();
      for (int b = 0; b < num_gpus / size; ++b) {
        std::vector<GpuId> gpus;
        for (int i = 0; i < size; ++i) gpus.push_back(b * size + i);
        if (!fits(d, tp, pp, gpus, gpu_budgets)) continue;
        double load = 0;
        for (GpuId g : gpus) load = std::max(load, gpu_load[static_cast<std::size_t>(g)]);
        if (load < best_load) {
          best_load = load;
          best_block = b;
        }
      }
      if (best_block < 0) continue;
      d.tp = tp;
      d.pp = pp;
      d.gpus.clear();
      for (int i = 0; i < size; ++i) d.gpus.push_back(best_block * size + i);
      for (GpuId g : d.gpus) gpu_load[static_cast<std::size_t>(g)] += loads[m];
      done = true;
      break;
    }
    if (!done)
      throw ConfigError(where + ": model " + d.name + " fits no group of " +
                        (config.group_gpus > 0 ? std::to_string(config.group_gpus) : std::string("up to ") + std::to_string(num_gpus)) +
                        " GPUs (no valid TP x PP split whose shards fit the weight budgets)");
  }
  return placed;
}

nlohmann::json placementToJson(const PlacementConfig& config, const std::vector<ModelDeployment>& models,
                               const std::vector<double>& loads) {
  nlohmann::json groups = nlohmann::json::array();
  for (std::size_t m = 0; m < models.size(); ++m) {
    const auto& d = models[m];
    groups.push_back({{"model", d.name}, {"tp", d.tp}, {"pp", d.pp}, {"gpus", d.gpus},
                      {"expected_load", m < loads.size() ? loads[m] : 0.0}});
  }
  return {{"policy", config.policy}, {"group_gpus", config.group_gpus}, {"share_below", config.share_below},
          {"models", groups}};
}

}  // namespace computron
