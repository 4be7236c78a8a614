// The worker interface: one Device per GPU, each with its own thread(s), driven by RealBackend.
// Two implementations: CudaDevice (runtime/cuda/, copy engines and kernels) and HostDevice
// (memcpy on threads, for CI and tests). The backend cannot tell them apart: both take the same
// jobs and report through the same CompletionQueue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/core/backend.h"
#include "runtime/completion_queue.h"
#include "common/device_pool.h"
#include "runtime/host_weight_store.h"
#include "runtime/load_plan.h"

namespace computron::runtime {

// One path of a load, submitted to the device whose link moves the bytes: the target for a
// direct path, `via` for relay and from-device paths.
struct PathJob {
  OpId op = 0;
  int path = 0;
  ModelId model = 0;
  int shard = 0;
  GpuId target = 0;
  PathKind kind = PathKind::kDirect;
  std::int64_t dst_offset = 0;     // extent start in the target's pool
  std::int64_t src_offset = 0;     // extent start in this device's pool (from-device)
  const std::byte* host = nullptr; // shard image in the host store (direct, relay)
  // The host store's model whose shard `host` points into (twins share one): a rank that owns
  // the mover resolves `host` in its own store from it (runtime/mpi/).
  ModelId host_model = 0;
  std::vector<PlanChunk> chunks;
  std::vector<PlanNotify> notify;
  // A device may issue a path's copies in windows: the rest of the path comes back as a job
  // that starts at this chunk (0: the path's first job).
  std::size_t first_chunk = 0;
};

// Checksum of [offset, offset + bytes) of this device's pool, reported as kVerifyDone.
struct VerifyJob {
  OpId op = 0;
  std::int64_t offset = 0;
  std::int64_t bytes = 0;
};

// One GPU's part of a placeholder batch (the host-memory device, or `--execution placeholder`;
// real execution goes through runtime/execution.h instead): consecutive runs of a fixed-cost
// kernel, phase i lasting phase_ns[i], reporting the end time of each phase.
struct ExecJob {
  BatchId batch = 0;
  ModelId model = 0;
  int part = 0;
  std::vector<Extent> weights;  // what a real kernel would read
  std::vector<Nanos> phase_ns;
};

// Compaction moves, in order; reported as kRelocateDone with `op` = token.
struct RelocateJob {
  OpId token = 0;
  std::vector<DevicePool::Move> moves;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual GpuId id() const = 0;
  virtual std::string describe() const = 0;
  // Every device, indexed by GpuId (relay and from-device paths write into a peer's pool).
  virtual void connect(const std::vector<Device*>& devices) = 0;
  virtual void submit(PathJob job) = 0;
  virtual void submit(VerifyJob job) = 0;
  virtual void submit(ExecJob job) = 0;
  virtual void submit(RelocateJob job) = 0;
  // Finishes queued work and joins the device's threads. Idempotent.
  virtual void stop() = 0;
  // Base address of the pool (device pointer on CUDA); for peers' copies. Null for a device of
  // another process (runtime/mpi/rank_devices.h).
  virtual std::byte* poolBase() = 0;
  // The process whose memory the device's pool is in (its MPI rank; 0 in a one-process run).
  // Relay and from-device paths join devices of one process only.
  virtual int process() const { return 0; }
};

// Creates the devices of one kind. The backend asks for each GPU's pool size once, at start.
class DeviceFactory {
 public:
  virtual ~DeviceFactory() = default;
  virtual std::string name() const = 0;  // "cuda" or "host"
  virtual int deviceCount() const = 0;
  // Pins the host store (nullptr: not pinned).
  virtual HostMemoryPinner* pinner() = 0;
  virtual std::unique_ptr<Device> create(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes,
                                         CompletionQueue& queue, const Clock& clock) = 0;
  // Several processes (runtime/mpi/): whether this process holds GPU g's host shards (the rank
  // that owns g does), and, once this process's store is built, the checksums of the shards
  // other ranks hold, keyed by (store model, shard). One process: every GPU, nothing.
  virtual bool holdsShardsOf(GpuId /*gpu*/) const { return true; }
  virtual std::map<std::pair<ModelId, int>, std::uint64_t> remoteChecksums() { return {}; }
};

}  // namespace computron::runtime
