// Fluid model of data links: every transfer (flow) crosses a set of resources (a GPU's host link,
// a shared uplink, NVLink ports), and concurrent flows share each resource's bandwidth max-min
// fairly. Rates are recomputed whenever a flow starts or ends; between those moments every flow
// moves at a constant rate, so the next completion time is exact. A change recomputes only the
// flows it can affect: those connected to it through shared resources (max-min shares of one
// connected group do not depend on any other), so its cost follows the contention around the
// change, not the size of the cluster.
//
// Each flow's progress is kept from its last rate change (bytes left then, and when), and its
// drain time is computed once per rate change and kept in a heap. So a flow whose rate does not
// change is never touched, and its drain time does not depend on events elsewhere in the cluster
// (no rounding from unrelated events); the next completion is the heap's top.
#pragma once

#include <cstdint>
#include <queue>
#include <unordered_map>
#include <optional>
#include <string>
#include <vector>

#include "common/cluster_spec.h"
#include "common/types.h"

namespace computron::sim {

using FlowId = std::uint64_t;

class LinkModel {
 public:
  // Resources: host link of each GPU, each uplink, NVLink out and in ports of each GPU, and on a
  // cluster of several nodes each node's NIC out and in and the spine (when oversubscribed).
  explicit LinkModel(const ClusterSpec& cluster);

  // Path of a host -> `gpu` copy over that GPU's own host link (and its uplink, if any).
  std::vector<int> hostPath(GpuId gpu) const;
  // Path of a host -> `via` -> NVLink -> `target` copy, or a device copy from `via` when
  // `from_device` is set.
  std::vector<int> peerPath(GpuId via, GpuId target, bool from_device) const;
  // Path of a copy from node `from_node`'s host memory to `target`: that node's NIC out, the
  // spine (if any), the target node's NIC in, then the target's host link (and its uplink).
  std::vector<int> remotePath(int from_node, GpuId target) const;

  // Starts a flow of `bytes` over `path` at `now`. Its completion is reported by
  // nextCompletion / takeCompleted after the fixed `latency`.
  FlowId start(Nanos now, double bytes, std::vector<int> path, Nanos latency);
  // Time of the next change: a flow's bytes draining (rates change) or a drained flow completing
  // after its latency. Call takeCompleted at that time.
  std::optional<Nanos> nextCompletion() const;
  // Advances to `now` and returns the flows that have finished by then (in flow-id order).
  std::vector<FlowId> takeCompleted(Nanos now);

  double rateOf(FlowId id) const;  // bytes/s, for tests
  std::size_t activeFlows() const { return slot_of_.size(); }
  int numResources() const { return static_cast<int>(capacity_.size()); }
  const std::string& resourceName(int r) const { return names_[static_cast<std::size_t>(r)]; }

 private:
  struct Flow {
    FlowId id = 0;  // 0: a free slot
    std::vector<int> path;
    Nanos latency = 0;
    Nanos drained_at = -1;  // when its bytes finished; completes at drained_at + latency
    std::uint32_t mark = 0;  // visit stamp of recomputeRates
    // While its bytes move: bytes left at base_time, the rate since then and the drain time it
    // gives; version tells a current drain-heap entry from a stale one.
    double base_remaining = 0;
    Nanos base_time = 0;
    double rate = 0;  // bytes/s
    Nanos drain_at = kMaxNanos;
    std::uint32_t version = 0;
    double new_rate = 0;  // scratch of recomputeRates
  };
  struct DrainEntry {
    Nanos at;
    FlowId id;
    std::uint32_t slot;
    std::uint32_t version;
    bool operator>(const DrainEntry& o) const { return at != o.at ? at > o.at : id > o.id; }
  };
  // Takes off their resources the flows whose bytes drained by `now` (their resources go to
  // changed_) and moves the clock there.
  void advance(Nanos now);
  // Progressive filling over the flows connected to changed_ (then cleared); flows whose rate
  // changed are rebased at now_ and get a new drain time.
  void recomputeRates();
  void detach(const Flow& f);  // off the resources' active lists
  void setRate(std::uint32_t slot, double rate);
  bool stale(const DrainEntry& e) const;
  void dropStaleDrains();
  const Flow& flowOf(FlowId id) const;

  std::vector<double> capacity_;
  std::vector<std::string> names_;
  std::vector<int> host_link_, uplink_of_gpu_, nv_out_, nv_in_;
  std::vector<int> nic_out_, nic_in_, node_of_gpu_;
  int spine_ = -1;
  // Flows in slots reused after completion (the id tells a slot's current flow); the id -> slot
  // map serves only the callers' look-ups.
  std::vector<Flow> slots_;
  std::vector<std::uint32_t> free_slots_;
  std::unordered_map<FlowId, std::uint32_t> slot_of_;
  std::size_t moving_ = 0;  // flows whose bytes still move
  // Drain times of moving flows, soonest first (entries of an older version are skipped).
  std::priority_queue<DrainEntry, std::vector<DrainEntry>, std::greater<>> drains_;
  // Drained flows by completion time (drained_at + latency), then id, with their slots.
  struct Completion {
    Nanos at;
    FlowId id;
    std::uint32_t slot;
    bool operator>(const Completion& o) const { return at != o.at ? at > o.at : id > o.id; }
  };
  std::priority_queue<Completion, std::vector<Completion>, std::greater<>> completions_;
  // Per resource: the flows still moving bytes over it (id, slot), in id order.
  std::vector<std::vector<std::pair<FlowId, std::uint32_t>>> active_on_;
  // Resources whose flows changed since the last recomputation.
  std::vector<int> changed_;
  // Scratch for recomputeRates, sized once: per resource, its remaining capacity, unfixed flow
  // count and a visit mark; the group's resources and flows.
  std::vector<double> left_;
  std::vector<int> unfixed_;
  std::vector<std::uint32_t> mark_;
  std::uint32_t stamp_ = 0;
  std::vector<int> group_resources_;
  std::vector<std::pair<FlowId, std::uint32_t>> group_flows_;
  std::vector<Flow*> group_active_;
  std::vector<bool> fixed_;
  FlowId next_id_ = 1;
  Nanos now_ = 0;
};

}  // namespace computron::sim
