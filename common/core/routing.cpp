#include "common/core/routing.h"

#include <algorithm>
#include <memory>

#include "common/core/engine.h"

namespace computron {
namespace {

// Splits a shard's bytes over its own host link and the helpers' in proportion to their
// bandwidth, so every part finishes together; the shard's own link takes the rounding.
std::vector<RoutePart> splitOverLinks(GpuId gpu, std::int64_t bytes, const std::vector<GpuId>& helpers,
                                      const Engine& engine) {
  if (helpers.empty()) return {RoutePart{gpu, bytes, false}};
  double total = engine.hostLinkBandwidth(gpu);
  for (GpuId h : helpers) total += engine.hostLinkBandwidth(h);
  std::vector<RoutePart> parts;
  std::int64_t given = 0;
  for (GpuId h : helpers) {
    auto share = static_cast<std::int64_t>(static_cast<double>(bytes) * engine.hostLinkBandwidth(h) / total);
    parts.push_back(RoutePart{h, share, false});
    given += share;
  }
  parts.insert(parts.begin(), RoutePart{gpu, bytes - given, false});
  return parts;
}

// The routes of model m's shards. `copy_twins`: a shard held by a resident twin on another GPU is
// copied from it over NVLink. `idle_helpers`: host links of GPUs outside the model with no load
// in flight are dealt to its shards in turn (a shard copied from a twin gives its helpers back to
// the pool for the next shard; a shard without one loads directly).
std::vector<ShardRoute> planRoutes(ModelId m, const Engine& engine, bool copy_twins, bool idle_helpers) {
  const auto& d = engine.config().models.at(static_cast<std::size_t>(m));
  std::vector<GpuId> helpers;
  if (idle_helpers) {
    const auto num_gpus = static_cast<GpuId>(engine.config().gpu_weight_budget.size());
    for (GpuId g = 0; g < num_gpus; ++g) {
      if (engine.hostLinkLoads(g) > 0 || engine.gpuLost(g)) continue;
      if (std::find(d.gpus.begin(), d.gpus.end(), g) != d.gpus.end()) continue;
      // NVLink joins only one node's GPUs: a helper must share a node with the model.
      if (std::none_of(d.gpus.begin(), d.gpus.end(), [&](GpuId own) { return engine.nodeOf(own) == engine.nodeOf(g); }))
        continue;
      helpers.push_back(g);
    }
  }
  const std::size_t per_shard =
      helpers.empty() ? 0 : std::max<std::size_t>(1, helpers.size() / static_cast<std::size_t>(d.numShards()));
  std::size_t next_helper = 0;
  std::vector<ShardRoute> routes;
  for (int shard = 0; shard < d.numShards(); ++shard) {
    const GpuId gpu = d.gpus[static_cast<std::size_t>(shard)];
    const std::int64_t bytes = engine.shardBytes(m, shard);
    std::vector<GpuId> mine;
    for (std::size_t k = 0; k < per_shard && next_helper < helpers.size(); ++k) mine.push_back(helpers[next_helper++]);
    // A helper of another node than this shard's cannot forward to it over NVLink.
    mine.erase(std::remove_if(mine.begin(), mine.end(), [&](GpuId h) { return engine.nodeOf(h) != engine.nodeOf(gpu); }),
               mine.end());
    ShardRoute route;
    route.copy_from = copy_twins ? engine.twinHolding(m, shard, gpu) : -1;
    if (route.copy_from >= 0) {
      const auto& twin = engine.config().models[static_cast<std::size_t>(route.copy_from)];
      route.parts = {RoutePart{twin.gpus[static_cast<std::size_t>(shard)], bytes, true}};
      next_helper -= mine.size();
    } else {
      route.parts = splitOverLinks(gpu, bytes, mine, engine);
    }
    routes.push_back(std::move(route));
  }
  return routes;
}

// Each shard split between its own host link and the host memory of the next node (in a ring)
// over the network, in proportion to the host link's bandwidth and the GPU's share of its NIC, so
// both parts end together; on one node, direct.
class RemoteHostRouting final : public RoutingPolicy {
 public:
  bool readsOnlyOwnGpus() const override { return true; }
  std::vector<ShardRoute> plan(ModelId m, const Engine& engine) const override {
    const auto& d = engine.config().models.at(static_cast<std::size_t>(m));
    const double nic = engine.config().nic_share_bandwidth;
    std::vector<ShardRoute> routes;
    for (int shard = 0; shard < d.numShards(); ++shard) {
      const GpuId gpu = d.gpus[static_cast<std::size_t>(shard)];
      const std::int64_t bytes = engine.shardBytes(m, shard);
      ShardRoute route;
      if (engine.numNodes() < 2 || nic <= 0) {
        route.parts = {RoutePart{gpu, bytes, false}};
      } else {
        const double own = engine.hostLinkBandwidth(gpu);
        const auto remote = static_cast<std::int64_t>(static_cast<double>(bytes) * nic / (own + nic));
        const int from = (engine.nodeOf(gpu) + 1) % engine.numNodes();
        route.parts = {RoutePart{gpu, bytes - remote, false}, RoutePart{gpu, remote, false, from}};
      }
      routes.push_back(std::move(route));
    }
    return routes;
  }
};

// Each shard over its own GPU's host link (the seed's).
class DirectRouting final : public RoutingPolicy {
 public:
  bool readsOnlyOwnGpus() const override { return true; }
  std::vector<ShardRoute> plan(ModelId m, const Engine& engine) const override {
    return planRoutes(m, engine, /*copy_twins=*/false, /*idle_helpers=*/false);
  }
};

// A shard whose twin is resident on another GPU is copied from it over NVLink; others load directly.
class PeerRouting final : public RoutingPolicy {
 public:
  std::vector<ShardRoute> plan(ModelId m, const Engine& engine) const override {
    return planRoutes(m, engine, /*copy_twins=*/true, /*idle_helpers=*/false);
  }
};

// As peer, and otherwise idle host links of other GPUs carry a share of each shard, forwarded over
// NVLink.
class MultipathRouting final : public RoutingPolicy {
 public:
  std::vector<ShardRoute> plan(ModelId m, const Engine& engine) const override {
    return planRoutes(m, engine, /*copy_twins=*/true, /*idle_helpers=*/true);
  }
};

}  // namespace

const Registry<RoutingPolicy>& policyRegistry(const RoutingPolicy*) {
  static const Registry<RoutingPolicy> registry = [] {
    Registry<RoutingPolicy> r("routing policy");
    r.add("direct", "each shard over its own GPU's host link (the seed's)",
          [] { return std::make_unique<DirectRouting>(); });
    r.add("peer", "copies a shard from a resident twin over NVLink; other shards load directly",
          [] { return std::make_unique<PeerRouting>(); });
    r.add("multipath", "as peer, and idle host links of other GPUs carry a share of each shard over NVLink",
          [] { return std::make_unique<MultipathRouting>(); });
    r.add("remote-host",
          "each shard split between its own host link and the next node's host memory over the network",
          [] { return std::make_unique<RemoteHostRouting>(); });
    return r;
  }();
  return registry;
}

}  // namespace computron
