#include "runtime/weights.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "common/splitmix.h"

namespace computron::runtime {
namespace {

// 16 random bits -> a finite value of magnitude [2^-8, 1) with random sign.
std::uint16_t halfFromBits(std::uint16_t r, DType dtype) {
  const std::uint16_t sign = r & 0x8000u;
  const std::uint16_t exp3 = (r >> 12) & 0x7u;
  if (dtype == DType::kBF16) {
    return static_cast<std::uint16_t>(sign | ((119u + exp3) << 7) | (r & 0x7Fu));
  }
  return static_cast<std::uint16_t>(sign | ((7u + exp3) << 10) | (r & 0x3FFu));
}

int resolveThreads(int threads) {
  if (threads > 0) return threads;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

// Runs fn(begin, end) over [0, n) split into `parts` pieces aligned to `align`.
template <typename Fn>
void parallelRanges(std::int64_t n, int threads, std::int64_t align, Fn fn) {
  threads = resolveThreads(threads);
  const std::int64_t min_piece = 64 * kMiB;
  const std::int64_t parts = std::max<std::int64_t>(1, std::min<std::int64_t>(threads, n / min_piece));
  if (parts == 1) {
    fn(0, n);
    return;
  }
  std::int64_t piece = (n + parts - 1) / parts;
  piece = (piece + align - 1) / align * align;
  std::vector<std::thread> pool;
  for (std::int64_t begin = 0; begin < n; begin += piece) {
    const std::int64_t end = std::min(n, begin + piece);
    pool.emplace_back([=, &fn] { fn(begin, end); });
  }
  for (auto& t : pool) t.join();
}

// Fills elements [e0, e1) of one segment (16-bit elements; `seg` may be unaligned).
void fillHalves(std::byte* seg, std::int64_t e0, std::int64_t e1, std::uint64_t seed, DType dtype) {
  std::int64_t e = e0;
  while (e < e1) {
    const std::uint64_t group = static_cast<std::uint64_t>(e) >> 2;
    const std::uint64_t h = splitmix64(seed ^ (group * 0xD6E8FEB86659FD93ULL));
    const std::int64_t group_end = std::min<std::int64_t>(e1, static_cast<std::int64_t>((group + 1) << 2));
    for (; e < group_end; ++e) {
      const auto r = static_cast<std::uint16_t>(h >> (16 * (e & 3)));
      const std::uint16_t v = halfFromBits(r, dtype);
      std::memcpy(seg + 2 * e, &v, 2);
    }
  }
}

}  // namespace

std::vector<Segment> shardSegments(const ShardLayout& layout) {
  std::vector<Segment> out;
  std::int64_t offset = 0;
  if (layout.prefix_bytes > 0) {
    out.push_back({offset, layout.prefix_bytes, -1});
    offset += layout.prefix_bytes;
  }
  for (int i = 0; i < layout.num_layers; ++i) {
    if (layout.layer_bytes <= 0) break;
    out.push_back({offset, layout.layer_bytes, layout.first_layer + i});
    offset += layout.layer_bytes;
  }
  if (layout.suffix_bytes > 0) {
    out.push_back({offset, layout.suffix_bytes, layout.first_layer + layout.num_layers});
    offset += layout.suffix_bytes;
  }
  // A layout whose parts do not add up to its bytes (or has no parts) keeps one trailing segment
  // so every byte belongs to some segment.
  if (offset < layout.bytes) out.push_back({offset, layout.bytes - offset, layout.first_layer + layout.num_layers});
  return out;
}

std::int64_t segmentBytes(const std::vector<Segment>& segments) {
  std::int64_t total = 0;
  for (const auto& s : segments) total += s.bytes;
  return total;
}

std::uint64_t checksumRange(const std::byte* data, std::int64_t bytes, std::uint64_t first_word) {
  std::uint64_t sum = 0;
  const std::int64_t words = bytes / 8;
  for (std::int64_t i = 0; i < words; ++i) {
    std::uint64_t w;
    std::memcpy(&w, data + i * 8, 8);
    sum += checksumMix(w, first_word + static_cast<std::uint64_t>(i));
  }
  const std::int64_t tail = bytes - words * 8;
  if (tail > 0) {
    std::uint64_t w = 0;
    std::memcpy(&w, data + words * 8, static_cast<std::size_t>(tail));
    sum += checksumMix(w, first_word + static_cast<std::uint64_t>(words));
  }
  return sum;
}

std::uint64_t checksumParallel(const std::byte* data, std::int64_t bytes, int threads) {
  // Each range starts at a multiple of 8, so its partial sum uses the range's first word index.
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  const int n = resolveThreads(threads);
  const std::int64_t parts = std::max<std::int64_t>(1, std::min<std::int64_t>(n, bytes / (64 * kMiB)));
  std::int64_t piece = (bytes + parts - 1) / parts;
  piece = std::max<std::int64_t>(8, (piece + 7) / 8 * 8);
  for (std::int64_t begin = 0; begin < bytes; begin += piece) ranges.emplace_back(begin, std::min(bytes, begin + piece));
  std::vector<std::uint64_t> sums(ranges.size(), 0);
  auto work = [&](std::size_t i) {
    sums[i] = checksumRange(data + ranges[i].first, ranges[i].second - ranges[i].first,
                            static_cast<std::uint64_t>(ranges[i].first / 8));
  };
  if (ranges.size() <= 1) {
    if (!ranges.empty()) work(0);
  } else {
    std::vector<std::thread> pool;
    for (std::size_t i = 0; i < ranges.size(); ++i) pool.emplace_back(work, i);
    for (auto& t : pool) t.join();
  }
  std::uint64_t total = 0;
  for (auto s : sums) total += s;
  return total;
}

std::uint64_t shardSeed(std::uint64_t model_seed, int shard) {
  return splitmix64(model_seed * 0x100000001B3ULL + static_cast<std::uint64_t>(shard) + 1);
}

std::uint64_t segmentSeed(std::uint64_t shard_seed, int segment_index) {
  return splitmix64(shard_seed ^ (static_cast<std::uint64_t>(segment_index + 1) * 0xA24BAED4963EE407ULL));
}

std::uint16_t generatedHalf(std::uint64_t segment_seed, std::int64_t element, DType dtype) {
  const std::uint64_t group = static_cast<std::uint64_t>(element) >> 2;
  const std::uint64_t h = splitmix64(segment_seed ^ (group * 0xD6E8FEB86659FD93ULL));
  return halfFromBits(static_cast<std::uint16_t>(h >> (16 * (element & 3))), dtype);
}

void generateShard(std::byte* dst, const std::vector<Segment>& segments, DType dtype, std::uint64_t seed,
                   int threads) {
  // fp32 weights reuse the 16-bit generator: each float is two generated halves, finite by
  // construction (the high half's exponent field is never all ones).
  for (std::size_t s = 0; s < segments.size(); ++s) {
    const Segment seg = segments[s];
    const std::uint64_t sseed = segmentSeed(seed, static_cast<int>(s));
    const DType bits = dtype == DType::kBF16 ? DType::kBF16 : DType::kF16;
    std::byte* halves = dst + seg.offset;
    const std::int64_t elements = seg.bytes / 2;
    parallelRanges(elements, threads, 4, [&](std::int64_t e0, std::int64_t e1) {
      fillHalves(halves, e0, e1, sseed, bits);
    });
    if (seg.bytes % 2 != 0) dst[seg.offset + seg.bytes - 1] = std::byte{0x3C};
  }
}

}  // namespace computron::runtime
