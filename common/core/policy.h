// Policies are small objects behind interfaces, chosen by name in the scenario. A policy set
// (PolicyConfig::name) picks one of each; `computron` reproduces the seed system: FCFS by the
// oldest queued request across models, LRU eviction, and a cap on the number of loaded models.
// Policies are stateless: the keys they rank by (decayed counts, GDSF priorities, rates) are kept
// by the engine in ModelRuntimeState. docs/policies.md describes each one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/core/engine.h"

namespace computron {

// Ranks eviction candidates, most evictable first. Candidates are resident models that are not
// loading; the engine never evicts a model that is loading or running, but may plan to evict a
// running one once its batch ends (it then starts no new batch on it).
class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string name() const = 0;
  virtual void rank(std::vector<ModelId>& candidates, const Engine& engine, ModelId needing) const = 0;
};

// Orders the models that have queued requests: the engine serves (or loads) them in this order.
class QueuePolicy {
 public:
  virtual ~QueuePolicy() = default;
  virtual std::string name() const = 0;
  virtual void order(std::vector<ModelId>& models, const Engine& engine) const = 0;
  // Swap-aware: keep a resident model with queued work from being swapped out while the model
  // that wants its room can still meet its deadline (see Engine::protectedFromSwap).
  virtual bool drainsBeforeSwap() const { return false; }
};

std::unique_ptr<EvictionPolicy> makeEvictionPolicy(const std::string& name);
std::unique_ptr<QueuePolicy> makeQueuePolicy(const std::string& name);
std::vector<std::string> evictionPolicyNames();
std::vector<std::string> queuePolicyNames();
std::vector<std::string> policySetNames();
std::vector<std::string> prefetchPolicyNames();
std::vector<std::string> routingPolicyNames();
// Fills the policy names (eviction, queue, prefetch, routing, admission) and the count cap's
// meaning from a set name; throws ConfigError naming `where` for an unknown set. Individual
// fields set afterwards override the set's choice.
void applyPolicySet(PolicyConfig& config, const std::string& where);

}  // namespace computron
