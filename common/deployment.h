// A model as deployed on the cluster: its spec, parallel split and GPUs. Read by the scheduling
// core, the cost model and the backends, so it sits below all of them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/model_spec.h"
#include "common/types.h"

namespace computron {

// One model as deployed: its spec, parallel split and the GPUs its shards live on.
struct ModelDeployment {
  std::string name;
  // Deployments with the same `weights` hold identical parameters: with the same TP x PP, shard i
  // of one can be copied from shard i of another that is resident (RoutePart.from_device).
  std::string weights;
  ModelSpec spec;
  int tp = 1;
  int pp = 1;
  std::vector<GpuId> gpus;  // shard i (= pp_rank * tp + tp_rank) on gpus[i]; size tp * pp
  int max_batch = 8;
  Nanos slo = 0;  // latency objective; 0 = none
  // Simulator only: a fixed time per batch instead of the cost model (queueing experiments).
  Nanos fixed_batch_time = 0;
  int numShards() const { return tp * pp; }
};

// A GPU whose shards of one deployment exceed its weight budget: `bytes` is what those shards
// hold together, `shard` (= pp_rank * tp + tp_rank) the first of them.
struct ShardOverBudget {
  GpuId gpu = 0;
  int shard = 0;
  std::int64_t bytes = 0;
  std::int64_t budget = 0;
};

// The one "does it fit" check (scenario validation, placement and the engine all ask it): the
// first GPU, in shard order, on which the shards of `spec` split tp x pp over `gpus` (shard i on
// gpus[i]) need more than `budgets[gpu]`; nothing when every GPU has room.
inline std::optional<ShardOverBudget> shardOverBudget(const ModelSpec& spec, int tp, int pp, const std::vector<GpuId>& gpus,
                                                      const std::vector<std::int64_t>& budgets) {
  std::vector<std::int64_t> need(budgets.size(), 0);
  for (int shard = 0; shard < tp * pp; ++shard) {
    need[static_cast<std::size_t>(gpus[static_cast<std::size_t>(shard)])] += spec.shard(tp, pp, shard % tp, shard / tp).bytes;
  }
  for (int shard = 0; shard < tp * pp; ++shard) {
    const auto g = static_cast<std::size_t>(gpus[static_cast<std::size_t>(shard)]);
    if (need[g] > budgets[g]) return ShardOverBudget{static_cast<GpuId>(g), shard, need[g], budgets[g]};
  }
  return std::nullopt;
}

}  // namespace computron
