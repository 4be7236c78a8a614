#include "common/cluster_spec.h"

#include <gtest/gtest.h>

#include <string>

namespace computron {
namespace {

ClusterSpec parse(const nlohmann::json& doc) { return clusterFromJson(JsonReader(doc, "$.cluster")); }
ClusterSpec parse(const char* text) { return parse(nlohmann::json::parse(text)); }

std::string errorOf(const nlohmann::json& doc) {
  try {
    parse(doc);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError for " << doc.dump();
  return "";
}
std::string errorOf(const char* text) { return errorOf(nlohmann::json::parse(text)); }

// A valid full description of one GPU (units: GB, GB/s, TFLOP/s, microseconds).
nlohmann::json gpuEntry() {
  return {{"memory_gb", 141},  {"weight_budget_gb", 120}, {"peak_tflops", 989},
          {"hbm_gbps", 4800},  {"host_link_gbps", 55.3},  {"host_link_latency_us", 10}};
}

// A full description of `gpu_entries`, each edited by the caller.
nlohmann::json clusterOf(std::vector<nlohmann::json> gpu_entries) {
  return {{"gpus", std::move(gpu_entries)}};
}

// ---- Presets ----------------------------------------------------------------------------------

TEST(ClusterSpecTest, PresetNames) {
  EXPECT_EQ(clusterPresetNames(), (std::vector<std::string>{"a100-40gb-x4", "fleet-64x8", "h100x8-x2", "h200x1", "h200x2", "h200x4"}));
  EXPECT_TRUE(isClusterPreset("h200x2"));
  EXPECT_FALSE(isClusterPreset("h100x8"));
  try {
    clusterPreset("h100x8");
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "unknown cluster preset \"h100x8\" (known: a100-40gb-x4, fleet-64x8, h100x8-x2, h200x1, h200x2, h200x4)");
  }
}

TEST(ClusterSpecTest, H200x2IsTheMeasuredMachine) {
  const ClusterSpec c = clusterPreset("h200x2");
  EXPECT_EQ(c.name, "h200x2");
  ASSERT_EQ(c.numGpus(), 2);
  for (const GpuSpec& gpu : c.gpus) {
    EXPECT_EQ(gpu.name, "H200");
    EXPECT_EQ(gpu.memory_bytes, 143771 * kMiB);
    EXPECT_EQ(gpu.memory_bytes, 150'754'820'096);
    EXPECT_EQ(gpu.weight_budget_bytes, 120 * kGiB);
    EXPECT_DOUBLE_EQ(gpu.peak_flops, 989e12);
    EXPECT_DOUBLE_EQ(gpu.hbm_bandwidth, 4.8e12);
    EXPECT_DOUBLE_EQ(gpu.host_link_bandwidth, 55.3e9);
    EXPECT_EQ(gpu.host_link_latency, 10 * kNanosPerMicro);
    EXPECT_EQ(gpu.uplink, -1);  // both links at once measured 54.8 + 54.8: no shared cap
  }
  EXPECT_TRUE(c.uplinks.empty());
  EXPECT_TRUE(c.hasNvlink());
  EXPECT_DOUBLE_EQ(c.nvlink_bandwidth, 396e9);
}

TEST(ClusterSpecTest, H200x4SharesOneHostUplink) {
  const ClusterSpec c = clusterPreset("h200x4");
  ASSERT_EQ(c.numGpus(), 4);
  ASSERT_EQ(c.uplinks.size(), 1u);
  EXPECT_DOUBLE_EQ(c.uplinks[0].bandwidth, 165.3e9);
  EXPECT_EQ(c.uplinks[0].gpus, (std::vector<GpuId>{0, 1, 2, 3}));
  for (const GpuSpec& gpu : c.gpus) {
    EXPECT_EQ(gpu.uplink, 0);
    EXPECT_DOUBLE_EQ(gpu.host_link_bandwidth, 55.3e9);
  }
  EXPECT_DOUBLE_EQ(c.nvlink_bandwidth, 396e9);
}

TEST(ClusterSpecTest, A100NodeOfTheSeedPaper) {
  const ClusterSpec c = clusterPreset("a100-40gb-x4");
  ASSERT_EQ(c.numGpus(), 4);
  for (const GpuSpec& gpu : c.gpus) {
    EXPECT_EQ(gpu.memory_bytes, 40 * kGiB);
    EXPECT_EQ(gpu.weight_budget_bytes, 36 * kGiB);
    EXPECT_DOUBLE_EQ(gpu.peak_flops, 312e12);
    EXPECT_DOUBLE_EQ(gpu.hbm_bandwidth, 1.555e12);
    EXPECT_DOUBLE_EQ(gpu.host_link_bandwidth, 24e9);
    EXPECT_EQ(gpu.uplink, -1);
  }
  EXPECT_TRUE(c.uplinks.empty());
  EXPECT_DOUBLE_EQ(c.nvlink_bandwidth, 100e9);
}

// ---- clusterFromJson --------------------------------------------------------------------------

TEST(ClusterSpecTest, PresetWithOverrides) {
  const ClusterSpec c = parse(R"({"preset": "h200x2", "name": "tight", "weight_budget_gb": 30,
                                  "compute_efficiency": 0.5, "kernel_overhead_us": 7.5, "nvlink_gbps": 0})");
  EXPECT_EQ(c.name, "tight");
  ASSERT_EQ(c.numGpus(), 2);
  for (const GpuSpec& gpu : c.gpus) {
    EXPECT_EQ(gpu.weight_budget_bytes, 30'000'000'000);
    EXPECT_EQ(gpu.memory_bytes, 143771 * kMiB);  // untouched
  }
  EXPECT_DOUBLE_EQ(c.compute_efficiency, 0.5);
  EXPECT_EQ(c.kernel_overhead, 7'500);
  EXPECT_FALSE(c.hasNvlink());
  EXPECT_DOUBLE_EQ(c.memory_efficiency, ClusterSpec{}.memory_efficiency);
}

TEST(ClusterSpecTest, BarePresetName) {
  const nlohmann::json doc = "h200x4";
  EXPECT_EQ(clusterFromJson(JsonReader(doc, "$.cluster")).numGpus(), 4);
}

TEST(ClusterSpecTest, FullDescriptionWithCountsAndUplinks) {
  const ClusterSpec c = parse(R"({
    "name": "two-switches",
    "gpus": [{"name": "H200", "memory_gb": 141, "weight_budget_gb": 120, "peak_tflops": 989,
              "hbm_gbps": 4800, "host_link_gbps": 55.3, "host_link_latency_us": 10, "count": 3},
             {"name": "small", "memory_gb": 40, "weight_budget_gb": 36, "peak_tflops": 312,
              "hbm_gbps": 1555, "host_link_gbps": 24}],
    "uplinks": [{"name": "sw0", "gbps": 64, "gpus": [0, 1]}, {"gbps": 32, "gpus": [3]}],
    "nvlink_gbps": 396, "nvlink_latency_us": 2, "compute_efficiency": 0.7, "memory_efficiency": 0.9,
    "kernel_overhead_us": 4, "evict_latency_us": 20
  })");
  EXPECT_EQ(c.name, "two-switches");
  ASSERT_EQ(c.numGpus(), 4);
  EXPECT_EQ(c.gpus[0].name, "H200");
  EXPECT_EQ(c.gpus[2].memory_bytes, 141'000'000'000);
  EXPECT_EQ(c.gpus[2].weight_budget_bytes, 120'000'000'000);
  EXPECT_DOUBLE_EQ(c.gpus[2].peak_flops, 989e12);
  EXPECT_DOUBLE_EQ(c.gpus[2].hbm_bandwidth, 4.8e12);
  EXPECT_DOUBLE_EQ(c.gpus[2].host_link_bandwidth, 55.3e9);
  EXPECT_EQ(c.gpus[3].name, "small");
  EXPECT_EQ(c.gpus[3].host_link_latency, 10 * kNanosPerMicro);  // default
  ASSERT_EQ(c.uplinks.size(), 2u);
  EXPECT_EQ(c.uplinks[0].name, "sw0");
  EXPECT_EQ(c.uplinks[1].name, "uplink1");
  EXPECT_DOUBLE_EQ(c.uplinks[0].bandwidth, 64e9);
  EXPECT_EQ(c.gpus[0].uplink, 0);
  EXPECT_EQ(c.gpus[1].uplink, 0);
  EXPECT_EQ(c.gpus[2].uplink, -1);
  EXPECT_EQ(c.gpus[3].uplink, 1);
  EXPECT_DOUBLE_EQ(c.nvlink_bandwidth, 396e9);
  EXPECT_EQ(c.nvlink_latency, 2'000);
  EXPECT_DOUBLE_EQ(c.compute_efficiency, 0.7);
  EXPECT_DOUBLE_EQ(c.memory_efficiency, 0.9);
  EXPECT_EQ(c.kernel_overhead, 4'000);
  EXPECT_EQ(c.evict_latency, 20'000);
}

TEST(ClusterSpecTest, FullDescriptionDefaults) {
  const ClusterSpec c = parse(clusterOf({gpuEntry()}));
  const ClusterSpec defaults;
  EXPECT_EQ(c.name, "custom");
  ASSERT_EQ(c.numGpus(), 1);
  EXPECT_EQ(c.gpus[0].name, "gpu");
  EXPECT_EQ(c.gpus[0].uplink, -1);
  EXPECT_TRUE(c.uplinks.empty());
  EXPECT_FALSE(c.hasNvlink());
  EXPECT_EQ(c.nvlink_latency, 5 * kNanosPerMicro);
  EXPECT_DOUBLE_EQ(c.compute_efficiency, defaults.compute_efficiency);
  EXPECT_DOUBLE_EQ(c.memory_efficiency, defaults.memory_efficiency);
  EXPECT_EQ(c.kernel_overhead, defaults.kernel_overhead);
  EXPECT_EQ(c.evict_latency, defaults.evict_latency);
}

void expectSameCluster(const ClusterSpec& a, const ClusterSpec& b) {
  EXPECT_EQ(a.name, b.name);
  ASSERT_EQ(a.numGpus(), b.numGpus());
  for (int i = 0; i < a.numGpus(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(a.gpus[i].name, b.gpus[i].name);
    EXPECT_EQ(a.gpus[i].memory_bytes, b.gpus[i].memory_bytes);
    EXPECT_EQ(a.gpus[i].weight_budget_bytes, b.gpus[i].weight_budget_bytes);
    EXPECT_DOUBLE_EQ(a.gpus[i].peak_flops, b.gpus[i].peak_flops);
    EXPECT_DOUBLE_EQ(a.gpus[i].hbm_bandwidth, b.gpus[i].hbm_bandwidth);
    EXPECT_DOUBLE_EQ(a.gpus[i].host_link_bandwidth, b.gpus[i].host_link_bandwidth);
    EXPECT_EQ(a.gpus[i].host_link_latency, b.gpus[i].host_link_latency);
    EXPECT_EQ(a.gpus[i].uplink, b.gpus[i].uplink);
  }
  ASSERT_EQ(a.uplinks.size(), b.uplinks.size());
  for (std::size_t u = 0; u < a.uplinks.size(); ++u) {
    EXPECT_EQ(a.uplinks[u].name, b.uplinks[u].name);
    EXPECT_DOUBLE_EQ(a.uplinks[u].bandwidth, b.uplinks[u].bandwidth);
    EXPECT_EQ(a.uplinks[u].gpus, b.uplinks[u].gpus);
  }
  EXPECT_DOUBLE_EQ(a.nvlink_bandwidth, b.nvlink_bandwidth);
  EXPECT_EQ(a.nvlink_latency, b.nvlink_latency);
  EXPECT_DOUBLE_EQ(a.compute_efficiency, b.compute_efficiency);
  EXPECT_DOUBLE_EQ(a.memory_efficiency, b.memory_efficiency);
  EXPECT_EQ(a.kernel_overhead, b.kernel_overhead);
  EXPECT_EQ(a.evict_latency, b.evict_latency);
}

TEST(ClusterSpecTest, ToJsonReadsBackToTheSameCluster) {
  for (const std::string& name : clusterPresetNames()) {
    SCOPED_TRACE(name);
    const ClusterSpec preset = clusterPreset(name);
    const nlohmann::json written = clusterToJson(preset);
    EXPECT_EQ(written.at("gpus").size(), 1u);  // identical GPUs collapse into one entry
    EXPECT_EQ(written.at("gpus")[0].at("count"), preset.numGpus());
    expectSameCluster(clusterFromJson(JsonReader(written, "$.cluster")), preset);
  }
  const nlohmann::json h200 = clusterToJson(clusterPreset("h200x4"));
  EXPECT_DOUBLE_EQ(h200.at("gpus")[0].at("memory_gb").get<double>(), 150.754820096);
  EXPECT_DOUBLE_EQ(h200.at("uplinks")[0].at("gbps").get<double>(), 165.3);
}

// ---- Broken input -----------------------------------------------------------------------------

TEST(ClusterSpecTest, BrokenPresetForms) {
  EXPECT_EQ(errorOf(R"({"preset": "h300"})"),
            "$.cluster.preset: unknown cluster preset \"h300\" (known: a100-40gb-x4, fleet-64x8, h100x8-x2, h200x1, h200x2, h200x4)");
  EXPECT_EQ(errorOf(R"("h300")"), "$.cluster: unknown cluster preset \"h300\" (known: a100-40gb-x4, fleet-64x8, h100x8-x2, h200x1, h200x2, h200x4)");
  EXPECT_EQ(errorOf(R"({"preset": 2})"), "$.cluster.preset: expected a string, got integer");
  EXPECT_EQ(errorOf(R"({"preset": "h200x2", "gpus": []})"),
            "$.cluster.gpus: unknown key (allowed: preset, profile, name, nvlink_gbps, nvlink_latency_us, "
            "compute_efficiency, memory_efficiency, kernel_overhead_us, evict_latency_us, batches_wait_for_loads, host_loads_in_order, memory_gb, "
            "weight_budget_gb, peak_tflops, hbm_gbps, host_link_gbps, host_link_latency_us)");
  EXPECT_EQ(errorOf(R"({"preset": "h200x2", "weight_budget_gb": 200})"),
            "$.cluster.weight_budget_gb: weight budget (200 GB) exceeds GPU memory (150.755 GB)");
  EXPECT_EQ(errorOf(R"({"preset": "h200x2", "memory_gb": 100})"),
            "$.cluster.memory_gb: weight budget (128.849 GB) exceeds GPU memory (100 GB)");
  EXPECT_EQ(errorOf(R"({"preset": "h200x2", "compute_efficiency": 1.5})"),
            "$.cluster.compute_efficiency: must be in (0, 1]");
  EXPECT_EQ(errorOf(R"({"preset": "h200x2", "host_link_gbps": 0})"), "$.cluster.host_link_gbps: must be greater than 0");
  EXPECT_EQ(errorOf(R"({"preset": "h200x2", "nvlink_latency_us": -1})"),
            "$.cluster.nvlink_latency_us: must not be negative");
}

TEST(ClusterSpecTest, BrokenFullDescriptions) {
  EXPECT_EQ(errorOf(R"({"name": "x"})"), "$.cluster.gpus: required key is missing");
  EXPECT_EQ(errorOf(R"({"gpus": []})"), "$.cluster.gpus: at least one GPU is required");
  EXPECT_EQ(errorOf(R"([1, 2])"), "$.cluster: expected an object, got array");

  nlohmann::json no_memory = gpuEntry();
  no_memory.erase("memory_gb");
  EXPECT_EQ(errorOf(clusterOf({no_memory})), "$.cluster.gpus[0].memory_gb: required key is missing");

  nlohmann::json negative = gpuEntry();
  negative["memory_gb"] = -1;
  EXPECT_EQ(errorOf(clusterOf({gpuEntry(), negative})), "$.cluster.gpus[1].memory_gb: must be greater than 0");

  nlohmann::json over_budget = gpuEntry();
  over_budget["weight_budget_gb"] = 200;
  EXPECT_EQ(errorOf(clusterOf({over_budget})),
            "$.cluster.gpus[0].weight_budget_gb: weight budget (200 GB) exceeds GPU memory (141 GB)");

  nlohmann::json text = gpuEntry();
  text["peak_tflops"] = "989";
  EXPECT_EQ(errorOf(clusterOf({text})), "$.cluster.gpus[0].peak_tflops: expected a number, got string");

  nlohmann::json no_gpus = gpuEntry();
  no_gpus["count"] = 0;
  EXPECT_EQ(errorOf(clusterOf({no_gpus})), "$.cluster.gpus[0].count: must be greater than 0");

  nlohmann::json typo = gpuEntry();
  typo["memory"] = 141;
  EXPECT_EQ(errorOf(clusterOf({typo})),
            "$.cluster.gpus[0].memory: unknown key (allowed: name, count, memory_gb, weight_budget_gb, "
            "peak_tflops, hbm_gbps, host_link_gbps, host_link_latency_us)");

  nlohmann::json cluster_typo = clusterOf({gpuEntry()});
  cluster_typo["nvlink"] = 396;
  EXPECT_EQ(errorOf(cluster_typo),
            "$.cluster.nvlink: unknown key (allowed: name, nvlink_gbps, nvlink_latency_us, compute_efficiency, "
            "memory_efficiency, kernel_overhead_us, evict_latency_us, batches_wait_for_loads, host_loads_in_order, gpus, uplinks, gpus_per_node, network, profile)");
}

TEST(ClusterSpecTest, BrokenUplinks) {
  auto withUplinks = [](const std::string& uplinks) {
    nlohmann::json two = gpuEntry();
    two["count"] = 2;
    nlohmann::json doc = clusterOf({two});
    doc["uplinks"] = nlohmann::json::parse(uplinks);
    return errorOf(doc);
  };
  EXPECT_EQ(withUplinks(R"([{"gbps": 100, "gpus": [0, 1, 2]}])"),
            "$.cluster.uplinks[0].gpus[2]: GPU 2 does not exist (the cluster has 2 GPUs, numbered from 0)");
  EXPECT_EQ(withUplinks(R"([{"gbps": 100, "gpus": [0, 1]}, {"gbps": 50, "gpus": [1]}])"),
            "$.cluster.uplinks[1].gpus[0]: GPU 1 is already in $.cluster.uplinks[0] (a GPU sits behind at most "
            "one uplink)");
  EXPECT_EQ(withUplinks(R"([{"gbps": 100, "gpus": [0, 0]}])"),
            "$.cluster.uplinks[0].gpus[1]: GPU 0 is already in $.cluster.uplinks[0] (a GPU sits behind at most "
            "one uplink)");
  EXPECT_EQ(withUplinks(R"([{"gbps": 100, "gpus": [-1]}])"),
            "$.cluster.uplinks[0].gpus[0]: GPU -1 does not exist (the cluster has 2 GPUs, numbered from 0)");
  EXPECT_EQ(withUplinks(R"([{"gbps": 100, "gpus": []}])"), "$.cluster.uplinks[0].gpus: an uplink needs at least one GPU");
  EXPECT_EQ(withUplinks(R"([{"gbps": -3, "gpus": [0]}])"), "$.cluster.uplinks[0].gbps: must be greater than 0");
  EXPECT_EQ(withUplinks(R"([{"gpus": [0]}])"), "$.cluster.uplinks[0].gbps: required key is missing");
  EXPECT_EQ(withUplinks(R"([{"gbps": 1, "gpus": [0], "cap": 2}])"),
            "$.cluster.uplinks[0].cap: unknown key (allowed: name, gbps, gpus)");
  EXPECT_EQ(withUplinks(R"({"gbps": 1})"), "$.cluster.uplinks: expected an array, got object");
}

}  // namespace
}  // namespace computron
