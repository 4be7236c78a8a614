// Unit tests of the runtime's pure pieces: generator and checksum, device pool, load planner,
// host weight store. No devices, no threads beyond the store's own.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <set>

#include "common/device_pool.h"
#include "runtime/host_weight_store.h"
#include "runtime/load_plan.h"
#include "runtime/weights.h"

namespace computron::runtime {
namespace {

ShardLayout smallLayout(std::int64_t prefix, std::int64_t layer, int layers, std::int64_t suffix) {
  ShardLayout l;
  l.num_layers = layers;
  l.prefix_bytes = prefix;
  l.layer_bytes = layer;
  l.suffix_bytes = suffix;
  l.bytes = prefix + layer * layers + suffix;
  return l;
}

float halfToFloat(std::uint16_t h) {
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  const float v = std::ldexp(1.0f + static_cast<float>(mant) / 1024.0f, exp - 15);
  return (h & 0x8000) ? -v : v;
}

TEST(Weights, SegmentsTileTheShard) {
  const ShardLayout l = smallLayout(1000, 400, 3, 600);
  const auto segs = shardSegments(l);
  ASSERT_EQ(segs.size(), 5u);
  EXPECT_EQ(segs[0].layer, -1);
  EXPECT_EQ(segs[1].layer, 0);
  EXPECT_EQ(segs[3].layer, 2);
  EXPECT_EQ(segs[4].layer, 3);
  std::int64_t off = 0;
  for (const auto& s : segs) {
    EXPECT_EQ(s.offset, off);
    off += s.bytes;
  }
  EXPECT_EQ(off, l.bytes);
  EXPECT_EQ(segmentBytes(segs), l.bytes);
}

TEST(Weights, GeneratorIsDeterministicFiniteAndLayerLocal) {
  const ShardLayout l = smallLayout(4096, 8192, 4, 2048);
  const auto segs = shardSegments(l);
  std::vector<std::byte> a(static_cast<std::size_t>(l.bytes)), b(a.size());
  generateShard(a.data(), segs, DType::kF16, 42, 3);
  generateShard(b.data(), segs, DType::kF16, 42, 1);
  EXPECT_EQ(a, b);
  for (std::size_t i = 0; i < a.size(); i += 2) {
    std::uint16_t h;
    std::memcpy(&h, a.data() + i, 2);
    const float v = std::fabs(halfToFloat(h));
    ASSERT_TRUE(std::isfinite(v));
    ASSERT_GE(v, 1.0f / 256.0f);
    ASSERT_LT(v, 1.0f);
  }
  // Element values match the per-element definition (segment 2, element 17).
  std::uint16_t h;
  std::memcpy(&h, a.data() + segs[2].offset + 34, 2);
  EXPECT_EQ(h, generatedHalf(segmentSeed(42, 2), 17, DType::kF16));
  // Another seed gives other bytes.
  generateShard(b.data(), segs, DType::kF16, 43, 1);
  EXPECT_NE(a, b);
}

TEST(Weights, Bf16ValuesAreFinite) {
  const ShardLayout l = smallLayout(0, 4096, 2, 0);
  std::vector<std::byte> a(static_cast<std::size_t>(l.bytes));
  generateShard(a.data(), shardSegments(l), DType::kBF16, 7, 2);
  for (std::size_t i = 0; i < a.size(); i += 2) {
    std::uint16_t h;
    std::memcpy(&h, a.data() + i, 2);
    const int exp = (h >> 7) & 0xFF;
    ASSERT_GE(exp, 119);
    ASSERT_LE(exp, 126);
  }
}

TEST(Weights, ChecksumIsPositionalAndSplits) {
  std::vector<std::byte> data(1 << 16);
  std::mt19937_64 rng(5);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  const auto n = static_cast<std::int64_t>(data.size());
  const std::uint64_t whole = checksumRange(data.data(), n);
  EXPECT_EQ(whole, checksumParallel(data.data(), n, 4));
  // Partial sums over word-aligned slices add up.
  EXPECT_EQ(whole, checksumRange(data.data(), 8192) + checksumRange(data.data() + 8192, n - 8192, 1024));
  // Swapping two words changes it; so does a single flipped bit; a zero-padded tail counts.
  auto swapped = data;
  std::swap_ranges(swapped.begin(), swapped.begin() + 8, swapped.begin() + 8);
  EXPECT_NE(whole, checksumRange(swapped.data(), n));
  auto flipped = data;
  flipped[999] ^= std::byte{1};
  EXPECT_NE(whole, checksumRange(flipped.data(), n));
  EXPECT_NE(checksumRange(data.data(), 13), checksumRange(data.data(), 12));
}

TEST(DevicePool, BestFitReleaseAndCoalesce) {
  DevicePool pool(100 * kMiB, 2 * kMiB);
  auto a = pool.allocate(10 * kMiB);
  auto b = pool.allocate(3 * kMiB);  // rounded to 4 MiB
  auto c = pool.allocate(20 * kMiB);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(pool.used(), 34 * kMiB);
  pool.release(*a);  // hole of 10 at 0
  pool.checkInvariants();
  auto d = pool.allocate(8 * kMiB);  // best fit: the 10 MiB hole, not the 66 MiB tail
  ASSERT_TRUE(d);
  EXPECT_EQ(d->offset, 0);
  pool.release(*b);
  pool.release(*d);
  pool.release(*c);
  pool.checkInvariants();
  EXPECT_EQ(pool.used(), 0);
  EXPECT_EQ(pool.largestHole(), 100 * kMiB);
  EXPECT_THROW(pool.release(*c), std::logic_error);
  EXPECT_FALSE(pool.allocate(101 * kMiB));
}

TEST(DevicePool, CompactionMakesRoomAroundPinnedExtents) {
  DevicePool pool(40 * kMiB, 2 * kMiB);
  std::vector<Extent> e;
  for (int i = 0; i < 10; ++i) e.push_back(*pool.allocate(4 * kMiB));
  pool.release(e[1]);
  pool.release(e[3]);
  pool.release(e[6]);
  pool.release(e[8]);
  pool.checkInvariants();
  EXPECT_EQ(pool.freeBytes(), 16 * kMiB);
  EXPECT_FALSE(pool.allocate(12 * kMiB));
  // Everything movable: one 16 MiB hole at the end.
  auto all = pool.planCompaction(12 * kMiB, [](std::int64_t) { return true; });
  ASSERT_TRUE(all);
  // e[5] pinned: holes 1 and 3 merge before it (8 MiB), 6 and 8 after it (8 MiB): 12 impossible.
  auto blocked = pool.planCompaction(12 * kMiB, [&](std::int64_t off) { return off != e[5].offset; });
  EXPECT_FALSE(blocked);
  auto eight = pool.planCompaction(8 * kMiB, [&](std::int64_t off) { return off != e[5].offset; });
  ASSERT_TRUE(eight);
  for (const auto& m : *all) {
    EXPECT_LT(m.to, m.from);
    pool.apply(m);
    pool.checkInvariants();
  }
  auto big = pool.allocate(16 * kMiB);
  ASSERT_TRUE(big);
  EXPECT_EQ(big->offset, 24 * kMiB);
}

TEST(DevicePool, RandomChurnKeepsInvariants) {
  DevicePool pool(256 * kMiB, kMiB);
  std::mt19937 rng(11);
  std::vector<Extent> live;
  for (int step = 0; step < 2000; ++step) {
    if (!live.empty() && (rng() % 2 == 0)) {
      const std::size_t i = rng() % live.size();
      pool.release(live[i]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      const std::int64_t bytes = static_cast<std::int64_t>(1 + rng() % (24 * kMiB));
      if (auto x = pool.allocate(bytes)) {
        live.push_back(*x);
      } else if (pool.rounded(bytes) <= pool.freeBytes()) {
        auto moves = pool.planCompaction(bytes, [](std::int64_t) { return true; });
        ASSERT_TRUE(moves);
        for (const auto& m : *moves) {
          for (auto& l : live) {
            if (l.offset == m.from) l.offset = m.to;
          }
          pool.apply(m);
        }
        auto y = pool.allocate(bytes);
        ASSERT_TRUE(y);
        live.push_back(*y);
      }
    }
    pool.checkInvariants();
  }
}

std::vector<Segment> planSegments() { return shardSegments(smallLayout(300'000, 1'000'000, 5, 200'000)); }

TEST(LoadPlan, DirectPathCoversEverySegmentInOrder) {
  const auto segs = planSegments();
  LoadPlan plan = makeLoadPlan(segs, 0, {}, {256 * 1024, 512 * 1024});
  ASSERT_EQ(plan.paths.size(), 1u);
  const PathPlan& p = plan.paths[0];
  EXPECT_EQ(p.kind, PathKind::kDirect);
  std::int64_t off = 0;
  for (const auto& c : p.chunks) {
    EXPECT_EQ(c.offset, off);
    EXPECT_LE(c.bytes, 256 * 1024);
    // Never crosses a segment or a 512 KiB pin piece.
    const auto& s = segs[static_cast<std::size_t>(c.segment)];
    EXPECT_GE(c.offset, s.offset);
    EXPECT_LE(c.offset + c.bytes, s.offset + s.bytes);
    EXPECT_EQ(c.offset / (512 * 1024), (c.offset + c.bytes - 1) / (512 * 1024));
    off += c.bytes;
  }
  EXPECT_EQ(off, plan.bytes);
  ASSERT_EQ(p.notify.size(), segs.size());
  for (std::size_t i = 0; i < segs.size(); ++i) EXPECT_EQ(p.notify[i].covered_segment, static_cast<int>(i));
}

TEST(LoadPlan, TwoPathsSplitExactlyAndAdvanceTogether) {
  const auto segs = planSegments();
  const std::int64_t total = segmentBytes(segs);
  const std::int64_t direct = total * 11 / 20;
  LoadPlan plan = makeLoadPlan(segs, 1, {{1, direct, false}, {0, total - direct, false}}, {128 * 1024, 0});
  ASSERT_EQ(plan.paths.size(), 2u);
  EXPECT_EQ(plan.paths[1].kind, PathKind::kRelay);
  std::vector<std::pair<std::int64_t, std::int64_t>> all;
  for (std::size_t p = 0; p < 2; ++p) {
    std::int64_t sum = 0;
    for (const auto& c : plan.paths[p].chunks) {
      sum += c.bytes;
      all.emplace_back(c.offset, c.bytes);
      EXPECT_LE(c.bytes, 128 * 1024);
    }
    EXPECT_EQ(sum, plan.paths[p].bytes);
    // Progress notifications are increasing and end at the last segment.
    int last = plan.paths[p].initial_coverage;
    for (const auto& n : plan.paths[p].notify) {
      EXPECT_GT(n.covered_segment, last);
      last = n.covered_segment;
    }
    EXPECT_EQ(last, plan.segments - 1);
  }
  std::sort(all.begin(), all.end());
  std::int64_t off = 0;
  for (const auto& [o, b] : all) {
    EXPECT_EQ(o, off);
    off += b;
  }
  EXPECT_EQ(off, total);
  // Both paths work on the same layers: each one's share of every layer is near its share.
  for (std::size_t s = 1; s + 1 < segs.size(); ++s) {
    std::int64_t d = 0;
    for (const auto& c : plan.paths[0].chunks) d += c.segment == static_cast<int>(s) ? c.bytes : 0;
    EXPECT_NEAR(static_cast<double>(d) / static_cast<double>(segs[s].bytes), 0.55, 0.15);
  }
}

TEST(LoadPlan, RejectsRoutesThatDoNotAddUp) {
  const auto segs = planSegments();
  EXPECT_THROW(makeLoadPlan(segs, 0, {{0, 10, false}}, {}), std::invalid_argument);
  EXPECT_THROW(makeLoadPlan(segs, 0, {{0, segmentBytes(segs), true}}, {}), std::invalid_argument);
  LoadPlan p = makeLoadPlan(segs, 0, {{1, segmentBytes(segs), true}}, {});
  EXPECT_EQ(p.paths[0].kind, PathKind::kFromDevice);
}

class CountingPinner : public HostMemoryPinner {
 public:
  void pin(void* p, std::size_t n) override {
    std::lock_guard<std::mutex> lock(mu);
    pinned.insert({p, n});
  }
  void unpin(void* p, std::size_t n) override {
    std::lock_guard<std::mutex> lock(mu);
    unpinned.insert({p, n});
  }
  std::mutex mu;
  std::set<std::pair<void*, std::size_t>> pinned, unpinned;
};

TEST(HostWeightStore, FillsPinsInPiecesAndChecksums) {
  CountingPinner pinner;
  std::vector<ShardRequest> reqs;
  for (int s = 0; s < 3; ++s) reqs.push_back({0, s, smallLayout(70'000, 100'002, 3, 30'000), DType::kF16, 9});
  reqs.push_back({1, 0, smallLayout(70'000, 100'002, 3, 30'000), DType::kBF16, 10});
  HostStoreOptions opts;
  opts.threads = 3;
  opts.pin_piece_bytes = 64 * 1024;
  opts.pinner = &pinner;
  {
    HostWeightStore store(reqs, opts);
    EXPECT_EQ(store.stats().shards, 4);
    std::set<std::uint64_t> sums;
    for (const HostShard* s : store.shards()) {
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(s->data) % 4096, 0u);
      EXPECT_EQ(s->checksum, checksumRange(s->data, s->bytes));
      sums.insert(s->checksum);
    }
    EXPECT_EQ(sums.size(), 4u);  // every shard's bytes differ
    // 400'006-byte shards in 64 KiB pieces: 7 pieces each.
    EXPECT_EQ(pinner.pinned.size(), 28u);
    EXPECT_THROW(store.at(2, 0), std::out_of_range);
  }
  EXPECT_EQ(pinner.unpinned, pinner.pinned);
}

TEST(HostWeightStore, RefusesModelsThatDoNotFit) {
  std::vector<ShardRequest> reqs{{0, 0, smallLayout(0, 600 * kMiB, 4, 0), DType::kF16, 1}};
  HostStoreOptions opts;
  opts.host_memory_limit = kGiB;
  try {
    HostWeightStore store(reqs, opts);
    FAIL() << "expected a refusal";
  } catch (const HostMemoryError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("need 2.34 GiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--host-memory-gib"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace computron::runtime
