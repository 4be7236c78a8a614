#include "sim/link_model.h"

#include <gtest/gtest.h>

namespace computron::sim {
namespace {

ClusterSpec twoGpus(double link_gbps, double uplink_gbps = 0, double nvlink_gbps = 0) {
  ClusterSpec c;
  c.name = "test";
  for (int g = 0; g < 2; ++g) {
    GpuSpec gpu;
    gpu.name = "gpu";
    gpu.memory_bytes = gpu.weight_budget_bytes = 80 * kGiB;
    gpu.peak_flops = 1e15;
    gpu.hbm_bandwidth = 3e12;
    gpu.host_link_bandwidth = link_gbps * 1e9;
    c.gpus.push_back(gpu);
  }
  if (uplink_gbps > 0) {
    c.uplinks.push_back(UplinkSpec{"switch", uplink_gbps * 1e9, {0, 1}});
    c.gpus[0].uplink = c.gpus[1].uplink = 0;
  }
  c.nvlink_bandwidth = nvlink_gbps * 1e9;
  return c;
}

// Runs the model until every flow is done; returns completion time per flow id.
std::map<FlowId, Nanos> drain(LinkModel& links) {
  std::map<FlowId, Nanos> done;
  while (auto t = links.nextCompletion()) {
    for (FlowId f : links.takeCompleted(*t)) done[f] = *t;
  }
  return done;
}

TEST(LinkModel, OneTransferRunsAtLineRate) {
  ClusterSpec c = twoGpus(50);
  LinkModel links(c);
  FlowId f = links.start(0, 50e9, links.hostPath(0), 0);
  auto done = drain(links);
  EXPECT_EQ(done.at(f), kNanosPerSecond);
}

TEST(LinkModel, TwoEqualTransfersOnOneLinkEachTakeTwiceAsLong) {
  ClusterSpec c = twoGpus(50);
  LinkModel links(c);
  FlowId a = links.start(0, 50e9, links.hostPath(0), 0);
  FlowId b = links.start(0, 50e9, links.hostPath(0), 0);
  EXPECT_DOUBLE_EQ(links.rateOf(a), 25e9);
  auto done = drain(links);
  EXPECT_EQ(done.at(a), 2 * kNanosPerSecond);
  EXPECT_EQ(done.at(b), 2 * kNanosPerSecond);
}

TEST(LinkModel, SeparateLinksDoNotInterfere) {
  ClusterSpec c = twoGpus(50);
  LinkModel links(c);
  FlowId a = links.start(0, 50e9, links.hostPath(0), 0);
  FlowId b = links.start(0, 50e9, links.hostPath(1), 0);
  auto done = drain(links);
  EXPECT_EQ(done.at(a), kNanosPerSecond);
  EXPECT_EQ(done.at(b), kNanosPerSecond);
}

TEST(LinkModel, SharedUplinkCapBindsWhenBothLinksAreBusy) {
  ClusterSpec c = twoGpus(50, 60);  // two 50 GB/s links under a 60 GB/s cap
  LinkModel links(c);
  FlowId a = links.start(0, 30e9, links.hostPath(0), 0);
  EXPECT_DOUBLE_EQ(links.rateOf(a), 50e9);  // alone: the link binds, not the cap
  FlowId b = links.start(0, 30e9, links.hostPath(1), 0);
  EXPECT_DOUBLE_EQ(links.rateOf(a), 30e9);  // together: the cap binds, split fairly
  EXPECT_DOUBLE_EQ(links.rateOf(b), 30e9);
  auto done = drain(links);
  EXPECT_EQ(done.at(a), kNanosPerSecond);
  EXPECT_EQ(done.at(b), kNanosPerSecond);
}

TEST(LinkModel, RatesRecomputeWhenATransferEnds) {
  ClusterSpec c = twoGpus(50);
  LinkModel links(c);
  // 25 GB and 75 GB on one link: both at 25 GB/s until the first ends at 1 s, then the second
  // alone at 50 GB/s for its last 50 GB: done at 2 s.
  FlowId a = links.start(0, 25e9, links.hostPath(0), 0);
  FlowId b = links.start(0, 75e9, links.hostPath(0), 0);
  auto done = drain(links);
  EXPECT_EQ(done.at(a), kNanosPerSecond);
  EXPECT_EQ(done.at(b), 2 * kNanosPerSecond);
}

TEST(LinkModel, LatencyIsAddedOnceAndFreesBandwidthAtDrain) {
  ClusterSpec c = twoGpus(50);
  LinkModel links(c);
  FlowId a = links.start(0, 50e9, links.hostPath(0), 10 * kNanosPerMicro);
  auto done = drain(links);
  EXPECT_EQ(done.at(a), kNanosPerSecond + 10 * kNanosPerMicro);
}

TEST(LinkModel, PeerRouteUsesTheOtherHostLinkAndNvlink) {
  ClusterSpec c = twoGpus(50, 0, 400);
  LinkModel links(c);
  // Half direct, half through GPU 1's host link and NVLink: both halves at 50 GB/s.
  FlowId direct = links.start(0, 25e9, links.hostPath(0), 0);
  FlowId via_peer = links.start(0, 25e9, links.peerPath(1, 0, false), 0);
  EXPECT_DOUBLE_EQ(links.rateOf(direct), 50e9);
  EXPECT_DOUBLE_EQ(links.rateOf(via_peer), 50e9);
  auto done = drain(links);
  EXPECT_EQ(done.at(direct), kNanosPerSecond / 2);
  EXPECT_EQ(done.at(via_peer), kNanosPerSecond / 2);
  // A device-to-device copy moves at NVLink's rate alone.
  FlowId d2d = links.start(kNanosPerSecond, 400e9, links.peerPath(1, 0, true), 0);
  EXPECT_DOUBLE_EQ(links.rateOf(d2d), 400e9);
}

TEST(LinkModel, PeerRouteWithoutNvlinkIsRefused) {
  ClusterSpec c = twoGpus(50);
  LinkModel links(c);
  EXPECT_THROW(links.peerPath(1, 0, false), std::invalid_argument);
}

// A transfer's completion does not depend on events elsewhere: the same odd-sized copy on GPU 0
// ends at the same nanosecond whether or not GPU 1's link is busy with many short transfers that
// start and end at unrelated times meanwhile.
TEST(LinkModel, ATransferIsNotMovedByEventsOnUnconnectedLinks) {
  ClusterSpec c = twoGpus(25);  // 25 bytes per nanosecond
  for (int trial = 0; trial < 40; ++trial) {
    // Sizes that drain exactly on a nanosecond, where rounding residue would show as a late one.
    const double bytes = 25.0 * (524'288'017 + 7'919'113 * trial);
    LinkModel alone(c);
    FlowId solo = alone.start(0, bytes, alone.hostPath(0), 0);
    const Nanos expected = drain(alone).at(solo);

    LinkModel links(c);
    FlowId a = links.start(0, bytes, links.hostPath(0), 0);
    std::map<FlowId, Nanos> done;
    Nanos now = 0;
    for (int i = 0; i < 200; ++i) {
      now += 1'234'567 + 7 * i + 131 * trial;  // unrelated times, some while others still move
      while (auto t = links.nextCompletion()) {
        if (*t > now) break;
        for (FlowId f : links.takeCompleted(*t)) done[f] = *t;
      }
      links.start(now, 1.0e7 + 12345.0 * i, links.hostPath(1), 3 * kNanosPerMicro);
    }
    for (auto& [f, t] : drain(links)) done[f] = t;
    EXPECT_LE(std::abs(expected - static_cast<Nanos>(bytes / 25)), 1);  // one rounding up at most
    EXPECT_EQ(done.at(a), expected) << "trial " << trial;
    EXPECT_EQ(done.size(), 201u);  // every transfer completed exactly once
  }
}

// Many concurrent transfers on one link complete in the order of their sizes, each at the time
// the fair shares give (hand-computed: with n equal shares the k-th smallest of sizes s_1..s_n
// ends when the work s_1 + ... + s_(k-1) + (n - k + 1) * s_k has crossed the link).
TEST(LinkModel, ManyConcurrentTransfersEndAtTheirFairShareTimes) {
  ClusterSpec c = twoGpus(10);  // 10 GB/s: 10 bytes per nanosecond
  LinkModel links(c);
  std::vector<FlowId> ids;
  const int n = 50;
  for (int k = 1; k <= n; ++k) ids.push_back(links.start(0, 1e9 * k, links.hostPath(0), 0));
  auto done = drain(links);
  ASSERT_EQ(done.size(), static_cast<std::size_t>(n));
  double work = 0;
  for (int k = 1; k <= n; ++k) {
    const double expected_ns = (work + (n - k + 1) * 1e9 * k) / 10.0;
    EXPECT_NEAR(static_cast<double>(done.at(ids[static_cast<std::size_t>(k - 1)])), expected_ns, 2.0) << k;
    work += 1e9 * k;
  }
}

}  // namespace
}  // namespace computron::sim
