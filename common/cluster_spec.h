// The cluster: GPUs, their host links, shared uplinks, NVLink, and cost-model constants.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/json_reader.h"
#include "common/profile.h"
#include "common/types.h"

namespace computron {

struct GpuSpec {
  std::string name;
  std::int64_t memory_bytes = 0;
  std::int64_t weight_budget_bytes = 0;  // device bytes the scheduler may fill with weights
  double peak_flops = 0;                 // dense fp16/bf16 FLOP/s
  double hbm_bandwidth = 0;              // bytes/s
  double host_link_bandwidth = 0;        // bytes/s, host -> device over PCIe
  Nanos host_link_latency = 0;           // per transfer
  int uplink = -1;                       // index into ClusterSpec::uplinks, or -1
  int node = 0;                          // the host it sits in (ClusterSpec::network joins hosts)
};

// The network between nodes: each node's NIC (all its ports together, each direction) and, when
// oversubscribed, one spine that every flow between two nodes crosses.
struct NetworkSpec {
  double nic_bandwidth = 0;    // bytes/s per node and direction
  Nanos nic_latency = 0;       // per transfer or message between nodes
  double spine_bandwidth = 0;  // bytes/s across the whole spine; 0 = non-blocking
};

// A group of GPUs whose host links share one cap (a PCIe switch or host-side limit).
struct UplinkSpec {
  std::string name;
  double bandwidth = 0;  // bytes/s for the whole group
  std::vector<GpuId> gpus;
};

struct ClusterSpec {
  std::string name;
  std::vector<GpuSpec> gpus;
  std::vector<UplinkSpec> uplinks;
  double nvlink_bandwidth = 0;  // bytes/s between any two peers of one node; 0 = no NVLink
  Nanos nvlink_latency = 0;
  int gpus_per_node = 0;        // GPU g sits in node g / gpus_per_node; 0 = one node
  NetworkSpec network;
  // Cost-model constants.
  double compute_efficiency = 0.6;     // fraction of peak FLOP/s reached by prefill matmuls
  double memory_efficiency = 0.85;     // fraction of HBM bandwidth reached by decode
  Nanos kernel_overhead = 5 * kNanosPerMicro;  // per layer per step launch overhead
  Nanos evict_latency = 10 * kNanosPerMicro;   // releasing a shard's device blocks
  // A batch that starts while another model's load is copying onto one of its GPUs runs only
  // once that load has ended: the CUDA runtime issues a direct load's copies whole, and kernel
  // launches on that GPU wait behind them (bench/results/fidelity-stall-2026-12-01.md). The
  // simulator models it where this is true (`"batches_wait_for_loads": true`).
  bool batches_wait_for_loads = false;
  // Direct loads onto one GPU (over its own host link) run one after another in issue order, as
  // the runtime's single load stream per GPU copies them, instead of sharing the link; relays
  // and device copies still share links with them (`"host_loads_in_order": true`, or a
  // profile's `links.loads_in_order`).
  bool host_loads_in_order = false;
  // A measured profile (`"profile": "FILE"` in the cluster JSON): batches of the models it holds
  // are timed from it, and its link figures replace the preset's. Null: the roofline alone.
  std::shared_ptr<const Profile> profile;
  std::string profile_file;  // as written in the JSON

  int numGpus() const { return static_cast<int>(gpus.size()); }
  bool hasNvlink() const { return nvlink_bandwidth > 0; }
  int numNodes() const { return gpus_per_node > 0 ? (numGpus() + gpus_per_node - 1) / gpus_per_node : 1; }
  int nodeOf(GpuId g) const { return gpus[static_cast<std::size_t>(g)].node; }
  bool sameNode(GpuId a, GpuId b) const { return nodeOf(a) == nodeOf(b); }
  // One GPU's share of its node's NIC (the NIC's bandwidth over the node's GPUs).
  double nicShare() const { return network.nic_bandwidth / std::max(1, gpus_per_node > 0 ? gpus_per_node : numGpus()); }
};

// Presets: "h200x2" (the measured 2 x H200 machine), "a100-40gb-x4" (the seed paper's node),
// "h200x4" (four H200s with the measured shared host cap), "h100x8-x2" (two 8 x H100 NVSwitch
// nodes on a 400 GB/s network) and "fleet-64x8" (64 such nodes, spine oversubscribed 2:1).
// An unknown name throws ConfigError listing the known ones.
ClusterSpec clusterPreset(const std::string& name);
std::vector<std::string> clusterPresetNames();
bool isClusterPreset(const std::string& name);
// {"preset": "...", overrides...}, a bare preset name, or a full description; see docs/specs.md.
// Units in the JSON: GB (1e9 bytes), GB/s, TFLOP/s, microseconds. Errors name the JSON path.
// A relative "profile" path is taken from `base_dir` (the scenario's folder).
ClusterSpec clusterFromJson(const JsonReader& node, const std::string& base_dir = "");
// The effective cluster as a full description (readable back by clusterFromJson).
nlohmann::json clusterToJson(const ClusterSpec& c);

}  // namespace computron
