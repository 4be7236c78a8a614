// Load routing: how each shard's bytes reach its GPU (its own host link, a share of idle peers'
// host links forwarded over NVLink, or a copy from a resident twin). The engine asks once per load,
// before it issues any shard, and sends each shard's parts as planned. docs/policies.md describes
// each policy.
#pragma once

#include <vector>

#include "common/core/backend.h"
#include "common/core/registry.h"
#include "common/types.h"

namespace computron {

class Engine;

// How one shard is loaded.
struct ShardRoute {
  std::vector<RoutePart> parts;  // sum to the shard's bytes
  ModelId copy_from = -1;        // a twin whose resident shard is copied (parts: one from_device)
};

class RoutingPolicy {
 public:
  virtual ~RoutingPolicy() = default;
  // One route per shard of model m (index = pp_rank * tp + tp_rank), for a load issued now.
  virtual std::vector<ShardRoute> plan(ModelId m, const Engine& engine) const = 0;
  // Plans from the model's own GPUs alone (no twins, no other GPUs' links): then loads on GPUs no
  // model shares are independent, and the engine may schedule each such group on its own.
  virtual bool readsOnlyOwnGpus() const { return false; }
};

const Registry<RoutingPolicy>& policyRegistry(const RoutingPolicy*);
using RoutingChoice = Choice<RoutingPolicy>;

}  // namespace computron
