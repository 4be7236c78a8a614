#include "common/core/policy.h"

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
std::vector<std::string> routingPolicyNames() { return {"direct", "multipath"}; }
std::vector<std::string> policySetNames() { return {"computron", "lru-bytes", "lfu", "gdsf", "best", "oracle"}; }

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
  } else if (config.name == "oracle") {
    // Offline bound: knows every future arrival.
    set("belady", "swap-aware", "oracle", "multipath", false);
  } else {
    throw ConfigError(where + ": unknown policy set '" + config.name + "' (known: " + joinNames(policySetNames()) + ")");
  }
}

}  // namespace computron
