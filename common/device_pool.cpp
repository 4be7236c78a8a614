#include "common/device_pool.h"

#include <stdexcept>
#include <string>

namespace computron {

DevicePool::DevicePool(std::int64_t capacity, std::int64_t granule) : granule_(granule) {
  if (granule <= 0) throw std::invalid_argument("device pool: granule must be positive");
  capacity_ = capacity / granule * granule;
  if (capacity_ > 0) holes_[0] = capacity_;
}

std::optional<Extent> DevicePool::allocate(std::int64_t bytes) {
  if (bytes <= 0) return std::nullopt;
  const std::int64_t need = rounded(bytes);
  auto best = holes_.end();
  for (auto it = holes_.begin(); it != holes_.end(); ++it) {
    if (it->second >= need && (best == holes_.end() || it->second < best->second)) best = it;
  }
  if (best == holes_.end()) return std::nullopt;
  const std::int64_t offset = best->first;
  const std::int64_t hole = best->second;
  holes_.erase(best);
  if (hole > need) holes_[offset + need] = hole - need;
  allocated_[offset] = need;
  used_ += need;
  return Extent{offset, bytes};
}

void DevicePool::addHole(std::int64_t offset, std::int64_t bytes) {
  auto next = holes_.lower_bound(offset);
  if (next != holes_.end() && next->first == offset + bytes) {
    bytes += next->second;
    next = holes_.erase(next);
  }
  if (next != holes_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += bytes;
      return;
    }
  }
  holes_[offset] = bytes;
}

void DevicePool::release(const Extent& extent) {
  auto it = allocated_.find(extent.offset);
  if (it == allocated_.end() || it->second != rounded(extent.bytes)) {
    throw std::logic_error("device pool: release of an extent it did not hand out (offset " +
                           std::to_string(extent.offset) + ")");
  }
  const std::int64_t size = it->second;
  allocated_.erase(it);
  used_ -= size;
  addHole(extent.offset, size);
}

std::int64_t DevicePool::largestHole() const {
  std::int64_t best = 0;
  for (const auto& [off, size] : holes_) best = std::max(best, size);
  return best;
}

std::optional<std::vector<DevicePool::Move>> DevicePool::planCompaction(
    std::int64_t bytes, const std::function<bool(std::int64_t)>& movable) const {
  const std::int64_t need = rounded(bytes);
  if (need > freeBytes()) return std::nullopt;
  std::vector<Move> moves;
  std::int64_t cursor = 0;
  std::int64_t best_hole = 0;
  for (const auto& [off, size] : allocated_) {
    if (movable(off)) {
      if (off > cursor) moves.push_back({off, cursor, size});
      cursor += size;
    } else {
      best_hole = std::max(best_hole, off - cursor);
      cursor = off + size;
    }
  }
  best_hole = std::max(best_hole, capacity_ - cursor);
  if (best_hole < need) return std::nullopt;
  return moves;
}

void DevicePool::apply(const Move& move) {
  auto it = allocated_.find(move.from);
  if (it == allocated_.end() || it->second != move.bytes || move.to > move.from) {
    throw std::logic_error("device pool: invalid move");
  }
  // The destination must be free apart from the extent's own old range.
  allocated_.erase(it);
  addHole(move.from, move.bytes);
  auto hole = holes_.upper_bound(move.to);
  if (hole == holes_.begin()) throw std::logic_error("device pool: move target not free");
  --hole;
  const std::int64_t hole_off = hole->first;
  const std::int64_t hole_size = hole->second;
  if (hole_off > move.to || hole_off + hole_size < move.to + move.bytes) {
    throw std::logic_error("device pool: move target not free");
  }
  holes_.erase(hole);
  if (move.to > hole_off) holes_[hole_off] = move.to - hole_off;
  if (hole_off + hole_size > move.to + move.bytes) {
    holes_[move.to + move.bytes] = hole_off + hole_size - (move.to + move.bytes);
  }
  allocated_[move.to] = move.bytes;
}

void DevicePool::checkInvariants() const {
  std::map<std::int64_t, std::int64_t> all(holes_);
  std::int64_t used = 0;
  for (const auto& [off, size] : allocated_) {
    if (!all.emplace(off, size).second) throw std::logic_error("device pool: hole and extent share an offset");
    used += size;
  }
  if (used != used_) throw std::logic_error("device pool: used bytes out of step");
  std::int64_t cursor = 0;
  for (const auto& [off, size] : all) {
    if (off != cursor || size <= 0) throw std::logic_error("device pool: ranges do not tile the region");
    cursor = off + size;
  }
  if (cursor != capacity_) throw std::logic_error("device pool: ranges do not cover the region");
  for (auto it = holes_.begin(); it != holes_.end(); ++it) {
    auto nx = std::next(it);
    if (nx != holes_.end() && it->first + it->second == nx->first) {
      throw std::logic_error("device pool: adjacent holes not merged");
    }
  }
}

std::int64_t weightPoolBytes(std::int64_t budget, int shards, std::int64_t granule) {
  return (budget + granule - 1) / granule * granule + static_cast<std::int64_t>(shards) * granule;
}

}  // namespace computron
