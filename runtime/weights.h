// Deterministic synthetic weights and the shard checksum that host and device both compute.
//
// Until checkpoints arrive (model-execution issue) every shard is filled by a generator: valid,
// finite fp16 or bf16 values in +-[2^-8, 1), laid out segment by segment (embeddings, decoder
// layer 0..n-1, final norm + head), each segment seeded by (model seed, shard, segment) so a
// layer's bytes do not depend on the rest of the shard. The checksum is position dependent (a
// chunk copied to the wrong offset changes it) and a wrapping sum, so it reduces in any order:
// the CUDA kernel and the host-memory device compute the same number as the host store.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/model_spec.h"
#include "runtime/checksum_mix.h"

namespace computron::runtime {

// Byte ranges of a shard's segments in order: [prefix][layer 0]...[layer n-1][suffix]. Empty
// prefix/suffix are omitted. Segment ends are where layer readiness is reported.
struct Segment {
  std::int64_t offset = 0;
  std::int64_t bytes = 0;
  int layer = -1;  // decoder layer index, -1 for the prefix (embeddings), num_layers for the suffix
};
std::vector<Segment> shardSegments(const ShardLayout& layout);
// Bytes the segments cover; equals layout.bytes for a consistent layout.
std::int64_t segmentBytes(const std::vector<Segment>& segments);

// Checksum of bytes [0, bytes) of one shard image; `first_word` lets a caller sum a slice that
// starts at a word boundary (partial sums add). The last partial word is zero-padded.
std::uint64_t checksumRange(const std::byte* data, std::int64_t bytes, std::uint64_t first_word = 0);
// Whole-image checksum with `threads` threads (0 = hardware concurrency).
std::uint64_t checksumParallel(const std::byte* data, std::int64_t bytes, int threads = 0);

// Fills `dst` (the shard image, `bytes` long, laid out as `segments`) with the generator's values.
// `seed` identifies model and shard. Runs on `threads` threads (0 = hardware concurrency).
void generateShard(std::byte* dst, const std::vector<Segment>& segments, DType dtype, std::uint64_t seed,
                   int threads = 0);
// The value bits of element `element` (16-bit elements) of a segment seeded with `segment_seed`.
std::uint16_t generatedHalf(std::uint64_t segment_seed, std::int64_t element, DType dtype);
std::uint64_t segmentSeed(std::uint64_t shard_seed, int segment_index);
std::uint64_t shardSeed(std::uint64_t model_seed, int shard);

}  // namespace computron::runtime
