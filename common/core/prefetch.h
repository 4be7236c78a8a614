// Prefetch: which offloaded model to load into idle host-link time before anyone asks for it, and
// which idle resident models may make room for it. The engine asks only when no demand load waits;
// it checks the links and makes the room (Engine::tryPrefetch). docs/policies.md describes each.
#pragma once

#include "common/core/registry.h"
#include "common/types.h"

namespace computron {

class Engine;

class PrefetchPolicy {
 public:
  virtual ~PrefetchPolicy() = default;
  // False: the engine never prefetches (the seed's).
  virtual bool active() const { return true; }
  // Reads the future (EngineConfig::future, the ArrivalOracle).
  virtual bool needsFuture() const { return false; }
  // How soon model m is wanted; higher is hotter, and a model at 0 or below is never prefetched.
  virtual double score(ModelId m, const Engine& engine) const = 0;
  // When room is made for a model of `score`, idle resident models scoring at least this are kept.
  virtual double keepThreshold(double score) const { return score; }

  struct Pick {
    ModelId model = -1;  // -1: nothing worth loading
    double score = 0;
  };
  // The hottest offloaded model with an empty queue (ties: the lower model id).
  Pick pick(const Engine& engine) const;
};

const Registry<PrefetchPolicy>& policyRegistry(const PrefetchPolicy*);
using PrefetchChoice = Choice<PrefetchPolicy>;

}  // namespace computron
