#include "runtime/load_plan.h"

#include <algorithm>
#include <stdexcept>

namespace computron::runtime {

std::string pathKindName(PathKind kind) {
  switch (kind) {
    case PathKind::kDirect: return "direct";
    case PathKind::kRelay: return "relay";
    case PathKind::kFromDevice: return "from-device";
  }
  return "?";
}

LoadPlan makeLoadPlan(const std::vector<Segment>& segments, GpuId target, const std::vector<RoutePart>& route,
                      const LoadPlanOptions& options) {
  if (options.chunk_bytes <= 0) throw std::invalid_argument("load plan: chunk size must be positive");
  LoadPlan plan;
  plan.segments = static_cast<int>(segments.size());
  plan.bytes = segmentBytes(segments);

  std::vector<RoutePart> parts;
  for (const auto& p : route) {
    if (p.bytes < 0) throw std::invalid_argument("load plan: route part with negative bytes");
    if (p.bytes > 0) parts.push_back(p);
  }
  if (parts.empty()) parts.push_back(RoutePart{target, plan.bytes, false});
  std::int64_t routed = 0;
  for (const auto& p : parts) routed += p.bytes;
  if (routed != plan.bytes) {
    throw std::invalid_argument("load plan: route parts add up to " + std::to_string(routed) +
                                " bytes but the shard has " + std::to_string(plan.bytes));
  }
  for (const auto& p : parts) {
    PathPlan path;
    path.via = p.via;
    path.bytes = p.bytes;
    path.kind = p.from_device ? PathKind::kFromDevice : (p.via == target ? PathKind::kDirect : PathKind::kRelay);
    if (path.kind == PathKind::kFromDevice && p.via == target) {
      throw std::invalid_argument("load plan: a from-device part must come from another GPU");
    }
    plan.paths.push_back(path);
  }

  // Pieces: segment boundaries, split_every boundaries, then near-equal parts of at most chunk_bytes.
  struct Piece {
    std::int64_t offset, bytes;
    int segment;
  };
  std::vector<Piece> pieces;
  for (int s = 0; s < plan.segments; ++s) {
    const std::int64_t seg_end = segments[static_cast<std::size_t>(s)].offset + segments[static_cast<std::size_t>(s)].bytes;
    std::int64_t off = segments[static_cast<std::size_t>(s)].offset;
    while (off < seg_end) {
      std::int64_t span_end = seg_end;
      if (options.split_every > 0) span_end = std::min(span_end, (off / options.split_every + 1) * options.split_every);
      const std::int64_t span = span_end - off;
      const std::int64_t n = (span + options.chunk_bytes - 1) / options.chunk_bytes;
      std::int64_t each = (span + n - 1) / n;
      each = std::min(options.chunk_bytes, (each + 4095) / 4096 * 4096);
      for (std::int64_t o = off; o < span_end; o += each) pieces.push_back({o, std::min(each, span_end - o), s});
      off = span_end;
    }
  }

  // Deal pieces to paths: the path furthest behind its share takes the next bytes.
  std::vector<std::int64_t> assigned(plan.paths.size(), 0);
  for (const auto& pc : pieces) {
    std::int64_t off = pc.offset;
    std::int64_t left = pc.bytes;
    while (left > 0) {
      std::size_t pick = plan.paths.size();
      double best = 2.0;
      for (std::size_t p = 0; p < plan.paths.size(); ++p) {
        if (assigned[p] >= plan.paths[p].bytes) continue;
        const double progress = static_cast<double>(assigned[p]) / static_cast<double>(plan.paths[p].bytes);
        if (progress < best) {
          best = progress;
          pick = p;
        }
      }
      if (pick == plan.paths.size()) throw std::logic_error("load plan: bytes left with every path full");
      const std::int64_t take = std::min(left, plan.paths[pick].bytes - assigned[pick]);
      plan.paths[pick].chunks.push_back({off, take, pc.segment});
      assigned[pick] += take;
      off += take;
      left -= take;
    }
  }

  // Notify after a path's last chunk in each segment it owns bytes in.
  for (auto& path : plan.paths) {
    if (path.chunks.empty()) {
      path.initial_coverage = plan.segments - 1;
      continue;
    }
    path.initial_coverage = path.chunks.front().segment - 1;
    for (std::size_t j = 0; j < path.chunks.size(); ++j) {
      const bool last = j + 1 == path.chunks.size();
      if (last) {
        path.notify.push_back({static_cast<int>(j), plan.segments - 1});
      } else if (path.chunks[j + 1].segment != path.chunks[j].segment) {
        path.notify.push_back({static_cast<int>(j), path.chunks[j + 1].segment - 1});
      }
    }
  }
  return plan;
}

}  // namespace computron::runtime
