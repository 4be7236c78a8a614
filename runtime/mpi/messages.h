// What travels between the engine's rank (0) and the ranks that own GPUs, as bytes (wire.h):
// device jobs one way, device events back, and the set-up exchange. No MPI here: the transport
// (transport.h) moves the bytes, so the encoding is tested without mpirun.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/completion_queue.h"
#include "runtime/device.h"
#include "runtime/execution.h"
#include "runtime/mpi/wire.h"
#include "runtime/token_channel.h"

namespace computron::runtime::rank {

enum class MsgType : std::uint8_t {
  kHello = 1,  // rank -> 0: its GPUs are up, the checksums of the host shards it holds
  kPathJob,    // 0 -> rank: a load path for one of its GPUs
  kVerifyJob,
  kExecJob,
  kRelocateJob,
  kEvent,      // rank -> 0: a device event
  kStop,       // 0 -> rank: finish queued work, stop the devices, say kStopped
  kStopped,
  kPing,       // 0 -> rank, answered by kPong: the clock offset between the two
  kPong,
  kAbort,      // 0 -> rank: set-up failed elsewhere; exit without serving (rank -> 0: it left)
  kExecPart,   // 0 -> rank: one GPU's part of a real batch or session step (runtime/execution.h)
  kGroupId,    // rank -> rank: the id of a collective group spanning ranks, from the rank of its first GPU
  kRankLost,   // 0 -> rank: another rank was lost (value: that rank); groups with its GPUs abort
  kTokens,     // rank -> 0: served requests' tokens, as its executors delivered them
  kCancel,     // 0 -> rank: a served request's client has gone (value: the request id)
};

MsgType peekType(const std::string& message);

struct HelloShard {
  ModelId model = 0;  // the host store's model (twins share one)
  int shard = 0;
  std::int64_t bytes = 0;
  std::uint64_t checksum = 0;
};

struct Hello {
  std::vector<GpuId> gpus;
  std::vector<std::string> describe;  // per GPU
  std::vector<HelloShard> shards;
  std::string host;   // host name, for people
  std::string clock;  // clockId(): ranks with the same one share one monotonic clock
  std::string error;  // set-up failed on the rank (the run stops with this message)
};

// Which monotonic clock this process reads: the host name and the kernel's boot id (two machines
// or containers may share a host name; one boot of one kernel has one CLOCK_MONOTONIC).
std::string clockId(const std::string& host);

std::string encodeHello(const Hello& hello);
Hello decodeHello(const std::string& message);

// Jobs name the GPU (global id) whose device runs them.
std::string encodeJob(GpuId device, const PathJob& job);
std::string encodeJob(GpuId device, const VerifyJob& job);
std::string encodeJob(GpuId device, const ExecJob& job);
std::string encodeJob(GpuId device, const RelocateJob& job);

struct DecodedJob {
  MsgType type = MsgType::kPathJob;
  GpuId device = 0;
  PathJob path;
  VerifyJob verify;
  ExecJob exec;
  RelocateJob relocate;
};
DecodedJob decodeJob(const std::string& message);

// A real batch's part for the rank's model execution: the pool offset travels, not the pointer.
std::string encodeExecPart(const ExecPart& part);
ExecPart decodeExecPart(const std::string& message);

std::string encodeEvent(const DeviceEvent& event);
DeviceEvent decodeEvent(const std::string& message);

// The id of a collective group (NCCL's unique id, opaque here) that spans ranks, named by a key
// every member derives alike from the scenario.
struct GroupId {
  std::string key;
  std::string id;
};
std::string encodeGroupId(const GroupId& group);
GroupId decodeGroupId(const std::string& message);

// Served tokens (runtime/token_channel.h), times on the sending rank's clock.
std::string encodeTokens(const std::vector<TokenDelivery>& tokens);
std::vector<TokenDelivery> decodeTokens(const std::string& message);

// A message of only its type (kStop, kStopped, kAbort), or a type and one value (kPing, kPong:
// a time; kRankLost: a rank; kCancel: a request id).
std::string encodeSignal(MsgType type, std::int64_t value = 0);
std::int64_t decodeSignal(const std::string& message, MsgType expected);

}  // namespace computron::runtime::rank
