// Placement: which GPUs each model's shards live on, and its TP x PP split. `all-gpus` keeps the
// scenario's own (the seed's: every model over every GPU); `greedy` gives each model, hottest
// first, a group of its own sized to fit it and placed on the GPUs with the least expected load
// so far, so hot models run batches concurrently on different GPUs while cold ones share. On a
// cluster of several nodes a greedy group lies within one node or spans whole nodes, and its
// tensor-parallel groups never leave a node (stages may: one activation crosses the network per
// boundary, against two all-reduces per layer for a split TP group); at equal GPU load the node
// with less expected load wins, spreading hot models over the nodes' NICs and host links.
// Computed once at scenario parse time, so the simulator and the runtime run the same placement.
// Each placement policy is registered once under its name (registry.h); docs/policies.md
// describes the options.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/core/engine.h"
#include "common/core/registry.h"

namespace computron {

struct PlacementConfig;

// Places models on GPUs (see placeModels).
class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;
  // Reads the expected load per model (false: the loads passed are all 0, and need not be read).
  virtual bool usesExpectedLoads() const { return true; }
  // `gpu_node`: the node of each GPU (empty: one node).
  virtual std::vector<ModelDeployment> place(const std::vector<ModelDeployment>& models, const std::vector<double>& loads,
                                             const std::vector<std::int64_t>& gpu_budgets, const std::vector<int>& gpu_node,
                                             const PlacementConfig& config, const std::string& where) const = 0;
};

const Registry<PlacementPolicy>& policyRegistry(const PlacementPolicy*);
using PlacementChoice = Choice<PlacementPolicy>;

struct PlacementConfig {
  PlacementChoice policy{"all-gpus"};  // all-gpus (the scenario's own), greedy
  // greedy: GPUs in each model's group (a power of two dividing the GPU count); 0 = the fewest
  // GPUs the model fits on.
  int group_gpus = 0;
  // greedy: a model whose expected load is below this fraction of the hottest model's keeps the
  // scenario's own placement (shared by every such model); 0 = every model gets a group.
  double share_below = 0;
};

std::vector<std::string> placementPolicyNames();

// Places `models` (whose tp, pp and gpus hold the scenario's own placement) on GPUs with the given
// weight budgets. `loads` are the expected requests/s (or request counts) per model; `gpu_node`
// the node of each GPU on a cluster of several nodes (empty: one node). Throws ConfigError naming
// `where` (the placement's JSON path) when a model fits no group. Deterministic: ties go to the
// lower model index, then the lower GPU.
std::vector<ModelDeployment> placeModels(const std::vector<ModelDeployment>& models, const std::vector<double>& loads,
                                         const std::vector<std::int64_t>& gpu_budgets, const PlacementConfig& config,
                                         const std::string& where, const std::vector<int>& gpu_node = {});

// The effective placement as JSON for summary.json: the options and per model {name, tp, pp, gpus, load}.
nlohmann::json placementToJson(const PlacementConfig& config, const std::vector<ModelDeployment>& models,
                               const std::vector<double>& loads);

}  // namespace computron
