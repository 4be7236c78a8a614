// A model as deployed on the cluster: its spec, parallel split and GPUs. Read by the scheduling
// core, the cost model and the backends, so it sits below all of them.
#pragma once

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

}  // namespace computron
