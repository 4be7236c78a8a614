// Policies are small objects behind interfaces, chosen by name in the scenario. A policy set
// (PolicyConfig::name) picks one of each; `computron` reproduces the seed system: FCFS by the
// oldest queued request across models, LRU eviction, and a cap on the number of loaded models.
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
};

std::unique_ptr<EvictionPolicy> makeEvictionPolicy(const std::string& name);
std::unique_ptr<QueuePolicy> makeQueuePolicy(const std::string& name);
std::vector<std::string> evictionPolicyNames();
std::vector<std::string> queuePolicyNames();
std::vector<std::string> policySetNames();
// Fills eviction/queue names and the count cap's meaning from a set name; throws ConfigError
// naming `where` for an unknown set.
void applyPolicySet(PolicyConfig& config, const std::string& where);

}  // namespace computron
