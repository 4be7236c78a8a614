#include "common/scenario/scenario.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <unordered_map>

#include "common/core/oracle.h"
#include "common/core/placement.h"
#include "common/core/policy.h"
#include "common/scenario/interrupt.h"

namespace computron {
namespace {

// Bounds of the scenario's own fields (docs/scenario.md lists them with the others).
constexpr std::int64_t kMaxModels = 1'000'000;  // deployments in a scenario, copies included
constexpr std::int64_t kMaxParallel = 1024;     // tp, pp
constexpr std::int64_t kMaxBatch = 65'536;
constexpr double kMaxMillis = kMaxInputSeconds * 1e3;
constexpr std::size_t kMaxNameLength = 128;

}  // namespace

void checkOutputName(const JsonReader& node) {
  const std::string name = node.asString();
  const bool plain = !name.empty() && name.size() <= kMaxNameLength && name.front() != '.' &&
                     std::all_of(name.begin(), name.end(), [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_' || c == '.';
                     });
  if (!plain)
    node.fail("must be 1 to " + std::to_string(kMaxNameLength) +
              " letters, digits, '-', '_' or '.', not starting with '.' (it names a file or folder under out/), got '" +
              name + "'");
}

namespace {

ModelSpec parseModelSpec(const JsonReader& node, const std::string& base_dir) {
  if (node.isString()) {
    std::string name = node.asString();
    if (!isModelPreset(name)) {
      std::string list;
      for (const auto& n : modelPresetNames()) list += (list.empty() ? "" : ", ") + n;
      node.fail("unknown model preset '" + name + "' (presets: " + list + "; or {\"hf_config\": \"path/config.json\"})");
    }
    return modelPreset(name);
  }
  node.expectObject({"hf_config"});
  std::string path = node.requireString("hf_config");
  std::filesystem::path p(path);
  if (p.is_relative()) p = std::filesystem::path(base_dir) / p;
  try {
    return modelFromHfConfig(p.string());
  } catch (const ConfigError& e) {
    throw ConfigError(node.path() + ".hf_config: " + e.what());
  }
}

std::vector<GpuId> parsePlacement(const JsonReader& model, int shards, int num_gpus) {
  std::vector<GpuId> gpus;
  auto node = model.find("gpus");
  if (!node) {
    if (shards > num_gpus)
      model.fail("needs " + std::to_string(shards) + " GPUs (tp x pp), the cluster has " + std::to_string(num_gpus));
    for (int g = 0; g < shards; ++g) gpus.push_back(g);
    return gpus;
  }
  if (node->isString()) {
    if (node->asString() != "all") node->fail("expected \"all\" or a list of GPU indices");
    if (shards != num_gpus)
      node->fail("\"all\" places one shard on every GPU, so tp x pp must be " + std::to_string(num_gpus) +
                 " (it is " + std::to_string(shards) + ")");
    for (int g = 0; g < num_gpus; ++g) gpus.push_back(g);
    return gpus;
  }
  if (node->size() != static_cast<std::size_t>(shards))
    node->fail("lists " + std::to_string(node->size()) + " GPUs, tp x pp is " + std::to_string(shards));
  std::set<GpuId> seen;
  for (std::size_t i = 0; i < node->size(); ++i) {
    auto item = node->at(i);
    std::int64_t g = item.asInt();
    if (g < 0 || g >= num_gpus)
      item.fail("GPU " + std::to_string(g) + " does not exist (the cluster has " + std::to_string(num_gpus) + ")");
    if (!seen.insert(static_cast<GpuId>(g)).second) item.fail("GPU " + std::to_string(g) + " is listed twice");
    gpus.push_back(static_cast<GpuId>(g));
  }
  return gpus;
}

// Expected requests/s per model for the placement policy: a generated workload's `rates`, or its
// total `rate` split by the Zipf shares that workload.cpp draws models with (zipfShares: share i
// proportional to 1/(i+1)^zipf_alpha, summing to 1, so the loads add up to `rate`); any other
// workload is read ahead and its requests counted per model (a closed-loop one counts as equal
// loads).
std::vector<double> expectedLoads(const JsonReader& workload, const std::vector<std::string>& names, std::uint64_t seed,
                                  Nanos duration, const std::string& base_dir) {
  const std::size_t n = names.size();
  const nlohmann::json& w = workload.json();
  const std::string type = w.is_object() ? w.value("type", std::string()) : std::string();
  if ((type == "poisson" || type == "gamma") && w.contains("rates") && w["rates"].is_array() && w["rates"].size() == n) {
    std::vector<double> loads;
    for (const auto& r : w["rates"]) loads.push_back(r.is_number() ? r.get<double>() : 0.0);
    return loads;
  }
  if ((type == "poisson" || type == "gamma") && w.contains("rate") && w["rate"].is_number()) {
    double alpha = w.contains("zipf_alpha") && w["zipf_alpha"].is_number() ? w["zipf_alpha"].get<double>() : 0.0;
    std::vector<double> loads = zipfShares(n, std::max(alpha, 0.0));
    for (double& load : loads) load *= w["rate"].get<double>();
    return loads;
  }
  std::vector<double> counts(n, 0);
  auto source = computron::makeWorkload(workload, names, seed, duration, base_dir);
  while (auto r = source->next())
    if (r->model >= 0 && static_cast<std::size_t>(r->model) < n) counts[static_cast<std::size_t>(r->model)] += 1;
  if (!source->exhausted()) std::fill(counts.begin(), counts.end(), 1.0);
  return counts;
}

// The registered policy a string node names; an unknown name fails with the node's path and the
// registry's known names.
template <typename Policy>
Choice<Policy> parseChoice(const JsonReader& node) {
  const std::string name = node.asString();
  const auto& registry = Choice<Policy>::registry();
  if (const auto* entry = registry.find(name)) return Choice<Policy>(*entry);
  node.fail(registry.unknownMessage(name));
}

PlacementConfig parsePlacementConfig(const JsonReader& node) {
  PlacementConfig c;
  if (node.isString()) {
    c.policy = parseChoice<PlacementPolicy>(node);
  } else {
    node.expectObject({"policy", "group_gpus", "share_below"});
    if (auto policy = node.find("policy")) c.policy = parseChoice<PlacementPolicy>(*policy);
    c.group_gpus = static_cast<int>(node.getIntIn("group_gpus", 0, 0, 1 << 16));
    c.share_below = node.getDoubleIn("share_below", 0, 0, 1);
  }
  return c;
}

}  // namespace

std::vector<std::string> Scenario::modelNames() const {
  std::vector<std::string> names;
  for (const auto& m : engine.models) names.push_back(m.name);
  return names;
}

std::unique_ptr<RequestSource> Scenario::makeWorkload() const {
  // Ends early when SIGINT or SIGTERM asks the run to stop (interrupt.h).
  return stoppable(computron::makeWorkload(JsonReader(workload, "$.workload"), modelNames(), seed, duration, base_dir));
}

namespace {

// `faults`: [{"kind": "fail-load", "model": "m0", "nth": 2}, {"kind": "stall", "gpu": 0, "ms": 50}].
std::vector<FaultSpec> parseFaults(const JsonReader& node, const std::vector<std::string>& models, int num_gpus) {
  if (!node.isArray()) node.fail("expected an array of faults");
  if (node.size() > kMaxFaults) node.fail("more than " + std::to_string(kMaxFaults) + " faults");
  std::unordered_map<std::string, int> model_ids;
  for (std::size_t m = 0; m < models.size(); ++m) model_ids.emplace(models[m], static_cast<int>(m));
  std::vector<FaultSpec> faults;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const JsonReader f = node.at(i);
    f.expectObject({"kind", "model", "gpu", "ms", "nth"});
    const JsonReader kind = f.at("kind");
    const std::optional<FaultKind> parsed = faultKindFromName(kind.asString());
    if (!parsed) kind.fail("unknown fault '" + kind.asString() + "' (expected fail-load, corrupt-load, fail-batch or stall)");
    FaultSpec spec;
    spec.kind = *parsed;
    if (spec.kind == FaultKind::kStall) {
      if (f.has("model")) f.at("model").fail("a stall names a GPU (\"gpu\"), not a model");
      spec.target = static_cast<int>(f.at("gpu").asIntIn(0, num_gpus - 1));
      spec.stall = f.at("ms").asIntIn(1, kMaxStallMillis) * kNanosPerMilli;
      spec.nth = f.getIntIn("nth", 1, 1, kMaxFaultOccurrence);
    } else {
      for (const char* key : {"gpu", "ms"})
        if (f.has(key)) f.at(key).fail(std::string("applies to stall faults only (this one is ") + kind.asString() + ")");
      const JsonReader model = f.at("model");
      const auto it = model_ids.find(model.asString());
      if (it == model_ids.end()) model.fail("no model named '" + model.asString() + "' in the scenario");
      spec.target = it->second;
      spec.nth = f.getIntIn("nth", 0, 1, kMaxFaultOccurrence);
    }
    spec.label = faultLabel(spec, models);
    faults.push_back(std::move(spec));
  }
  return faults;
}

// `policy.pinned`: ["name", ...], each a model of the scenario, once.
std::vector<ModelId> parsePinned(const JsonReader& node, const std::vector<ModelDeployment>& models) {
  if (!node.isArray()) node.fail("expected an array of model names");
  std::vector<ModelId> pinned;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const JsonReader name = node.at(i);
    const std::string wanted = name.asString();
    const auto it = std::find_if(models.begin(), models.end(), [&](const ModelDeployment& d) { return d.name == wanted; });
    if (it == models.end()) name.fail("no model named '" + wanted + "' in the scenario");
    const auto id = static_cast<ModelId>(it - models.begin());
    if (std::find(pinned.begin(), pinned.end(), id) != pinned.end()) name.fail("model '" + wanted + "' is pinned twice");
    pinned.push_back(id);
  }
  return pinned;
}

// Pinned models hold their room for good: together they must fit each GPU's weight budget, and
// every other model must still fit beside them (else it could never be served), within the count
// cap too. Checked after placement, which may move models.
void checkPinnedRoom(const PolicyConfig& policy, const std::vector<ModelDeployment>& models,
                     const std::vector<std::int64_t>& budgets) {
  const std::string where = "$.policy.pinned";
  auto bytesPerGpu = [&](const ModelDeployment& d) {
    std::vector<std::int64_t> need(budgets.size(), 0);
    for (int shard = 0; shard < d.numShards(); ++shard)
      need[static_cast<std::size_t>(d.gpus[static_cast<std::size_t>(shard)])] +=
          d.spec.shard(d.tp, d.pp, shard % d.tp, shard / d.tp).bytes;
    return need;
  };
  std::vector<std::int64_t> held(budgets.size(), 0);
  std::vector<bool> is_pinned(models.size(), false);
  for (ModelId m : policy.pinned) {
    is_pinned[static_cast<std::size_t>(m)] = true;
    const auto need = bytesPerGpu(models[static_cast<std::size_t>(m)]);
    for (std::size_t g = 0; g < budgets.size(); ++g) {
      held[g] += need[g];
      if (held[g] > budgets[g])
        throw ConfigError(where + ": the pinned models need " + std::to_string(held[g]) + " bytes on GPU " +
                          std::to_string(g) + " (with " + models[static_cast<std::size_t>(m)].name +
                          "), more than its weight budget of " + std::to_string(budgets[g]) + " bytes");
    }
  }
  for (std::size_t m = 0; m < models.size(); ++m) {
    if (is_pinned[m]) continue;
    const auto need = bytesPerGpu(models[m]);
    for (std::size_t g = 0; g < budgets.size(); ++g)
      if (need[g] > 0 && held[g] + need[g] > budgets[g])
        throw ConfigError(where + ": model " + models[m].name + " needs " + std::to_string(need[g]) + " bytes on GPU " +
                          std::to_string(g) + ", and the pinned models leave only " + std::to_string(budgets[g] - held[g]) +
                          " of its weight budget: it could never be loaded");
  }
  const auto pinned = static_cast<int>(policy.pinned.size());
  const int cap = policy.max_loaded_models;
  if (cap > 0 && (pinned > cap || (pinned == cap && models.size() > policy.pinned.size())))
    throw ConfigError(where + ": " + std::to_string(pinned) + " pinned models leave no room under max_loaded_models " +
                      std::to_string(cap) + " for the others");
}

}  // namespace

Scenario parseScenario(const nlohmann::json& doc, const std::string& base_dir) {
  JsonReader root(doc, "$");
  root.expectObject({"name", "description", "seed", "duration_s", "cluster", "models", "workload", "policy", "slo_ms",
                     "outputs", "faults"});
  Scenario s;
  s.base_dir = base_dir;
  s.name = root.getString("name", "scenario");
  if (root.has("name")) checkOutputName(root.at("name"));
  s.seed = static_cast<std::uint64_t>(root.getIntIn("seed", 1, 0, INT64_MAX));
  const double duration_s = root.getDoubleIn("duration_s", 0, 0, kMaxInputSeconds);
  s.duration = secondsToNanos(duration_s);
  s.cluster = clusterFromJson(root.at("cluster"), base_dir);
  const int num_gpus = s.cluster.numGpus();
  const double default_slo_ms = root.getDoubleIn("slo_ms", 0, 0, kMaxMillis);

  auto models = root.at("models");
  if (models.size() == 0) models.fail("at least one model is needed");
  if (models.size() > static_cast<std::size_t>(kMaxModels)) models.fail("more than " + std::to_string(kMaxModels) + " entries");
  std::set<std::string> names;
  std::unordered_map<std::string, std::size_t> weights_owner;  // weights name -> first model holding them
  std::vector<std::int64_t> budgets;
  for (const auto& gpu : s.cluster.gpus) budgets.push_back(gpu.weight_budget_bytes);
  for (std::size_t i = 0; i < models.size(); ++i) {
    auto m = models.at(i);
    m.expectObject({"name", "spec", "tp", "pp", "gpus", "max_batch", "slo_ms", "count", "fixed_batch_ms", "weights"});
    ModelDeployment d;
    d.spec = parseModelSpec(m.at("spec"), base_dir);
    d.tp = static_cast<int>(m.getIntIn("tp", 1, 1, kMaxParallel));
    d.pp = static_cast<int>(m.getIntIn("pp", 1, 1, kMaxParallel));
    d.spec.validateParallel(d.tp, d.pp, m.path());
    d.gpus = parsePlacement(m, d.tp * d.pp, num_gpus);
    d.max_batch = static_cast<int>(m.getIntIn("max_batch", 8, 1, kMaxBatch));
    const double slo_ms = m.getDoubleIn("slo_ms", default_slo_ms, 0, kMaxMillis);
    d.slo = secondsToNanos(slo_ms / 1e3);
    const double fixed_ms = m.getDoubleIn("fixed_batch_ms", 0, 0, kMaxMillis);
    d.fixed_batch_time = secondsToNanos(fixed_ms / 1e3);
    // Every shard must fit its GPU's weight budget, else the model could never be served.
    if (const auto over = shardOverBudget(d.spec, d.tp, d.pp, d.gpus, budgets)) {
      m.fail("shard (tp " + std::to_string(over->shard % d.tp) + ", pp " + std::to_string(over->shard / d.tp) + ") holds " +
             std::to_string(over->bytes) + " bytes, more than GPU " + std::to_string(over->gpu) + "'s weight budget of " +
             std::to_string(over->budget) + " bytes; use more tensor or pipeline parallelism");
    }
    const std::int64_t count = m.getIntIn("count", 1, 1, kMaxModels);
    if (static_cast<std::int64_t>(s.engine.models.size()) + count > kMaxModels)
      m.at("count").fail("the scenario would have more than " + std::to_string(kMaxModels) + " models");
    std::string base_name = m.getString("name", d.spec.name);
    // `weights`: deployments naming the same weights hold identical parameters, so a shard can be
    // copied from one that is resident (load routing from a device).
    std::string weights = m.getString("weights", "");
    if (!weights.empty() && count != 1) m.at("weights").fail("shared weights need count 1 (copies are distinct models)");
    for (std::int64_t c = 0; c < count; ++c) {
      ModelDeployment copy = d;
      copy.name = count == 1 ? base_name : base_name + "-" + std::to_string(c);
      copy.weights = weights.empty() ? copy.name : weights;
      // Models sharing weights all match the first holder, so comparing with it covers every pair.
      const auto [owner, first] = weights_owner.emplace(copy.weights, s.engine.models.size());
      if (!first) {
        const ModelDeployment& other = s.engine.models[owner->second];
        if (other.spec.name != copy.spec.name || other.spec.totalBytes() != copy.spec.totalBytes())
          m.at("weights").fail("weights '" + copy.weights + "' are shared with model " + other.name + ", whose spec differs");
      }
      if (!names.insert(copy.name).second) m.fail("model name '" + copy.name + "' is used twice");
      s.engine.models.push_back(std::move(copy));
    }
  }
  for (const auto& g : s.cluster.gpus) s.engine.gpu_weight_budget.push_back(g.weight_budget_bytes);

  PolicyConfig& policy = s.engine.policy;
  PlacementConfig placement;
  std::int64_t kv_budget_override = 0;
  if (auto p = root.find("policy")) {
    if (p->isString()) {
      policy.name = parseChoice<PolicySet>(*p);
      applyPolicySet(policy);
    } else {
      p->expectObject({"name", "max_loaded_models", "eviction", "queue", "prefetch", "routing", "admission",
                       "lfu_half_life_s", "rate_window_s", "placement", "serial_loads", "layer_pipelined", "pinned",
                       "batching", "max_drain_ms", "session_quantum_ms", "kv_budget_gb"});
      if (auto name = p->find("name")) policy.name = parseChoice<PolicySet>(*name);
      policy.max_loaded_models = static_cast<int>(p->getIntIn("max_loaded_models", 0, 0, kMaxModels));
      applyPolicySet(policy);
      // Individual choices override the set's.
      if (auto v = p->find("eviction")) policy.eviction = parseChoice<EvictionPolicy>(*v);
      if (auto v = p->find("queue")) policy.queue = parseChoice<QueuePolicy>(*v);
      if (auto v = p->find("prefetch")) policy.prefetch = parseChoice<PrefetchPolicy>(*v);
      if (auto v = p->find("routing")) policy.routing = parseChoice<RoutingPolicy>(*v);
      policy.admission = p->getBool("admission", policy.admission);
      policy.serial_loads = p->getBool("serial_loads", policy.serial_loads);
      policy.layer_pipelined = p->getBool("layer_pipelined", policy.layer_pipelined);
      const double half_life = p->getDoubleIn("lfu_half_life_s", toSeconds(policy.lfu_half_life), 0, kMaxInputSeconds);
      policy.lfu_half_life = secondsToNanos(half_life);
      const double window = p->getDoubleIn("rate_window_s", toSeconds(policy.rate_window), 0, kMaxInputSeconds);
      if (window <= 0) p->at("rate_window_s").fail("must be greater than 0");
      policy.rate_window = secondsToNanos(window);

      if (auto pl = p->find("placement")) placement = parsePlacementConfig(*pl);
      if (auto pins = p->find("pinned")) policy.pinned = parsePinned(*pins, s.engine.models);
      if (auto b = p->find("batching")) {
        const std::string mode = b->asString();
        if (mode == "request") {
          policy.batching = Batching::kRequest;
        } else if (mode == "iteration") {
          policy.batching = Batching::kIteration;
        } else {
          b->fail("must be \"request\" or \"iteration\", not \"" + mode + "\"");
        }
      }
      const double drain_ms = p->getDoubleIn("max_drain_ms", static_cast<double>(policy.max_drain) / 1e6, 0, kMaxInputSeconds * 1e3);
      policy.max_drain = static_cast<Nanos>(std::llround(drain_ms * 1e6));
      const double quantum_ms =
          p->getDoubleIn("session_quantum_ms", static_cast<double>(policy.session_quantum) / 1e6, 0, kMaxInputSeconds * 1e3);
      policy.session_quantum = static_cast<Nanos>(std::llround(quantum_ms * 1e6));
      if (auto kv = p->find("kv_budget_gb")) {
        const double gb = kv->asDouble();
        if (!(gb > 0) || gb > 1e6) kv->fail("must be greater than 0 and at most 1e6");
        kv_budget_override = static_cast<std::int64_t>(std::llround(gb * 1e9));
      }
    }
  } else {
    applyPolicySet(policy);
  }
  // Found here rather than when the first load is routed: multipath forwards over NVLink.
  if (policy.routing.name() == "multipath" && !s.cluster.hasNvlink()) {
    const auto p = root.find("policy");
    const std::string where = p && p->isObject() && p->has("routing") ? "$.policy.routing" : "$.policy";
    throw ConfigError(where + ": multipath routing forwards shards over NVLink, and the cluster has none (nvlink_gbps is 0)");
  }
  // The KV budget of each GPU: what its weight budget leaves of its memory, or policy.kv_budget_gb.
  // A cluster that gives its whole memory to weights (a queueing experiment) sets no KV limit.
  bool kv_limited = kv_budget_override > 0;
  for (const auto& g : s.cluster.gpus) kv_limited = kv_limited || g.memory_bytes > g.weight_budget_bytes;
  if (kv_limited)
    for (const auto& g : s.cluster.gpus)
      s.engine.gpu_kv_budget.push_back(kv_budget_override > 0 ? kv_budget_override
                                                              : std::max<std::int64_t>(0, g.memory_bytes - g.weight_budget_bytes));
  for (const auto& g : s.cluster.gpus) s.engine.gpu_link_bandwidth.push_back(g.host_link_bandwidth);
  s.engine.nvlink = s.cluster.hasNvlink();
  if (s.cluster.numNodes() > 1) {
    for (const auto& g : s.cluster.gpus) s.engine.gpu_node.push_back(g.node);
    s.engine.nic_share_bandwidth = s.cluster.nicShare();
  }
  // Placement: each model's GPUs and TP x PP, from the expected load per model.
  std::vector<double> loads(s.engine.models.size(), 0);
  if (placement.policy->usesExpectedLoads()) {
    try {
      loads = expectedLoads(root.at("workload"), s.modelNames(), s.seed, s.duration, base_dir);
    } catch (const ConfigError&) {
      std::fill(loads.begin(), loads.end(), 1.0);  // a bad workload fails below, with its own path
    }
    s.engine.models =
        placeModels(s.engine.models, loads, s.engine.gpu_weight_budget, placement, "$.policy.placement", s.engine.gpu_node);
  }
  if (!policy.pinned.empty()) checkPinnedRoom(policy, s.engine.models, s.engine.gpu_weight_budget);
  if (policy.needsFuture()) {
    // The offline policies read the whole request stream ahead (one time stamp a request).
    try {
      auto future = computron::makeWorkload(root.at("workload"), s.modelNames(), s.seed, s.duration, base_dir);
      s.engine.future = ArrivalOracle::fromSource(*future, s.engine.models.size());
    } catch (const ConfigError& e) {
      throw ConfigError(root.path() + ".policy: " + e.what());
    }
  }

  if (auto f = root.find("faults")) s.faults = parseFaults(*f, s.modelNames(), num_gpus);

  s.workload = root.at("workload").json();
  // Build the stream once now so a bad workload or trace fails before any output is written.
  s.makeWorkload();
  checkWorkloadEnds(root.at("workload"), s.engine.models.size(), s.duration);

  s.outputs.dir = "out/" + s.name;
  if (auto o = root.find("outputs")) {
    o->expectObject({"dir", "summary", "requests_csv", "timeline"});
    s.outputs.dir = o->getString("dir", s.outputs.dir);
    s.outputs.summary = o->getBool("summary", true);
    s.outputs.requests_csv = o->getBool("requests_csv", true);
    s.outputs.timeline = o->getBool("timeline", true);
  }

  s.effective = doc;
  s.effective["cluster"] = clusterToJson(s.cluster);
  s.effective["policy"] = {{"name", policy.name.name()},
                           {"max_loaded_models", policy.max_loaded_models},
                           {"eviction", policy.eviction.name()},
                           {"queue", policy.queue.name()},
                           {"prefetch", policy.prefetch.name()},
                           {"routing", policy.routing.name()},
                           {"admission", policy.admission},
                           {"serial_loads", policy.serial_loads},
                           {"layer_pipelined", policy.layer_pipelined},
                           {"lfu_half_life_s", toSeconds(policy.lfu_half_life)},
                           {"rate_window_s", toSeconds(policy.rate_window)},
                           {"placement", placementToJson(placement, s.engine.models, loads)}};
  // Only when given, so that the effective policy of every scenario without pins reads as before.
  if (!policy.pinned.empty()) {
    nlohmann::json pinned = nlohmann::json::array();
    for (ModelId m : policy.pinned) pinned.push_back(s.engine.models[static_cast<std::size_t>(m)].name);
    s.effective["policy"]["pinned"] = pinned;
  }
  // Likewise only for iteration batching, so request-level scenarios read as before.
  if (policy.batching == Batching::kIteration) {
    s.effective["policy"]["batching"] = "iteration";
    s.effective["policy"]["max_drain_ms"] = static_cast<double>(policy.max_drain) / 1e6;
    s.effective["policy"]["session_quantum_ms"] = static_cast<double>(policy.session_quantum) / 1e6;
  }
  s.effective["seed"] = s.seed;
  return s;
}

Scenario loadScenario(const std::string& path, const std::vector<std::string>& overrides) {
  nlohmann::json doc = readJsonFile(path);
  for (const auto& o : overrides) applyOverride(doc, o);
  std::string base = std::filesystem::path(path).parent_path().string();
  if (base.empty()) base = ".";
  return parseScenario(doc, base);
}

nlohmann::json defaultScenarioJson() {
  // The seed paper's three-model random workload on its node: OPT-13B x 3 with TP 2 x PP 2,
  // two resident at a time, batch 8, Gamma arrivals with CV 4 and rates (10, 1, 1) req/s.
  return nlohmann::json::parse(R"({
    "name": "default-opt13b-3models-cv4",
    "description": "Three OPT-13B models (TP 2, PP 2) on the seed paper's 4 x A100-40GB node, two resident at a time",
    "seed": 1,
    "duration_s": 30,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "opt-13b", "spec": "opt-13b", "count": 3, "tp": 2, "pp": 2, "gpus": "all", "max_batch": 8}],
    "workload": {"type": "gamma", "rates": [10, 1, 1], "cv": 4, "prompt_tokens": 512, "output_tokens": 1},
    "policy": {"name": "computron", "max_loaded_models": 2},
    "slo_ms": 1000
  })");
}

}  // namespace computron
