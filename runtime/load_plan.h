// How one shard load is cut into copies. The shard is split at segment (layer) boundaries, at
// the host store's pin-piece boundaries and at the chunk size; the chunks are dealt to the
// route's paths in address order, each path taking the next chunk while it is furthest behind its
// share, so every path moves through the layers together and the route's byte split is exact.
// Each path reports progress after its last chunk in a segment; a layer is ready when every path
// has covered it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/core/backend.h"
#include "runtime/weights.h"

namespace computron::runtime {

struct PlanChunk {
  std::int64_t offset = 0;  // in the shard image (same offset in host region and device extent)
  std::int64_t bytes = 0;
  int segment = 0;
};

// After chunk `after_chunk` of its path, the path has moved every byte it owns in segments
// [0, covered_segment].
struct PlanNotify {
  int after_chunk = 0;
  int covered_segment = 0;
};

enum class PathKind {
  kDirect,      // host -> target over the target's own link
  kRelay,       // host -> `via` (staging) over via's link, then via -> target over NVLink
  kFromDevice,  // via's resident copy -> target over NVLink
};
std::string pathKindName(PathKind kind);

struct PathPlan {
  GpuId via = 0;
  PathKind kind = PathKind::kDirect;
  std::int64_t bytes = 0;
  std::vector<PlanChunk> chunks;
  std::vector<PlanNotify> notify;
  int initial_coverage = -1;  // segments covered before any chunk (those the path owns nothing in)
};

struct LoadPlan {
  std::vector<PathPlan> paths;
  int segments = 0;
  std::int64_t bytes = 0;
};

struct LoadPlanOptions {
  std::int64_t chunk_bytes = 64 * kMiB;
  std::int64_t split_every = 0;  // also cut at multiples of this (pin pieces); 0 = no extra cuts
};

// Throws std::invalid_argument when the route does not add up to the shard's bytes.
LoadPlan makeLoadPlan(const std::vector<Segment>& segments, GpuId target, const std::vector<RoutePart>& route,
                      const LoadPlanOptions& options);

}  // namespace computron::runtime
