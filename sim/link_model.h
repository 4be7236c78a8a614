// Fluid model of data links: every transfer (flow) crosses a set of resources (a GPU's host link,
// a shared uplink, NVLink ports), and concurrent flows share each resource's bandwidth max-min
// fairly. Rates are recomputed whenever a flow starts or ends; between those moments every flow
// moves at a constant rate, so the next completion time is exact.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/cluster_spec.h"
#include "common/types.h"

namespace computron::sim {

using FlowId = std::uint64_t;

class LinkModel {
 public:
  // Resources: host link of each GPU, each uplink, NVLink out and in ports of each GPU.
  explicit LinkModel(const ClusterSpec& cluster);

  // Path of a host -> `gpu` copy over that GPU's own host link (and its uplink, if any).
  std::vector<int> hostPath(GpuId gpu) const;
  // Path of a host -> `via` -> NVLink -> `target` copy, or a device copy from `via` when
  // `from_device` is set.
  std::vector<int> peerPath(GpuId via, GpuId target, bool from_device) const;

  // Starts a flow of `bytes` over `path` at `now`. Its completion is reported by
  // nextCompletion / takeCompleted after the fixed `latency`.
  FlowId start(Nanos now, double bytes, std::vector<int> path, Nanos latency);
  // Time of the next change: a flow's bytes draining (rates change) or a drained flow completing
  // after its latency. Call takeCompleted at that time.
  std::optional<Nanos> nextCompletion() const;
  // Advances to `now` and returns the flows that have finished by then (in flow-id order).
  std::vector<FlowId> takeCompleted(Nanos now);

  double rateOf(FlowId id) const;  // bytes/s, for tests
  std::size_t activeFlows() const { return flows_.size(); }
  int numResources() const { return static_cast<int>(capacity_.size()); }
  const std::string& resourceName(int r) const { return names_[static_cast<std::size_t>(r)]; }

 private:
  struct Flow {
    double remaining = 0;  // bytes
    double rate = 0;       // bytes/s
    std::vector<int> path;
    Nanos latency = 0;
    Nanos drained_at = -1;  // when its bytes finished; completes at drained_at + latency
  };
  bool advance(Nanos now);  // true when a flow drained
  void recomputeRates();

  std::vector<double> capacity_;
  std::vector<std::string> names_;
  std::vector<int> host_link_, uplink_of_gpu_, nv_out_, nv_in_;
  std::map<FlowId, Flow> flows_;
  FlowId next_id_ = 1;
  Nanos now_ = 0;
};

}  // namespace computron::sim
