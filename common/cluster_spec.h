// The cluster: GPUs, their host links, shared uplinks, NVLink, and cost-model constants.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/json_reader.h"
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
  double nvlink_bandwidth = 0;  // bytes/s between any two peers; 0 = no NVLink
  Nanos nvlink_latency = 0;
  // Cost-model constants.
  double compute_efficiency = 0.6;     // fraction of peak FLOP/s reached by prefill matmuls
  double memory_efficiency = 0.85;     // fraction of HBM bandwidth reached by decode
  Nanos kernel_overhead = 5 * kNanosPerMicro;  // per layer per step launch overhead
  Nanos evict_latency = 10 * kNanosPerMicro;   // releasing a shard's device blocks

  int numGpus() const { return static_cast<int>(gpus.size()); }
  bool hasNvlink() const { return nvlink_bandwidth > 0; }
};

// Presets: "h200x2" (the measured 2 x H200 machine), "a100-40gb-x4" (the seed paper's node),
// "h200x4" (four H200s with the measured shared host cap).
// An unknown name throws ConfigError listing the known ones.
ClusterSpec clusterPreset(const std::string& name);
std::vector<std::string> clusterPresetNames();
bool isClusterPreset(const std::string& name);
// {"preset": "...", overrides...}, a bare preset name, or a full description; see docs/specs.md.
// Units in the JSON: GB (1e9 bytes), GB/s, TFLOP/s, microseconds. Errors name the JSON path.
ClusterSpec clusterFromJson(const JsonReader& node);
// The effective cluster as a full description (readable back by clusterFromJson).
nlohmann::json clusterToJson(const ClusterSpec& c);

}  // namespace computron
