#include "runtime/mpi/mpi_transport.h"

// The C API only: no C++ bindings (libmpi_cxx) to link or find at run time.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <list>
#include <stdexcept>

namespace computron::runtime::rank {
namespace {

constexpr int kTagData = 1;
constexpr int kTagHeartbeat = 2;

Nanos steadyNow() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

MPI_Comm& commOf(void* p) { return *static_cast<MPI_Comm*>(p); }

}  // namespace

struct MpiTransport::Pending {
  std::string buffer;
  MPI_Request request = MPI_REQUEST_NULL;
  int dest = 0;
};

bool MpiTransport::launched() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr ||
         std::getenv("PMI_SIZE") != nullptr;
}

MpiTransport::MpiTransport(MpiTransportOptions options) : options_(options) {
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
    throw std::runtime_error("MPI_Init_thread failed");
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    throw std::runtime_error("MPI gives no MPI_THREAD_SERIALIZED support");
  }
  comm_ = new MPI_Comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &commOf(comm_));
  MPI_Comm_set_errhandler(commOf(comm_), MPI_ERRORS_RETURN);
  MPI_Comm_rank(commOf(comm_), &rank_);
  MPI_Comm_size(commOf(comm_), &size_);
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) == 0) host_ = name;
  retired_ = std::vector<std::atomic<bool>>(static_cast<std::size_t>(size_));
}

void MpiTransport::retire(int rank) {
  if (rank >= 0 && rank < size_) retired_[static_cast<std::size_t>(rank)] = true;
}

MpiTransport::~MpiTransport() {
  stop();
  if (!any_lost_ && !unclean_) {
    MPI_Comm_free(&commOf(comm_));
    MPI_Finalize();
  }
  delete static_cast<MPI_Comm*>(comm_);
}

void MpiTransport::start(MessageHandler on_message, LostHandler on_lost) {
  if (started_) throw std::logic_error("MpiTransport: started twice");
  started_ = true;
  on_message_ = std::move(on_message);
  on_lost_ = std::move(on_lost);
  thread_ = std::thread([this] { run(); });
}

void MpiTransport::send(int dest, std::string message) {
  if (dest < 0 || dest >= size_ || dest == rank_) throw std::logic_error("MpiTransport: bad destination");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    outbox_.emplace_back(dest, std::move(message));
  }
  wake_.notify_one();
}

void MpiTransport::stop() {
  if (stopped_) return;
  stopped_ = true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void MpiTransport::run() {
  MPI_Comm comm = commOf(comm_);
  std::list<Pending> pending;
  std::vector<Nanos> last_heard(static_cast<std::size_t>(size_), steadyNow());
  std::vector<bool> lost(static_cast<std::size_t>(size_), false);
  std::vector<bool> heard(static_cast<std::size_t>(size_), false);
  std::list<Pending> abandoned;  // sends to a lost rank: never complete, never freed
  Nanos last_beat = 0;
  static const char beat = 0;
  // Rank 0 watches every rank; the others watch rank 0.
  auto watched = [&](int r) { return r != rank_ && (rank_ == 0 || r == 0); };
  Nanos stop_deadline = 0;
  for (;;) {
    bool busy = false;
    std::deque<std::pair<int, std::string>> out;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      out.swap(outbox_);
    }
    for (auto& [dest, message] : out) {
      if (lost[static_cast<std::size_t>(dest)]) continue;
      pending.push_back(Pending{std::move(message), MPI_REQUEST_NULL, dest});
      Pending& p = pending.back();
      if (MPI_Isend(p.buffer.data(), static_cast<int>(p.buffer.size()), MPI_BYTE, dest, kTagData, comm, &p.request) !=
          MPI_SUCCESS)
        pending.pop_back();
      busy = true;
    }
    for (;;) {
      int flag = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &flag, &status) != MPI_SUCCESS || !flag) break;
      int bytes = 0;
      MPI_Get_count(&status, MPI_BYTE, &bytes);
      std::string buffer(static_cast<std::size_t>(std::max(bytes, 0)), '\0');
      if (MPI_Recv(buffer.data(), bytes, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, comm, MPI_STATUS_IGNORE) !=
          MPI_SUCCESS)
        break;
      busy = true;
      const auto src = static_cast<std::size_t>(status.MPI_SOURCE);
      last_heard[src] = steadyNow();
      heard[src] = true;
      if (lost[src] || status.MPI_TAG != kTagData) continue;
      on_message_(status.MPI_SOURCE, std::move(buffer));
    }
    for (auto it = pending.begin(); it != pending.end();) {
      int done = 0;
      if (MPI_Test(&it->request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done) {
        it = pending.erase(it);
      } else {
        ++it;
      }
    }
    const Nanos now = steadyNow();
    if (now - last_beat >= options_.heartbeat) {
      last_beat = now;
      for (int r = 0; r < size_; ++r) {
        if (!watched(r) || lost[static_cast<std::size_t>(r)]) continue;
        MPI_Request req;
        if (MPI_Isend(&beat, 1, MPI_BYTE, r, kTagHeartbeat, comm, &req) == MPI_SUCCESS) MPI_Request_free(&req);
      }
      for (int r = 0; r < size_; ++r) {
        const auto i = static_cast<std::size_t>(r);
        const Nanos limit = heard[i] ? options_.timeout : options_.first_contact_timeout;
        if (!watched(r) || lost[i] || retired_[i] || now - last_heard[i] <= limit) continue;
        lost[i] = true;
        any_lost_ = true;
        // Sends still pending to it may never complete: set aside, buffers kept.
        for (auto it = pending.begin(); it != pending.end();) {
          auto next = std::next(it);
          if (it->dest == r) abandoned.splice(abandoned.end(), pending, it);
          it = next;
        }
        on_lost_(r, (heard[i] ? "no message or heartbeat for " : "never heard from it in ") +
                        std::to_string((now - last_heard[i]) / kNanosPerMilli) + " ms (timeout " +
                        std::to_string(limit / kNanosPerMilli) + " ms)");
      }
    }
    if (stop_) {
      // Drain what is queued; give sends up to 5 s to complete.
      if (stop_deadline == 0) stop_deadline = now + 5 * kNanosPerSecond;
      bool outbox_empty;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        outbox_empty = outbox_.empty();
      }
      if ((outbox_empty && pending.empty()) || now > stop_deadline) break;
    }
    if (!busy) {
      // Idle: wait for a message to send, or poll MPI again in 50 us (arrivals have no wake-up).
      std::unique_lock<std::mutex> lock(mutex_);
      // (Not woken by stop_ itself: while draining, the loop checks it every pass.)
      wake_.wait_for(lock, std::chrono::microseconds(50), [&] { return !outbox_.empty(); });
    }
  }
  // Requests that never completed (a peer gone mid-send) keep their buffers for good: MPI may
  // still touch them, and the process is about to leave anyway.
  if (!pending.empty()) unclean_ = true;
  abandoned.splice(abandoned.end(), pending);
  if (!abandoned.empty()) new std::list<Pending>(std::move(abandoned));
}

}  // namespace computron::runtime::rank
