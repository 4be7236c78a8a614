#include "common/core/placement.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <numeric>

namespace computron {
namespace {

bool fits(const ModelDeployment& d, int tp, int pp, const std::vector<GpuId>& gpus,
          const std::vector<std::int64_t>& budgets) {
  return !shardOverBudget(d.spec, tp, pp, gpus, budgets).has_value();
}

bool validSplit(const ModelSpec& spec, int tp, int pp) {
  try {
    spec.validateParallel(tp, pp, "");
    return true;
  } catch (const ConfigError&) {
    return false;
  }
}

// The split of a group of `size` GPUs: the widest valid tensor parallelism up to `max_tp`
// (pipeline stages add no speed to one batch), the rest as pipeline stages. {0, 0} when no split
// is valid.
std::pair<int, int> splitFor(const ModelSpec& spec, int size, int max_tp) {
  for (int tp = size; tp >= 1; tp /= 2)
    if (tp <= max_tp)
    if (size % tp == 0 && validSplit(spec, tp, size / tp)) return {tp, size / tp};
  return {0, 0};
}

// Every model keeps the scenario's own tp, pp and gpus (the seed's).
class AllGpusPlacement final : public PlacementPolicy {
 public:
  bool usesExpectedLoads() const override { return false; }
  std::vector<ModelDeployment> place(const std::vector<ModelDeployment>& models, const std::vector<double>& /*loads*/,
                                     const std::vector<std::int64_t>& /*gpu_budgets*/, const std::vector<int>& /*gpu_node*/,
                                     const PlacementConfig& /*config*/, const std::string& /*where*/) const override {
    return models;
  }
};

// Hottest first, each model gets an aligned block of GPUs sized to fit it (or group_gpus), the
// block whose busiest GPU has the least expected load so far, with the widest TP the heads allow.
class GreedyPlacement final : public PlacementPolicy {
 public:
  std::vector<ModelDeployment> place(const std::vector<ModelDeployment>& models, const std::vector<double>& loads,
                                     const std::vector<std::int64_t>& gpu_budgets, const std::vector<int>& gpu_node,
                                     const PlacementConfig& config, const std::string& where) const override {
    const int num_gpus = static_cast<int>(gpu_budgets.size());
    const bool nodes = !gpu_node.empty();
    const int num_nodes = nodes ? *std::max_element(gpu_node.begin(), gpu_node.end()) + 1 : 1;
    std::vector<int> node_size(static_cast<std::size_t>(num_nodes), 0);
    for (int g = 0; g < num_gpus; ++g) ++node_size[static_cast<std::size_t>(nodes ? gpu_node[static_cast<std::size_t>(g)] : 0)];
    std::vector<double> node_load(static_cast<std::size_t>(num_nodes), 0);
    auto nodeOf = [&](GpuId g) { return nodes ? gpu_node[static_cast<std::size_t>(g)] : 0; };
    // The widest TP a block allows: the whole block within one node; across nodes only when it
    // holds each of its nodes whole and equally (then TP stays within a node); 0: not allowed.
    auto maxTpOf = [&](const std::vector<GpuId>& gpus) {
      const int first = nodeOf(gpus.front());
      int in_first = 0;
      for (GpuId g : gpus) in_first += nodeOf(g) == first ? 1 : 0;
      if (in_first == static_cast<int>(gpus.size())) return in_first;
      if (in_first != node_size[static_cast<std::size_t>(first)]) return 0;
      for (std::size_t i = 0; i < gpus.size(); i += static_cast<std::size_t>(in_first)) {
        const int n = nodeOf(gpus[i]);
        if (node_size[static_cast<std::size_t>(n)] != in_first) return 0;
        for (std::size_t j = i; j < i + static_cast<std::size_t>(in_first); ++j)
          if (j >= gpus.size() || nodeOf(gpus[j]) != n) return 0;
      }
      return in_first;
    };
    auto blockNodeLoad = [&](const std::vector<GpuId>& gpus) {
      double load = 0;
      int last = -1;
      for (GpuId g : gpus)
        if (nodeOf(g) != last) {
          last = nodeOf(g);
          load += node_load[static_cast<std::size_t>(last)];
        }
      return load;
    };
    auto addLoad = [&](const std::vector<GpuId>& gpus, double load, std::vector<double>& gpu_load) {
      for (GpuId g : gpus) gpu_load[static_cast<std::size_t>(g)] += load;
      // The node's share: the model's load split over the nodes its GPUs sit on.
      for (GpuId g : gpus) node_load[static_cast<std::size_t>(nodeOf(g))] += load / static_cast<double>(gpus.size());
    };
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
        addLoad(d.gpus, loads[m], gpu_load);
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
        // Aligned blocks of `size` GPUs that keep TP within a node; the one with the least expected
        // load on its busiest GPU, then (several nodes) on its nodes.
        int best_block = -1, best_tp = 0, best_pp = 0;
        double best_load = std::numeric_limits<double>::infinity();
        double best_node_load = std::numeric_limits<double>::infinity();
        for (int b = 0; b < num_gpus / size; ++b) {
          std::vector<GpuId> gpus;
          for (int i = 0; i < size; ++i) gpus.push_back(b * size + i);
          const int max_tp = maxTpOf(gpus);
          if (max_tp == 0) continue;
          auto [tp, pp] = splitFor(d.spec, size, max_tp);
          if (tp == 0 || !fits(d, tp, pp, gpus, gpu_budgets)) continue;
          double load = 0;
          for (GpuId g : gpus) load = std::max(load, gpu_load[static_cast<std::size_t>(g)]);
          const double node_load_here = nodes ? blockNodeLoad(gpus) : 0;
          if (load < best_load || (load == best_load && node_load_here < best_node_load)) {
            best_load = load;
            best_node_load = node_load_here;
            best_block = b;
            best_tp = tp;
            best_pp = pp;
          }
        }
        if (best_block < 0) continue;
        d.tp = best_tp;
        d.pp = best_pp;
        d.gpus.clear();
        for (int i = 0; i < size; ++i) d.gpus.push_back(best_block * size + i);
        addLoad(d.gpus, loads[m], gpu_load);
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
};

}  // namespace

const Registry<PlacementPolicy>& policyRegistry(const PlacementPolicy*) {
  static const Registry<PlacementPolicy> registry = [] {
    Registry<PlacementPolicy> r("placement");
    r.add("all-gpus", "every model keeps the scenario's own tp, pp and gpus (the seed's)",
          [] { return std::make_unique<AllGpusPlacement>(); });
    r.add("greedy", "hottest model first, each on the least loaded block of GPUs that fits it",
          [] { return std::make_unique<GreedyPlacement>(); });
    return r;
  }();
  return registry;
}

std::vector<std::string> placementPolicyNames() { return PlacementChoice::registry().names(); }

std::vector<ModelDeployment> placeModels(const std::vector<ModelDeployment>& models, const std::vector<double>& loads,
                                         const std::vector<std::int64_t>& gpu_budgets, const PlacementConfig& config,
                                         const std::string& where, const std::vector<int>& gpu_node) {
  return config.policy->place(models, loads, gpu_budgets, gpu_node, config, where);
}

nlohmann::json placementToJson(const PlacementConfig& config, const std::vector<ModelDeployment>& models,
                               const std::vector<double>& loads) {
  nlohmann::json groups = nlohmann::json::array();
  for (std::size_t m = 0; m < models.size(); ++m) {
    const auto& d = models[m];
    groups.push_back({{"model", d.name}, {"tp", d.tp}, {"pp", d.pp}, {"gpus", d.gpus},
                      {"expected_load", m < loads.size() ? loads[m] : 0.0}});
  }
  return {{"policy", config.policy.name()}, {"group_gpus", config.group_gpus}, {"share_below", config.share_below},
          {"models", groups}};
}

}  // namespace computron
