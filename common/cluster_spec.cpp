// Cluster presets (measured where we could measure) and the cluster section of a scenario.
#include "common/cluster_spec.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>

namespace computron {

namespace {

constexpr double kTera = 1e12;
// Estimates, not measurements: a copy's launch plus its first bytes.
constexpr Nanos kDefaultHostLinkLatency = 10 * kNanosPerMicro;
constexpr Nanos kDefaultNvlinkLatency = 5 * kNanosPerMicro;

std::int64_t bytesFromGB(double gb) { return std::llround(gb * kGB); }
Nanos nanosFromMicros(double us) { return std::llround(us * static_cast<double>(kNanosPerMicro)); }
double microsFromNanos(Nanos t) { return static_cast<double>(t) / static_cast<double>(kNanosPerMicro); }
std::string formatGB(std::int64_t bytes) {
  std::ostringstream out;
  out << static_cast<double>(bytes) / kGB << " GB";
  return out.str();
}

// One H200 SXM (141 GB HBM3e) as measured on the lent machines (docs/specs.md has the sources).
GpuSpec h200() {
  GpuSpec gpu;
  gpu.name = "H200";
  gpu.memory_bytes = 143771 * kMiB;  // what nvidia-smi reports as the total
  // About 22 GB left for activations, KV cache, the CUDA context and NCCL buffers.
  gpu.weight_budget_bytes = 120 * kGiB;
  gpu.peak_flops = 989e12;    // dense bf16 tensor-core peak
  gpu.hbm_bandwidth = 4.8e12;  // spec; memory_efficiency carries the gap to what kernels reach
  gpu.host_link_bandwidth = 55.3e9;  // pinned H2D, 64 MiB chunks, one GPU alone
  gpu.host_link_latency = kDefaultHostLinkLatency;
  return gpu;
}

// One A100-SXM4-40GB as in the seed paper's node (4 GPUs, each on its own PCIe 4.0 x16 link).
GpuSpec a100_40gb() {
  GpuSpec gpu;
  gpu.name = "A100-40GB";
  gpu.memory_bytes = 40 * kGiB;
  gpu.weight_budget_bytes = 36 * kGiB;
  gpu.peak_flops = 312e12;
  gpu.hbm_bandwidth = 1.555e12;
  gpu.host_link_bandwidth = 24e9;  // effective pinned H2D on PCIe 4.0 x16 (32 GB/s raw)
  gpu.host_link_latency = kDefaultHostLinkLatency;
  return gpu;
}

// One H100 SXM (80 GB HBM3) of an HGX H100 board. Not measured here: the host link is taken as the
// H200 machines' measured PCIe Gen5 figure and NVSwitch as their measured NV18 peer copy.
GpuSpec h100() {
  GpuSpec gpu;
  gpu.name = "H100";
  gpu.memory_bytes = 80 * kGiB;
  gpu.weight_budget_bytes = 64 * kGiB;  // about 16 GiB left for activations, KV cache and buffers
  gpu.peak_flops = 989e12;
  gpu.hbm_bandwidth = 3.35e12;
  gpu.host_link_bandwidth = 55.3e9;
  gpu.host_link_latency = kDefaultHostLinkLatency;
  return gpu;
}

// `nodes` HGX H100 nodes of 8 GPUs (NVSwitch inside a node), each node's host links under one
// cap (two sockets, twice the 4-GPU machine's measured 165.3 GB/s) and with 8 x 400 Gb/s NICs
// (400 GB/s each way), joined by a spine that carries `spine_fraction` of all NICs at once.
ClusterSpec hgxH100Cluster(const std::string& name, int nodes, double spine_fraction) {
  constexpr int kGpusPerNode = 8;
  ClusterSpec c;
  c.name = name;
  c.gpus_per_node = kGpusPerNode;
  c.nvlink_bandwidth = 396e9;
  c.nvlink_latency = kDefaultNvlinkLatency;
  c.network.nic_bandwidth = 400e9;
  c.network.nic_latency = 5 * kNanosPerMicro;
  c.network.spine_bandwidth = spine_fraction < 1 ? spine_fraction * nodes * c.network.nic_bandwidth : 0;
  for (int n = 0; n < nodes; ++n) {
    UplinkSpec host{"host" + std::to_string(n), 2 * 165.3e9, {}};
    for (int i = 0; i < kGpusPerNode; ++i) {
      GpuSpec gpu = h100();
      gpu.node = n;
      gpu.uplink = n;
      host.gpus.push_back(static_cast<GpuId>(c.gpus.size()));
      c.gpus.push_back(gpu);
    }
    c.uplinks.push_back(std::move(host));
  }
  return c;
}

ClusterSpec h200Cluster(const std::string& name, int count) {
  ClusterSpec c;
  c.name = name;
  c.gpus.assign(count, h200());
  c.nvlink_bandwidth = 396e9;  // measured GPU0 -> GPU1 peer copy
  c.nvlink_latency = kDefaultNvlinkLatency;
  return c;
}

using PresetFactory = ClusterSpec (*)();

const std::map<std::string, PresetFactory>& presetFactories() {
  static const std::map<std::string, PresetFactory> factories = {
      // Two 8-GPU H100 nodes with NVSwitch on a non-blocking network.
      {"h100x8-x2", [] { return hgxH100Cluster("h100x8-x2", 2, 1.0); }},
      // A provider's fleet: 64 such nodes (512 GPUs), the spine oversubscribed 2:1.
      {"fleet-64x8", [] { return hgxH100Cluster("fleet-64x8", 64, 0.5); }},
      // One H200 (the GPU machines lent with a single card): its own host link, no peers.
      {"h200x1", [] { return h200Cluster("h200x1", 1); }},
      // Two H200s; both links at once measured 54.8 + 54.8 GB/s, so no shared cap.
      {"h200x2", [] { return h200Cluster("h200x2", 2); }},
      // Four H200s; any two at once reach ~109.5 GB/s, all four only 165.3 GB/s together.
      {"h200x4",
       [] {
         ClusterSpec c = h200Cluster("h200x4", 4);
         c.uplinks.push_back(UplinkSpec{"host", 165.3e9, {0, 1, 2, 3}});
         for (GpuSpec& gpu : c.gpus) gpu.uplink = 0;
         return c;
       }},
      // The seed paper's node: an HGX A100 4-GPU board where each pair of GPUs shares 4 NVLink-3
      // links (25 GB/s each per direction), so 100 GB/s between any two peers.
      {"a100-40gb-x4",
       [] {
         ClusterSpec c;
         c.name = "a100-40gb-x4";
         c.gpus.assign(4, a100_40gb());
         c.nvlink_bandwidth = 100e9;
         c.nvlink_latency = kDefaultNvlinkLatency;
         return c;
       }},
  };
  return factories;
}

std::string knownPresetList() {
  std::string list;
  for (const std::string& name : clusterPresetNames()) list += (list.empty() ? "" : ", ") + name;
  return list;
}

// ---- Reading ------------------------------------------------------------------------------------

// Keys that describe one GPU; in the preset form they override every GPU of the preset.
const std::vector<std::string> kGpuScalarKeys = {
    "memory_gb", "weight_budget_gb", "peak_tflops", "hbm_gbps", "host_link_gbps", "host_link_latency_us"};
const std::vector<std::string> kClusterScalarKeys = {
    "name", "nvlink_gbps", "nvlink_latency_us", "compute_efficiency", "memory_efficiency", "kernel_overhead_us",
    "evict_latency_us", "batches_wait_for_loads", "host_loads_in_order"};

std::vector<std::string> joinKeys(std::initializer_list<std::vector<std::string>> groups) {
  std::vector<std::string> keys;
  for (const auto& group : groups) keys.insert(keys.end(), group.begin(), group.end());
  return keys;
}

// Bounds on the physical figures (docs/scenario.md): rates and sizes from 0.001 to 10^6 of
// their unit (GB, GB/s, TFLOP/s), latencies up to 10^9 us, so that no load or batch time can
// approach the int64 nanosecond range.
constexpr double kMinFigure = 1e-3;
constexpr double kMaxFigure = 1e6;
constexpr double kMaxMicros = 1e9;

double positive(const JsonReader& value) {
  const double v = value.asDouble();
  if (!(v > 0)) value.fail("must be greater than 0");
  if (v < kMinFigure || v > kMaxFigure) value.fail("must be between 0.001 and 1e6");
  return v;
}

double nonNegative(const JsonReader& value) {
  const double v = value.asDouble();
  if (v < 0) value.fail("must not be negative");
  if (v > kMaxMicros) value.fail("must be at most 1e9");
  return v;
}

// 0 (none) or a figure within the bounds of positive().
double zeroOrPositive(const JsonReader& value) { return value.asDouble() == 0 ? 0.0 : positive(value); }

double fraction(const JsonReader& value) {
  const double v = value.asDouble();
  if (!(v > 0 && v <= 1)) value.fail("must be in (0, 1]");
  return v;
}

// Applies the GPU keys of `node` to `gpu`. A full description (`require_all`) must give every
// physical figure; preset overrides change only the keys present, so untouched preset values
// never make a lossy round trip through the JSON units.
void readGpuScalars(const JsonReader& node, bool require_all, GpuSpec& gpu) {
  auto member = [&](const char* key) -> std::optional<JsonReader> {
    if (require_all) return node.at(key);  // names the missing key
    return node.find(key);
  };
  if (auto v = member("memory_gb")) gpu.memory_bytes = bytesFromGB(positive(*v));
  if (auto v = member("weight_budget_gb")) gpu.weight_budget_bytes = bytesFromGB(positive(*v));
  if (auto v = member("peak_tflops")) gpu.peak_flops = positive(*v) * kTera;
  if (auto v = member("hbm_gbps")) gpu.hbm_bandwidth = positive(*v) * kGB;
  if (auto v = member("host_link_gbps")) gpu.host_link_bandwidth = positive(*v) * kGB;
  if (auto v = node.find("host_link_latency_us")) gpu.host_link_latency = nanosFromMicros(nonNegative(*v));
  if (gpu.weight_budget_bytes > gpu.memory_bytes) {
    const std::string key = node.has("weight_budget_gb") ? "weight_budget_gb" : "memory_gb";
    throw ConfigError(node.path() + "." + key + ": weight budget (" + formatGB(gpu.weight_budget_bytes) +
                      ") exceeds GPU memory (" + formatGB(gpu.memory_bytes) + ")");
  }
}

void readClusterScalars(const JsonReader& node, ClusterSpec& c) {
  c.name = node.getString("name", c.name);
  if (auto v = node.find("nvlink_gbps")) c.nvlink_bandwidth = zeroOrPositive(*v) * kGB;
  if (auto v = node.find("nvlink_latency_us")) c.nvlink_latency = nanosFromMicros(nonNegative(*v));
  if (auto v = node.find("compute_efficiency")) c.compute_efficiency = fraction(*v);
  if (auto v = node.find("memory_efficiency")) c.memory_efficiency = fraction(*v);
  if (auto v = node.find("kernel_overhead_us")) c.kernel_overhead = nanosFromMicros(nonNegative(*v));
  if (auto v = node.find("evict_latency_us")) c.evict_latency = nanosFromMicros(nonNegative(*v));
  if (auto v = node.find("batches_wait_for_loads")) c.batches_wait_for_loads = v->asBool();
  if (auto v = node.find("host_loads_in_order")) c.host_loads_in_order = v->asBool();
}

// Reads the profile the node names, if any, and applies its link figures to every GPU of `c`
// except where the node gives the key itself (an explicit figure wins over a measured one).
void readProfileMember(const JsonReader& node, const std::string& base_dir, ClusterSpec& c) {
  auto member = node.find("profile");
  if (!member) return;
  const std::string file = member->asString();
  if (file.empty()) member->fail("expected the path of a profile file (computron calibrate writes one)");
  std::filesystem::path path(file);
  if (path.is_relative() && !base_dir.empty()) path = std::filesystem::path(base_dir) / path;
  if (!std::filesystem::exists(path))
    member->fail("no profile file " + path.string() + (base_dir.empty() ? "" : " (relative paths start at the scenario's folder)"));
  c.profile = std::make_shared<const Profile>(readProfileFile(path.string()));
  c.profile_file = file;
  const LinkProfile& links = c.profile->links;
  for (GpuSpec& gpu : c.gpus) {
    if (links.host_link_gbps && !node.has("host_link_gbps")) gpu.host_link_bandwidth = *links.host_link_gbps * kGB;
    if (links.host_link_latency_us && !node.has("host_link_latency_us"))
      gpu.host_link_latency = nanosFromMicros(*links.host_link_latency_us);
  }
  if (links.nvlink_gbps && c.hasNvlink() && !node.has("nvlink_gbps")) c.nvlink_bandwidth = *links.nvlink_gbps * kGB;
  if (links.evict_us && !node.has("evict_latency_us")) c.evict_latency = nanosFromMicros(*links.evict_us);
  if (links.loads_in_order && !node.has("host_loads_in_order")) c.host_loads_in_order = *links.loads_in_order;
  // The measured shared figure caps each node's host links together (where the preset has no
  // uplinks of its own and the figure is below what the node's links add up to).
  if (links.shared_host_gbps && c.uplinks.empty()) {
    const double shared = *links.shared_host_gbps * kGB;
    for (int n = 0; n < c.numNodes(); ++n) {
      UplinkSpec uplink;
      uplink.name = "host" + std::to_string(n) + " (profile)";
      uplink.bandwidth = shared;
      double sum = 0;
      for (int g = 0; g < c.numGpus(); ++g)
        if (c.nodeOf(g) == n) {
          uplink.gpus.push_back(g);
          sum += c.gpus[static_cast<std::size_t>(g)].host_link_bandwidth;
        }
      if (uplink.gpus.size() < 2 || shared >= sum) continue;
      for (GpuId g : uplink.gpus) c.gpus[static_cast<std::size_t>(g)].uplink = static_cast<int>(c.uplinks.size());
      c.uplinks.push_back(std::move(uplink));
    }
  }
}

ClusterSpec presetWithOverrides(const JsonReader& node, const std::string& base_dir) {
  node.expectObject(joinKeys({{"preset", "profile"}, kClusterScalarKeys, kGpuScalarKeys}));
  const JsonReader preset = node.at("preset");
  const std::string name = preset.asString();
  if (!isClusterPreset(name)) preset.fail("unknown cluster preset \"" + name + "\" (known: " + knownPresetList() + ")");
  ClusterSpec c = clusterPreset(name);
  readProfileMember(node, base_dir, c);
  readClusterScalars(node, c);
  for (GpuSpec& gpu : c.gpus) readGpuScalars(node, /*require_all=*/false, gpu);
  return c;
}

void readUplinks(const JsonReader& list, ClusterSpec& c) {
  std::vector<std::string> owner(c.gpus.size());  // path of the uplink each GPU already joined
  for (std::size_t u = 0; u < list.size(); ++u) {
    const JsonReader entry = list.at(u);
    entry.expectObject({"name", "gbps", "gpus"});
    UplinkSpec uplink;
    uplink.name = entry.getString("name", "uplink" + std::to_string(u));
    uplink.bandwidth = positive(entry.at("gbps")) * kGB;
    const JsonReader members = entry.at("gpus");
    if (members.size() == 0) members.fail("an uplink needs at least one GPU");
    for (std::size_t i = 0; i < members.size(); ++i) {
      const JsonReader member = members.at(i);
      const std::int64_t gpu = member.asInt();
      if (gpu < 0 || gpu >= c.numGpus())
        member.fail("GPU " + std::to_string(gpu) + " does not exist (the cluster has " + std::to_string(c.numGpus()) +
                    " GPUs, numbered from 0)");
      const auto index = static_cast<std::size_t>(gpu);
      if (!owner[index].empty())
        member.fail("GPU " + std::to_string(gpu) + " is already in " + owner[index] +
                    " (a GPU sits behind at most one uplink)");
      owner[index] = entry.path();
      uplink.gpus.push_back(static_cast<GpuId>(gpu));
      c.gpus[index].uplink = static_cast<int>(c.uplinks.size());
    }
    c.uplinks.push_back(std::move(uplink));
  }
}

ClusterSpec fullDescription(const JsonReader& node, const std::string& base_dir) {
  node.expectObject(joinKeys({kClusterScalarKeys, {"gpus", "uplinks", "gpus_per_node", "network", "profile"}}));
  ClusterSpec c;
  c.name = "custom";
  c.nvlink_latency = kDefaultNvlinkLatency;
  readClusterScalars(node, c);
  const JsonReader gpus = node.at("gpus");
  if (gpus.size() == 0) gpus.fail("at least one GPU is required");
  for (std::size_t i = 0; i < gpus.size(); ++i) {
    const JsonReader entry = gpus.at(i);
    entry.expectObject(joinKeys({{"name", "count"}, kGpuScalarKeys}));
    GpuSpec gpu;
    gpu.name = entry.getString("name", "gpu");
    gpu.host_link_latency = kDefaultHostLinkLatency;
    readGpuScalars(entry, /*require_all=*/true, gpu);
    const std::int64_t count = entry.positiveInt(entry.getInt("count", 1), "count");
    if (count > 4096) entry.at("count").fail("more than 4096 GPUs in one entry");
    c.gpus.insert(c.gpus.end(), static_cast<std::size_t>(count), gpu);
  }
  if (auto uplinks = node.find("uplinks")) readUplinks(*uplinks, c);
  if (auto per_node = node.find("gpus_per_node")) {
    const std::int64_t k = per_node->asInt();
    if (k < 0 || k > c.numGpus()) per_node->fail("must be between 0 (one node) and the number of GPUs");
    c.gpus_per_node = static_cast<int>(k);
    for (std::size_t g = 0; g < c.gpus.size(); ++g) c.gpus[g].node = k > 0 ? static_cast<int>(g / static_cast<std::size_t>(k)) : 0;
  }
  if (auto network = node.find("network")) {
    network->expectObject({"nic_gbps", "nic_latency_us", "spine_gbps"});
    c.network.nic_bandwidth = positive(network->at("nic_gbps")) * kGB;
    if (auto v = network->find("nic_latency_us")) c.network.nic_latency = nanosFromMicros(nonNegative(*v));
    if (auto v = network->find("spine_gbps")) c.network.spine_bandwidth = nonNegative(*v) * kGB;
  }
  if (c.numNodes() > 1 && c.network.nic_bandwidth <= 0)
    node.fail("a cluster of " + std::to_string(c.numNodes()) + " nodes (gpus_per_node) needs a \"network\" with nic_gbps");
  // The GPUs' own keys sit in their entries, so the profile's link figures replace only the
  // cluster-level ones (NVLink, eviction) given nowhere; a full description states its links.
  if (node.has("profile")) {
    std::vector<GpuSpec> stated = c.gpus;
    readProfileMember(node, base_dir, c);
    c.gpus = std::move(stated);
  }
  return c;
}

// ---- Writing ------------------------------------------------------------------------------------

bool sameHardware(const GpuSpec& a, const GpuSpec& b) {
  return a.name == b.name && a.memory_bytes == b.memory_bytes && a.weight_budget_bytes == b.weight_budget_bytes &&
         a.peak_flops == b.peak_flops && a.hbm_bandwidth == b.hbm_bandwidth &&
         a.host_link_bandwidth == b.host_link_bandwidth && a.host_link_latency == b.host_link_latency;
}

nlohmann::json gpuToJson(const GpuSpec& gpu, int count) {
  return {
      {"name", gpu.name},
      {"memory_gb", static_cast<double>(gpu.memory_bytes) / kGB},
      {"weight_budget_gb", static_cast<double>(gpu.weight_budget_bytes) / kGB},
      {"peak_tflops", gpu.peak_flops / kTera},
      {"hbm_gbps", gpu.hbm_bandwidth / kGB},
      {"host_link_gbps", gpu.host_link_bandwidth / kGB},
      {"host_link_latency_us", microsFromNanos(gpu.host_link_latency)},
      {"count", count},
  };
}

}  // namespace

std::vector<std::string> clusterPresetNames() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : presetFactories()) names.push_back(name);
  return names;
}

bool isClusterPreset(const std::string& name) { return presetFactories().count(name) > 0; }

ClusterSpec clusterPreset(const std::string& name) {
  auto it = presetFactories().find(name);
  if (it == presetFactories().end())
    throw ConfigError("unknown cluster preset \"" + name + "\" (known: " + knownPresetList() + ")");
  return it->second();
}

ClusterSpec clusterFromJson(const JsonReader& node, const std::string& base_dir) {
  if (node.isString()) {
    const std::string name = node.asString();
    if (!isClusterPreset(name)) node.fail("unknown cluster preset \"" + name + "\" (known: " + knownPresetList() + ")");
    return clusterPreset(name);
  }
  if (node.isObject() && node.has("preset")) return presetWithOverrides(node, base_dir);
  return fullDescription(node, base_dir);
}

nlohmann::json clusterToJson(const ClusterSpec& c) {
  nlohmann::json gpus = nlohmann::json::array();
  for (std::size_t i = 0; i < c.gpus.size();) {
    std::size_t run = 1;  // consecutive identical GPUs collapse into one entry with a count
    while (i + run < c.gpus.size() && sameHardware(c.gpus[i], c.gpus[i + run])) ++run;
    gpus.push_back(gpuToJson(c.gpus[i], static_cast<int>(run)));
    i += run;
  }
  nlohmann::json uplinks = nlohmann::json::array();
  for (const UplinkSpec& uplink : c.uplinks)
    uplinks.push_back({{"name", uplink.name}, {"gbps", uplink.bandwidth / kGB}, {"gpus", uplink.gpus}});
  nlohmann::json out = {
      {"name", c.name},
      {"gpus", gpus},
      {"uplinks", uplinks},
      {"nvlink_gbps", c.nvlink_bandwidth / kGB},
      {"nvlink_latency_us", microsFromNanos(c.nvlink_latency)},
      {"compute_efficiency", c.compute_efficiency},
      {"memory_efficiency", c.memory_efficiency},
      {"kernel_overhead_us", microsFromNanos(c.kernel_overhead)},
      {"evict_latency_us", microsFromNanos(c.evict_latency)},
  };
  if (c.profile) out["profile"] = c.profile_file;
  if (c.batches_wait_for_loads) out["batches_wait_for_loads"] = true;  // absent when false (outputs unchanged)
  if (c.host_loads_in_order) out["host_loads_in_order"] = true;
  // Nodes and the network only where there is more than one node (one-node results unchanged).
  if (c.gpus_per_node > 0) {
    out["gpus_per_node"] = c.gpus_per_node;
    out["network"] = {{"nic_gbps", c.network.nic_bandwidth / kGB},
                      {"nic_latency_us", microsFromNanos(c.network.nic_latency)},
                      {"spine_gbps", c.network.spine_bandwidth / kGB}};
  }
  return out;
}

}  // namespace computron
