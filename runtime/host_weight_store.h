// The host weight store: every shard of every registered model in its own contiguous,
// page-aligned host region, filled by the deterministic generator (or the model executor's
// filler) and pinned (page-locked) so
// the copy engines read it at the link's full rate. The host copy is authoritative: eviction
// never copies anything back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/model_spec.h"
#include "common/types.h"
#include "runtime/weights.h"

namespace computron::runtime {

// Pins and unpins host memory (cudaHostRegister on the CUDA device; nothing on the host device).
// Must be callable from several threads at once.
class HostMemoryPinner {
 public:
  virtual ~HostMemoryPinner() = default;
  virtual void pin(void* ptr, std::size_t bytes) = 0;
  virtual void unpin(void* ptr, std::size_t bytes) = 0;
};

// The models do not fit in host memory; what() says how much is needed and available.
class HostMemoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ShardRequest {
  ModelId model = 0;
  int shard = 0;
  ShardLayout layout;
  DType dtype = DType::kF16;
  std::uint64_t model_seed = 1;
  // False: another process holds the shard's bytes (runtime/mpi/); this store keeps its layout
  // and, once setRemoteChecksum gives it, its checksum, but no memory (data stays null).
  bool held = true;
};

struct HostShard {
  ModelId model = 0;
  int shard = 0;
  ShardLayout layout;
  std::vector<Segment> segments;
  DType dtype = DType::kF16;
  std::byte* data = nullptr;       // page aligned
  std::int64_t bytes = 0;          // shard image bytes
  std::int64_t mapped_bytes = 0;   // rounded up to pages
  std::uint64_t checksum = 0;      // checksumRange over the image
  bool held = true;                // false: metadata only, the bytes are in another process
};

struct HostStoreOptions {
  int threads = 0;                           // fill, pin and checksum threads; 0 = all cores
  std::int64_t pin_piece_bytes = kGiB;       // pinned in pieces of this size, in parallel
  std::int64_t host_memory_limit = 0;        // bytes; 0 = detect (cgroup limit, else MemTotal)
  double reserve_fraction = 0.10;            // of the limit, kept for everything else
  HostMemoryPinner* pinner = nullptr;        // nullptr: not pinned (host-memory device)
  // Writes a shard's image instead of the deterministic generator (real model execution: the
  // executor's layout, from a checkpoint or random weights). Called once per shard, in order.
  std::function<void(const ShardRequest&, std::span<std::byte>)> fill;
};

struct HostStoreStats {
  std::int64_t shards = 0;
  std::int64_t bytes = 0;
  double fill_seconds = 0;
  double pin_seconds = 0;      // wall time of the parallel pin+checksum pass
  double pin_cpu_seconds = 0;  // sum over threads of time inside pin()
  int threads = 0;
};

class HostWeightStore {
 public:
  // Allocates, fills, pins and checksums every shard; throws HostMemoryError first if the shards
  // do not fit in host memory.
  HostWeightStore(const std::vector<ShardRequest>& shards, HostStoreOptions options);
  ~HostWeightStore();
  HostWeightStore(const HostWeightStore&) = delete;
  HostWeightStore& operator=(const HostWeightStore&) = delete;

  const HostShard* find(ModelId model, int shard) const;
  const HostShard& at(ModelId model, int shard) const;  // throws std::out_of_range
  std::vector<const HostShard*> shards() const;
  // The checksum of a shard another process holds (throws std::logic_error for a held one).
  void setRemoteChecksum(ModelId model, int shard, std::uint64_t checksum);
  // Copies never cross a multiple of this offset inside a shard: each piece is pinned by its own
  // cudaHostRegister call, and one copy must come from one registration.
  std::int64_t pinPieceBytes() const { return options_.pin_piece_bytes; }
  bool pinned() const { return options_.pinner != nullptr; }
  const HostStoreStats& stats() const { return stats_; }

  // Usable host memory in bytes as the store sees it (limit before the reserve) and where the
  // figure came from ("cgroup", "MemTotal", "option").
  static std::pair<std::int64_t, std::string> hostMemoryLimit(std::int64_t option);

 private:
  void release();

  HostStoreOptions options_;
  std::map<std::pair<ModelId, int>, HostShard> shards_;
  std::vector<std::pair<std::byte*, std::int64_t>> pinned_pieces_;
  HostStoreStats stats_;
};

}  // namespace computron::runtime
