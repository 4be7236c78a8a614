#include "common/core/policy.h"

#include <algorithm>
#include <memory>

#include "common/core/engine.h"
#include "common/core/oracle.h"

namespace computron {
namespace {

// Sorts ascending by `key` (most evictable first), ties by least recently used, then model id.
template <typename Key>
void rankBy(std::vector<ModelId>& candidates, const Engine& engine, Key key) {
  std::vector<std::pair<ModelId, decltype(key(ModelId{}))>> keyed;
  for (ModelId m : candidates) keyed.emplace_back(m, key(m));
  std::sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {  // total: ends with the id
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
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    rankBy(candidates, engine, [&](ModelId m) { return engine.model(m).last_used; });
  }
};

// Least frequently used, each access's weight halving every PolicyConfig::lfu_half_life.
class LfuEviction final : public EvictionPolicy {
 public:
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    rankBy(candidates, engine, [&](ModelId m) { return engine.lfuScore(m); });
  }
};

// GreedyDual-Size-Frequency: H = L + frequency * cost / size with cost = reload time over the
// model's host links and size = its bytes; L rises to the H of each evicted model (aging).
class GdsfEviction final : public EvictionPolicy {
 public:
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    rankBy(candidates, engine, [&](ModelId m) { return engine.model(m).gdsf_priority; });
  }
};

// Demand-aware (as Clockwork): evict the model with the least outstanding work, queued requests
// weighted by their tokens; ties by LRU.
class DemandEviction final : public EvictionPolicy {
 public:
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
  bool needsFuture() const override { return true; }
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
  void order(std::vector<ModelId>& models, const Engine& engine) const override {
    std::sort(models.begin(), models.end(), [&](ModelId a, ModelId b) {  // a total order: no ties
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
  void order(std::vector<ModelId>& models, const Engine& engine) const override {
    std::sort(models.begin(), models.end(), [&](ModelId a, ModelId b) {  // a total order: no ties
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
  bool drainsBeforeSwap() const override { return true; }
};

}  // namespace

const Registry<EvictionPolicy>& policyRegistry(const EvictionPolicy*) {
  static const Registry<EvictionPolicy> registry = [] {
    Registry<EvictionPolicy> r("eviction policy");
    r.add("lru", "least recently used (batch start or load finish)", [] { return std::make_unique<LruEviction>(); });
    r.add("lfu", "fewest accesses, each access's weight halving every lfu_half_life_s",
          [] { return std::make_unique<LfuEviction>(); });
    r.add("gdsf", "GreedyDual-Size-Frequency: accesses since load x reload time / bytes, aged",
          [] { return std::make_unique<GdsfEviction>(); });
    r.add("demand", "least outstanding work (queued prompt + output tokens), as Clockwork",
          [] { return std::make_unique<DemandEviction>(); });
    r.add("belady", "offline: the model whose next request is furthest ahead (reads the workload ahead)",
          [] { return std::make_unique<BeladyEviction>(); });
    return r;
  }();
  return registry;
}

const Registry<QueuePolicy>& policyRegistry(const QueuePolicy*) {
  static const Registry<QueuePolicy> registry = [] {
    Registry<QueuePolicy> r("queue policy");
    r.add("fcfs", "models ordered by their oldest queued request (the seed's)", [] { return std::make_unique<FcfsQueue>(); });
    r.add("edf", "earliest deadline first: the oldest request's arrival + its model's SLO",
          [] { return std::make_unique<EdfQueue>(); });
    r.add("swap-aware", "EDF, and a resident model with queued work is not swapped out while the waiting one can wait",
          [] { return std::make_unique<SwapAwareQueue>(); });
    return r;
  }();
  return registry;
}

const Registry<PolicySet>& policyRegistry(const PolicySet*) {
  static const Registry<PolicySet> registry = [] {
    Registry<PolicySet> r("policy set");
    auto set = [&r](const char* name, const char* description, PolicySet choices) {
      r.add(name, description, [choices] { return std::make_unique<PolicySet>(choices); });
    };
    set("computron", "the seed system, exactly; keeps max_loaded_models", {"lru", "fcfs", "none", "direct"});
    set("lru-bytes", "LRU with no count cap: bounded by bytes alone",
        {"lru", "fcfs", "none", "direct", false, false, /*keeps_count_cap=*/false});
    set("lfu", "LFU eviction, otherwise the seed's", {"lfu", "fcfs", "none", "direct"});
    set("gdsf", "GDSF eviction, otherwise the seed's", {"gdsf", "fcfs", "none", "direct"});
    set("best", "GDSF, swap-aware queue, multi-path loads over shared links", {"gdsf", "swap-aware", "none", "multipath"});
    set("best-serial", "best with serial_loads: the best online set in docs/results.md",
        {"gdsf", "swap-aware", "none", "multipath", false, /*serial_loads=*/true});
    set("oracle", "offline bound: reads the whole workload ahead", {"belady", "swap-aware", "oracle", "multipath"});
    return r;
  }();
  return registry;
}

std::vector<std::string> evictionPolicyNames() { return EvictionChoice::registry().names(); }
std::vector<std::string> queuePolicyNames() { return QueueChoice::registry().names(); }
std::vector<std::string> prefetchPolicyNames() { return PrefetchChoice::registry().names(); }
std::vector<std::string> routingPolicyNames() { return RoutingChoice::registry().names(); }
std::vector<std::string> policySetNames() { return PolicySetChoice::registry().names(); }

void applyPolicySet(PolicyConfig& config) {
  const PolicySet& set = config.name.policy();
  config.eviction = set.eviction;
  config.queue = set.queue;
  config.prefetch = set.prefetch;
  config.routing = set.routing;
  config.admission = set.admission;
  config.serial_loads = set.serial_loads;
  if (!set.keeps_count_cap) config.max_loaded_models = 0;
}

}  // namespace computron
