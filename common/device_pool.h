// Bookkeeping of one GPU's weight region (the runtime's; the simulator mirrors it to know where a
// reloaded shard lands, which decides whether its decode graphs survive): carved once at start (one cudaMalloc, or one host
// mapping on the host-memory device), then shards take contiguous extents from it, so the swap
// path never allocates device memory. Pure arithmetic on offsets: no CUDA, no threads.
//
// Fragmentation: extents are rounded to a granule (2 MiB) and placed best-fit (the smallest hole
// that fits, lowest address on ties), which keeps large holes intact. When no hole fits although
// enough bytes are free, planCompaction() slides idle extents towards offset 0 in address order;
// the backend performs those moves as device-local copies (HBM to HBM, a few milliseconds for
// tens of GB, against a reload over PCIe) before the load proceeds. See docs/runtime.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "common/types.h"

namespace computron {

struct Extent {
  std::int64_t offset = -1;
  std::int64_t bytes = 0;  // as asked; the pool reserves it rounded up to the granule
  bool valid() const { return offset >= 0; }
};

class DevicePool {
 public:
  static constexpr std::int64_t kDefaultGranule = 2 * kMiB;

  explicit DevicePool(std::int64_t capacity, std::int64_t granule = kDefaultGranule);

  // Best fit; nullopt when no single hole is large enough.
  std::optional<Extent> allocate(std::int64_t bytes);
  void release(const Extent& extent);  // throws std::logic_error for an extent it did not hand out

  std::int64_t capacity() const { return capacity_; }
  std::int64_t granule() const { return granule_; }
  std::int64_t used() const { return used_; }  // rounded bytes
  std::int64_t freeBytes() const { return capacity_ - used_; }
  std::int64_t largestHole() const;
  std::int64_t rounded(std::int64_t bytes) const { return (bytes + granule_ - 1) / granule_ * granule_; }
  int extents() const { return static_cast<int>(allocated_.size()); }

  // A move of one extent to a lower offset. The ranges may overlap: the copy must proceed from
  // low to high addresses in pieces no larger than (from - to).
  struct Move {
    std::int64_t from = 0;
    std::int64_t to = 0;
    std::int64_t bytes = 0;  // rounded extent size
  };
  // Moves that leave a hole of at least `bytes`, moving only extents whose offset `movable`
  // accepts, or nullopt when that is impossible now (too few free bytes, or pinned extents in the
  // way). Does not change the pool; apply() each move once the copy is done (or before issuing it
  // when the copies are ordered ahead of every later use).
  std::optional<std::vector<Move>> planCompaction(std::int64_t bytes,
                                                  const std::function<bool(std::int64_t offset)>& movable) const;
  void apply(const Move& move);

  // Consistency check for tests: holes and extents tile [0, capacity) without overlap.
  void checkInvariants() const;

 private:
  void addHole(std::int64_t offset, std::int64_t bytes);

  std::int64_t capacity_;
  std::int64_t granule_;
  std::int64_t used_ = 0;
  std::map<std::int64_t, std::int64_t> holes_;      // offset -> bytes
  std::map<std::int64_t, std::int64_t> allocated_;  // offset -> rounded bytes
};

// A GPU's weight region: its weight budget rounded up to the granule, plus one granule per shard
// placed on it, so rounding extents up never makes a load the engine accepted fail for lack of
// bytes.
std::int64_t weightPoolBytes(std::int64_t budget, int shards, std::int64_t granule);

namespace runtime {
using computron::DevicePool;
using computron::Extent;
}  // namespace runtime

}  // namespace computron
