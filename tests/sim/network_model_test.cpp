// The network between nodes against transfer times worked out by hand (exact nanoseconds): NIC
// sharing, an oversubscribed spine, a remote flow beside a local one on the same host link, and
// the cost model's terms for a TP group or a pipeline boundary that spans nodes.
#include <gtest/gtest.h>

#include <map>

#include "common/cost_model.h"
#include "common/json_reader.h"
#include "sim/link_model.h"

namespace computron::sim {
namespace {

// `nodes` nodes of `per_node` GPUs: host links 50 GB/s, NVLink 100 GB/s inside a node, NICs of
// 20 GB/s each way with 5 us latency, spine `spine_gbps` (0: non-blocking).
ClusterSpec nodesCluster(int nodes, int per_node, double spine_gbps = 0) {
  ClusterSpec c;
  c.name = "test";
  c.gpus_per_node = per_node;
  for (int g = 0; g < nodes * per_node; ++g) {
    GpuSpec gpu;
    gpu.name = "gpu";
    gpu.memory_bytes = gpu.weight_budget_bytes = 80 * kGiB;
    gpu.peak_flops = 1e15;
    gpu.hbm_bandwidth = 3e12;
    gpu.host_link_bandwidth = 50e9;
    gpu.node = g / per_node;
    c.gpus.push_back(gpu);
  }
  c.nvlink_bandwidth = 100e9;
  c.network.nic_bandwidth = 20e9;
  c.network.nic_latency = 5 * kNanosPerMicro;
  c.network.spine_bandwidth = spine_gbps * 1e9;
  return c;
}

std::map<FlowId, Nanos> drainNetwork(LinkModel& links) {
  std::map<FlowId, Nanos> done;
  while (auto t = links.nextCompletion()) {
    for (FlowId f : links.takeCompleted(*t)) done[f] = *t;
  }
  return done;
}

TEST(NetworkModel, RemoteCopyRunsAtTheNicRatePlusItsLatency) {
  ClusterSpec c = nodesCluster(2, 2);
  LinkModel links(c);
  // 20 GB over a 20 GB/s NIC (the 50 GB/s host link behind it is not the bottleneck): 1 s + 5 us.
  FlowId f = links.start(0, 20e9, links.remotePath(1, 0), c.network.nic_latency);
  EXPECT_DOUBLE_EQ(links.rateOf(f), 20e9);
  EXPECT_EQ(drainNetwork(links).at(f), 1'000'005'000);
}

TEST(NetworkModel, TwoGpusOfANodeShareItsNic) {
  ClusterSpec c = nodesCluster(2, 2);
  LinkModel links(c);
  // Both into node 0 from node 1: 10 GB/s each, so 10 GB takes 1 s (+ 5 us).
  FlowId a = links.start(0, 10e9, links.remotePath(1, 0), c.network.nic_latency);
  FlowId b = links.start(0, 10e9, links.remotePath(1, 1), c.network.nic_latency);
  EXPECT_DOUBLE_EQ(links.rateOf(a), 10e9);
  auto done = drainNetwork(links);
  EXPECT_EQ(done.at(a), 1'000'005'000);
  EXPECT_EQ(done.at(b), 1'000'005'000);
}

TEST(NetworkModel, AnOversubscribedSpineCapsFlowsBetweenDifferentNodePairs) {
  // Four nodes of one GPU; flows 1 -> 0 and 3 -> 2 use four different NICs but one spine.
  ClusterSpec blocking = nodesCluster(4, 1, /*spine_gbps=*/20);
  LinkModel links(blocking);
  FlowId a = links.start(0, 10e9, links.remotePath(1, 0), 0);
  FlowId b = links.start(0, 10e9, links.remotePath(3, 2), 0);
  auto done = drainNetwork(links);
  EXPECT_EQ(done.at(a), kNanosPerSecond);  // 10 GB/s each through the 20 GB/s spine
  EXPECT_EQ(done.at(b), kNanosPerSecond);
  ClusterSpec open = nodesCluster(4, 1);
  LinkModel free_links(open);
  FlowId c = free_links.start(0, 10e9, free_links.remotePath(1, 0), 0);
  EXPECT_EQ(drainNetwork(free_links).at(c), kNanosPerSecond / 2);  // the NIC's full 20 GB/s
}

TEST(NetworkModel, ARemoteFlowAndALocalOneShareTheHostLinkMaxMinFairly) {
  ClusterSpec c = nodesCluster(2, 1);
  LinkModel links(c);
  // Host link 50 GB/s: the remote flow is held to 20 by the NIC, the local one gets the other 30.
  FlowId remote = links.start(0, 20e9, links.remotePath(1, 0), 0);
  FlowId local = links.start(0, 30e9, links.hostPath(0), 0);
  EXPECT_DOUBLE_EQ(links.rateOf(remote), 20e9);
  EXPECT_DOUBLE_EQ(links.rateOf(local), 30e9);
  auto done = drainNetwork(links);
  EXPECT_EQ(done.at(remote), kNanosPerSecond);
  EXPECT_EQ(done.at(local), kNanosPerSecond);
}

TEST(NetworkModel, AChangeInOneNodeLeavesAnotherNodesFlowsAlone) {
  ClusterSpec c = nodesCluster(2, 1);
  LinkModel links(c);
  // 50 GB on GPU 1 (node 1) alone: 1 s. Flows on node 0 start and end meanwhile.
  FlowId far = links.start(0, 50e9, links.hostPath(1), 0);
  FlowId near = links.start(100'000'000, 25e9, links.hostPath(0), 0);
  EXPECT_DOUBLE_EQ(links.rateOf(far), 50e9);
  FlowId second = links.start(200'000'000, 5e9, links.hostPath(0), 0);
  // GPU 0 now shares 50 GB/s: `second` 5 GB at 25 GB/s ends at 0.4 s; `near` had 20 GB left at
  // 0.2 s, moves 5 GB by 0.4 s, then the last 15 GB at 50 GB/s: 0.7 s.
  auto done = drainNetwork(links);
  EXPECT_EQ(done.at(far), kNanosPerSecond);
  EXPECT_EQ(done.at(second), 400'000'000);
  EXPECT_EQ(done.at(near), 700'000'000);
}

TEST(NetworkModel, NvlinkDoesNotCrossNodesAndRemoteNeedsAnotherNode) {
  ClusterSpec c = nodesCluster(2, 2);
  LinkModel links(c);
  EXPECT_NO_THROW(links.peerPath(0, 1, false));
  EXPECT_THROW(links.peerPath(0, 2, false), std::invalid_argument);
  EXPECT_THROW(links.remotePath(0, 1), std::invalid_argument);  // GPU 1 is on node 0
}

TEST(NetworkModel, CostModelPaysTheNetworkForGroupsAcrossNodes) {
  ClusterSpec c = nodesCluster(2, 2);
  RooflineCostModel cost(c);
  // Ring all-reduce of 1 MB over 2 GPUs: 2 (2 - 1) / 2 x 1e6 bytes over one GPU's NIC share
  // (20 GB/s / 2 GPUs = 10 GB/s) = 100 us, plus 5 us of latency; inside a node over 100 GB/s
  // NVLink: 10 us plus NVLink's latency (0 here).
  EXPECT_EQ(cost.allReduceTime(1e6, 2, /*across_nodes=*/true), 105'000);
  EXPECT_EQ(cost.allReduceTime(1e6, 2, /*across_nodes=*/false), 10'000);
  // Activations of 1 MB to the next pipeline stage: 100 us + 5 us across, 10 us within.
  EXPECT_EQ(cost.stageSendTime(1e6, true), 105'000);
  EXPECT_EQ(cost.stageSendTime(1e6, false), 10'000);

  // A PP 2 batch whose stages sit on two nodes takes exactly the send's difference longer.
  ModelDeployment d;
  d.name = d.weights = "opt-125m";
  d.spec = modelPreset("opt-125m");
  d.pp = 2;
  Request r;
  r.prompt_tokens = 100;
  r.output_tokens = 1;
  d.gpus = {0, 1};
  const Nanos within = cost.batchTimes(d, {r}).total;
  d.gpus = {0, 2};
  const Nanos across = cost.batchTimes(d, {r}).total;
  const double bytes = 100.0 * d.spec.hidden * dtypeBytes(d.spec.dtype);
  EXPECT_EQ(across - within, cost.stageSendTime(bytes, true) - cost.stageSendTime(bytes, false));
}

TEST(NetworkModel, FleetPresetsHaveTheirNodesAndNetwork) {
  ClusterSpec two = clusterPreset("h100x8-x2");
  EXPECT_EQ(two.numGpus(), 16);
  EXPECT_EQ(two.numNodes(), 2);
  EXPECT_EQ(two.nodeOf(8), 1);
  EXPECT_EQ(two.network.spine_bandwidth, 0);
  ClusterSpec fleet = clusterPreset("fleet-64x8");
  EXPECT_EQ(fleet.numGpus(), 512);
  EXPECT_EQ(fleet.numNodes(), 64);
  EXPECT_DOUBLE_EQ(fleet.network.spine_bandwidth, 0.5 * 64 * 400e9);
  // The effective description reads back the same.
  ClusterSpec back = clusterFromJson(JsonReader(clusterToJson(fleet), "$.cluster"));
  EXPECT_EQ(back.numNodes(), 64);
  EXPECT_EQ(back.nodeOf(511), 63);
  EXPECT_DOUBLE_EQ(back.network.nic_bandwidth, fleet.network.nic_bandwidth);
  EXPECT_EQ(back.network.nic_latency, fleet.network.nic_latency);
}

}  // namespace
}  // namespace computron::sim
