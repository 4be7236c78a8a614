// Policies are small objects behind interfaces, each registered once under its name (registry.h)
// and chosen by name in the scenario: eviction and queue order here, prefetch (prefetch.h), load
// routing (routing.h) and placement (placement.h). A policy set (PolicyConfig::name) picks one of
// each; `computron` reproduces the seed system: FCFS by the oldest queued request across models,
// LRU eviction, and a cap on the number of loaded models.
// Policies are stateless: the keys they rank by (decayed counts, GDSF priorities, rates) are kept
// by the engine in ModelRuntimeState. docs/policies.md describes each one.
#pragma once

#include <string>
#include <vector>

#include "common/core/prefetch.h"
#include "common/core/registry.h"
#include "common/core/routing.h"
#include "common/types.h"

namespace computron {

class Engine;
struct PolicyConfig;

// Ranks eviction candidates, most evictable first. Candidates are resident models that are not
// loading; the engine never evicts a model that is loading or running, but may plan to evict a
// running one once its batch ends (it then starts no new batch on it).
class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId needing) const = 0;
  // Reads the future (EngineConfig::future, the ArrivalOracle).
  virtual bool needsFuture() const { return false; }
};

// Orders the models that have queued requests: the engine serves (or loads) them in this order.
class QueuePolicy {
 public:
  virtual ~QueuePolicy() = default;
  virtual void order(std::vector<ModelId>& models, const Engine& engine) const = 0;
  // Swap-aware: keep a resident model with queued work from being swapped out while the model
  // that wants its room can still meet its deadline (see Engine::protectedFromSwap).
  virtual bool drainsBeforeSwap() const { return false; }
};

const Registry<EvictionPolicy>& policyRegistry(const EvictionPolicy*);
const Registry<QueuePolicy>& policyRegistry(const QueuePolicy*);
using EvictionChoice = Choice<EvictionPolicy>;
using QueueChoice = Choice<QueuePolicy>;

// A policy set: one choice of each kind, filled into a PolicyConfig by applyPolicySet.
struct PolicySet {
  EvictionChoice eviction;
  QueueChoice queue;
  PrefetchChoice prefetch;
  RoutingChoice routing;
  bool admission = false;
  bool serial_loads = false;
  bool keeps_count_cap = true;  // false: max_loaded_models is cleared (bounded by bytes alone)
};

const Registry<PolicySet>& policyRegistry(const PolicySet*);
using PolicySetChoice = Choice<PolicySet>;

// The registered names of each kind, in registration order.
std::vector<std::string> evictionPolicyNames();
std::vector<std::string> queuePolicyNames();
std::vector<std::string> prefetchPolicyNames();
std::vector<std::string> routingPolicyNames();
std::vector<std::string> policySetNames();

// Every policy registry, for listings (`computron presets`, the docs check), in a fixed order:
// policy sets, eviction, queue, prefetch, routing, placement.
struct RegisteredPolicy {
  std::string name;
  std::string description;
};
struct PolicyKindListing {
  std::string key;    // the kind in one word, as in docs/policies.md's tables: set, eviction, ...
  std::string title;  // "policy sets", "eviction policies", ...
  std::string field;  // where a scenario names one: policy.name, policy.eviction, ...
  std::vector<RegisteredPolicy> policies;  // in registration order
};
std::vector<PolicyKindListing> registeredPolicies();

// Fills the choices (eviction, queue, prefetch, routing, admission, serial loads) and the count
// cap's meaning from the set config.name. Individual fields set afterwards override the set's.
void applyPolicySet(PolicyConfig& config);
// The same; `where` was the set name's JSON path when names were still checked here (they are
// checked when parsed now: PolicyConfig::name holds a registered set).
inline void applyPolicySet(PolicyConfig& config, const std::string& /*where*/) { applyPolicySet(config); }

}  // namespace computron
