// The Transport over MPI (Open MPI from the distribution): one progress thread per process makes
// every MPI call after MPI_Init (MPI_THREAD_SERIALIZED is enough), so device threads and the
// engine never block in MPI. Messages are MPI_BYTE on a private duplicate of MPI_COMM_WORLD;
// heartbeats go on their own tag every `heartbeat` (rank 0 to every rank, every rank to rank 0),
// and a peer not heard from for longer than `timeout` is lost. Launch with `mpirun --enable-recovery`
// so that the death of one rank does not end the others (Open MPI's default is to abort the job).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/types.h"
#include "runtime/mpi/transport.h"

namespace computron::runtime::rank {

struct MpiTransportOptions {
  Nanos heartbeat = 200 * kNanosPerMilli;
  Nanos timeout = 10 * kNanosPerSecond;
  // A peer never heard from yet (still parsing its scenario, or building its host store before
  // it starts its transport) is lost only after this long.
  Nanos first_contact_timeout = 60 * kNanosPerSecond;
};

class MpiTransport final : public Transport {
 public:
  // True when this process was started by mpirun (Open MPI's or a PMI launcher's environment).
  static bool launched();
  // MPI_Init_thread; throws std::runtime_error if MPI cannot give MPI_THREAD_SERIALIZED.
  explicit MpiTransport(MpiTransportOptions options = {});
  // Stops, then MPI_Finalize; after the loss of a rank, or with sends that never completed, it
  // skips MPI_Finalize (which waits for every other rank) and the process leaves without it.
  ~MpiTransport() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string hostName() const override { return host_; }
  void start(MessageHandler on_message, LostHandler on_lost) override;
  void send(int dest, std::string message) override;
  void stop() override;
  void retire(int rank) override;
  void leaveWithoutFinalize() override { unclean_ = true; }
  bool anyLost() const { return any_lost_; }

 private:
  struct Pending;
  void run();

  MpiTransportOptions options_;
  int rank_ = 0;
  int size_ = 1;
  std::string host_;
  void* comm_ = nullptr;  // MPI_Comm (kept out of the header: Open MPI's mpi.h stays in the .cpp)
  MessageHandler on_message_;
  LostHandler on_lost_;
  std::mutex mutex_;
  std::condition_variable wake_;  // a message to send cuts the progress thread's idle wait short
  std::deque<std::pair<int, std::string>> outbox_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> any_lost_{false};
  std::atomic<bool> unclean_{false};  // sends left unfinished at stop: no MPI_Finalize
  std::vector<std::atomic<bool>> retired_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace computron::runtime::rank
