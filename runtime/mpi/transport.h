// How the ranks of a multi-process run reach each other: messages of bytes between ranks, and
// word when a rank is lost. MpiTransport (mpi_transport.h, Open MPI) is the real one; tests use
// an in-process one. The engine's side (rank_devices.h) and the GPU ranks' side (rank_worker.h)
// see only this.
#pragma once

#include <algorithm>
#include <functional>
#include <string>

namespace computron::runtime::rank {

class Transport {
 public:
  using MessageHandler = std::function<void(int source, std::string message)>;
  using LostHandler = std::function<void(int rank, const std::string& reason)>;

  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // This process's host name: ranks on one host share its monotonic clock.
  virtual std::string hostName() const = 0;
  // Starts delivering. Both handlers run on the transport's own thread, one call at a time;
  // `on_lost` once per rank that died or stopped answering, after which nothing more of that
  // rank is delivered.
  virtual void start(MessageHandler on_message, LostHandler on_lost) = 0;
  // Queues a message; callable from any thread, never waits for the peer. Messages between two
  // ranks arrive in the order sent. A message to a lost rank is dropped.
  virtual void send(int dest, std::string message) = 0;
  // Sends what is queued (a bounded wait), then stops delivering; idempotent. No handler runs
  // after it returns.
  virtual void stop() = 0;
  // Rank r finished (it said so): its silence from now on is not a loss.
  virtual void retire(int /*rank*/) {}
  // Some rank of the run died: leave without the closing handshake that would wait for it.
  virtual void leaveWithoutFinalize() {}
};

// Which rank owns which GPU: the GPU ranks, from `first_gpu_rank` on, own `gpus_per_rank` each
// in order: rank first + i owns GPUs [i * gpus_per_rank, (i + 1) * gpus_per_rank) of the
// scenario's cluster. first_gpu_rank 1: rank 0 runs the engine alone (a host without GPUs).
struct RankLayout {
  int ranks = 1;
  int gpus_per_rank = 1;
  int total_gpus = 1;
  int first_gpu_rank = 0;
  int owner(int gpu) const { return first_gpu_rank + gpu / gpus_per_rank; }
  // The first GPU of rank r and one past its last (empty for an engine-only rank 0).
  int firstGpu(int r) const { return r < first_gpu_rank ? 0 : std::min(total_gpus, (r - first_gpu_rank) * gpus_per_rank); }
  int endGpu(int r) const { return r < first_gpu_rank ? 0 : std::min(total_gpus, (r - first_gpu_rank + 1) * gpus_per_rank); }
};

}  // namespace computron::runtime::rank
