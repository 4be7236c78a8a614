// The fused prefill attention's work list: every query row of every sequence is covered by
// exactly one tile, deepest tiles first, and the count stays within the workspace's bound.
#include "runtime/model/prefill_tiles.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <utility>
#include <vector>

namespace computron::model::kernels {
namespace {

struct Tile {
  int begin, len, slot, q0;
};

std::vector<Tile> build(const std::vector<int>& begin, const std::vector<int>& len, const std::vector<int>& slot) {
  int tokens = 0;
  for (int l : len) tokens += l;
  std::vector<int> raw(4 * static_cast<std::size_t>(prefillAttentionMaxTiles(tokens, static_cast<int>(len.size()))) + 4, -7);
  const int n = prefillAttentionTiles(begin.data(), len.data(), slot.data(), static_cast<int>(len.size()), raw.data());
  EXPECT_LE(n, prefillAttentionMaxTiles(tokens, static_cast<int>(len.size())));
  std::vector<Tile> out;
  for (int i = 0; i < n; ++i) out.push_back({raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]});
  EXPECT_EQ(raw[4 * static_cast<std::size_t>(n)], -7) << "wrote past its tiles";
  return out;
}

TEST(PrefillTiles, HandBuiltBatch) {
  // Lengths 1, 64 (one full tile), 65 (a full tile and a one-row tile) and 130.
  const auto tiles = build({0, 1, 65, 130}, {1, 64, 65, 130}, {3, 0, 2, 1});
  ASSERT_EQ(tiles.size(), 1u + 1 + 2 + 3);
  // Deepest first: the 130-token sequence's third tile (rows 128-129), then the second tiles,
  // in sequence order, then the first tiles in sequence order.
  const std::vector<std::pair<int, int>> order = {{130, 128}, {65, 64}, {130, 64}, {0, 0}, {1, 0}, {65, 0}, {130, 0}};
  for (std::size_t i = 0; i < tiles.size(); ++i) {
    EXPECT_EQ(tiles[i].begin, order[i].first) << i;
    EXPECT_EQ(tiles[i].q0, order[i].second) << i;
  }
  EXPECT_EQ(tiles[0].len, 130);
  EXPECT_EQ(tiles[0].slot, 1);
  EXPECT_EQ(tiles[3].slot, 3);
}

TEST(PrefillTiles, EmptyBatchAndEmptySequences) {
  EXPECT_TRUE(build({}, {}, {}).empty());
  const auto tiles = build({0, 0}, {0, 3}, {0, 1});
  ASSERT_EQ(tiles.size(), 1u);
  EXPECT_EQ(tiles[0].len, 3);
}

TEST(PrefillTiles, EveryRowCoveredOnceOverRandomBatches) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const int sequences = 1 + static_cast<int>(rng() % 40);
    std::vector<int> begin, len, slot;
    int tokens = 0;
    for (int s = 0; s < sequences; ++s) {
      begin.push_back(tokens);
      len.push_back(1 + static_cast<int>(rng() % 700));
      slot.push_back(sequences - 1 - s);
      tokens += len.back();
    }
    const auto tiles = build(begin, len, slot);
    std::map<int, int> covered;  // token index -> times covered
    int last_q0 = 1 << 30;
    for (const Tile& t : tiles) {
      EXPECT_LE(t.q0, last_q0) << "not deepest first";
      last_q0 = t.q0;
      EXPECT_EQ(t.q0 % kPrefillAttentionTile, 0);
      ASSERT_LT(t.q0, t.len);
      for (int r = t.q0; r < std::min(t.len, t.q0 + kPrefillAttentionTile); ++r) ++covered[t.begin + r];
    }
    ASSERT_EQ(static_cast<int>(covered.size()), tokens);
    for (const auto& [token, times] : covered) ASSERT_EQ(times, 1) << "token " << token;
  }
}

}  // namespace
}  // namespace computron::model::kernels
