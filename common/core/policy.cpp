#include "common/core/policy.h"

#include <algorithm>

namespace computron {
namespace {

class LruEviction final : public EvictionPolicy {
 public:
  std::string name() const override { return "lru"; }
  void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId /*needing*/) const override {
    std::stable_sort(candidates.begin(), candidates.end(), [&](ModelId a, ModelId b) {
      const auto& ma = engine.model(a);
      const auto& mb = engine.model(b);
      if (ma.last_used != mb.last_used) return ma.last_used < mb.last_used;
      return a < b;
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

std::string joinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

std::vector<std::string> evictionPolicyNames() { return {"lru"}; }
std::vector<std::string> queuePolicyNames() { return {"fcfs"}; }
std::vector<std::string> policySetNames() { return {"computron", "lru-bytes"}; }

std::unique_ptr<EvictionPolicy> makeEvictionPolicy(const std::string& name) {
  if (name == "lru") return std::make_unique<LruEviction>();
  throw ConfigError("unknown eviction policy '" + name + "' (known: " + joinNames(evictionPolicyNames()) + ")");
}

std::unique_ptr<QueuePolicy> makeQueuePolicy(const std::string& name) {
  if (name == "fcfs") return std::make_unique<FcfsQueue>();
  throw ConfigError("unknown queue policy '" + name + "' (known: " + joinNames(queuePolicyNames()) + ")");
}

void applyPolicySet(PolicyConfig& config, const std::string& where) {
  if (config.name == "computron") {
    config.eviction = "lru";
    config.queue = "fcfs";
  } else if (config.name == "lru-bytes") {
    // LRU bounded by each GPU's weight budget alone: no count cap.
    config.eviction = "lru";
    config.queue = "fcfs";
    config.max_loaded_models = 0;
  } else {
    throw ConfigError(where + ": unknown policy set '" + config.name + "' (known: " + joinNames(policySetNames()) + ")");
  }
}

}  // namespace computron
