// Compute time of one batch from a roofline: each pipeline stage takes the larger of its FLOPs over
// the GPU's effective matrix rate and its bytes (weights + KV cache) over effective HBM bandwidth,
// plus a per-layer launch overhead, plus ring all-reduces over NVLink for tensor parallelism and an
// activation send between pipeline stages (over the network where a group or a stage boundary
// spans nodes). Prefill produces each request's first token; decode
// steps then run for the whole batch until its longest request is done (request-level batching).
#pragma once

#include <vector>

#include "common/cluster_spec.h"
#include "common/deployment.h"
#include "common/workload.h"

namespace computron {

struct BatchTimes {
  Nanos first_token = 0;       // offset from batch start
  std::vector<Nanos> finish;   // per request, offset from batch start
  Nanos total = 0;             // when the batch releases its GPUs
};

class CostModel {
 public:
  explicit CostModel(const ClusterSpec& cluster) : cluster_(cluster) {}
  BatchTimes batchTimes(const ModelDeployment& model, const std::vector<Request>& requests) const;
  // One all-reduce of `bytes` over `tp` GPUs: over NVLink within a node, over each GPU's share of
  // its node's NIC (and the network's latency) when the group spans nodes.
  Nanos allReduceTime(double bytes, int tp, bool across_nodes = false) const;
  // Sending `bytes` of activations from one pipeline stage to the next.
  Nanos stageSendTime(double bytes, bool across_nodes) const;

 private:
  // Time of one pass of `tokens` new tokens over pipeline stage `stage`. `attended` counts
  // (query, key) pairs of attention; `kv_read_tokens` the cached tokens whose K and V are read.
  Nanos stageTime(const ModelDeployment& model, int stage, double tokens, double attended,
                  double kv_read_tokens) const;
  const ClusterSpec& cluster_;
};

}  // namespace computron
