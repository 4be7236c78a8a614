// `mpirun -np N computron replay|serve ...`: every rank parses the same command line and
// scenario; rank 0 runs the engine (and the front end) over its own GPUs and the other ranks'
// GPUs, the other ranks only serve their GPUs (runtime/mpi/). Outside mpirun, with one rank, or
// in a build without MPI, nothing changes: one process.
#pragma once

#include <boost/program_options.hpp>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/device.h"
#include "runtime/fault_plan.h"
#include "runtime/mpi/rank_devices.h"
#include "runtime/mpi/transport.h"
#include "runtime/real_backend.h"

namespace computron::runtime {

struct RankOptions {
  int gpus_per_rank = 0;      // 0: the scenario's GPUs spread evenly (rounded up) over the ranks
  double rank_timeout_s = 10; // a rank silent this long is lost
  bool engine_only = false;   // rank 0 owns no GPUs; ranks 1.. own them
};
void addRankOptions(boost::program_options::options_description& opts, RankOptions& options);

class RankSession {
 public:
  // Joins the MPI job when launched by mpirun (built with MPI); ConfigError when the ranks
  // cannot hold the scenario's GPUs. `scenario_gpus`: the cluster's GPU count.
  RankSession(const RankOptions& options, int scenario_gpus, const std::string& device);
  // Rank 0: stops the other ranks (after the backend is gone), or, if the run never got as far
  // as its backend, tells them to leave.
  ~RankSession();

  bool multi() const { return layout_.ranks > 1; }
  int rank() const { return rank_; }
  const rank::RankLayout& layout() const { return layout_; }
  // CUDA: add this to a GpuId of this rank to get its CUDA device. The GPU ranks of a node take
  // its devices in turn (ranks placed in order, mpirun's default): the i-th GPU rank of the node
  // starts at device i x GPUs per rank, modulo the devices it sees (CUDA_VISIBLE_DEVICES).
  int cudaOrdinalShift(int visible_devices) const;
  bool engineOnly() const { return multi() && layout_.first_gpu_rank == 1 && rank_ == 0; }
  // Ranks > 1 only: the routing of loads keeps NVLink paths inside one rank (each rank is its own
  // node for the engine), since copies between processes' GPUs are not made.
  void applyToConfig(EngineConfig& config) const;

  // This process's own devices of kind `device` (cuda or host), `faults` injected: in a
  // multi-process run shifted to this rank's CUDA devices (`cuda_shift` set), and for an
  // engine-only rank 0 a factory that makes none. ConfigError when CUDA has no usable GPU here.
  // The session keeps it (it outlives the backend and the ranks' factory over it).
  DeviceFactory& localFactory(const std::string& device, int scenario_gpus, std::shared_ptr<FaultPlan> faults,
                              int& cuda_shift);
  // This process's devices, as localFactory. A GPU rank (>= 1 under mpirun) then serves them to
  // rank 0 until told to stop, or tells rank 0 why it could not set up, and gets its exit code
  // back; rank 0 and a lone process get nothing and `factory` set.
  std::optional<int> serveOrSetUp(const std::string& device, const EngineConfig& config, const RuntimeOptions& options,
                                  std::shared_ptr<FaultPlan> faults, int scenario_gpus, DeviceFactory*& factory);
  // Ranks >= 1 whose own set-up failed: tells rank 0 why (the run stops with that error) and
  // returns the exit code, 2.
  int reportSetupError(const std::string& error);
  // The backend over `local` (one process) or over every rank's GPUs (rank 0 of several: the
  // devices of kind `device`); a failure here tells the other ranks to leave before it throws.
  std::unique_ptr<RealBackend> makeBackend(const EngineConfig& config, DeviceFactory& local, const std::string& device,
                                           const RuntimeOptions& options);
  // Ranks >= 1: serves the GPUs until rank 0 says stop; returns the exit code.
  // `shift`: the CUDA ordinal shift the local factory uses (its devices are g + shift).
  int runWorker(const EngineConfig& config, DeviceFactory& local, const RuntimeOptions& options, int shift = 0);
  // Rank 0: set-up failed here, tell the other ranks to leave.
  void abort();
  // For summary.json's runtime member: the ranks, their GPUs and hosts, and what was lost.
  nlohmann::json summary() const;

 private:
  std::unique_ptr<DeviceFactory> cudaFactory(int scenario_gpus, std::shared_ptr<FaultPlan> faults, int& cuda_shift) const;
  // Rank 0 of a multi-process run: the factory the backend uses (own GPUs from `local`, the
  // others through their ranks). Kept alive by the session, which it must not outlive.
  rank::RankDeviceFactory& engineFactory(DeviceFactory& local);
  rank::RankLayout layout_;
  int rank_ = 0;
  bool aborted_ = false;
  // Destroyed in reverse: the ranks' factory, then the local one it wraps, then the transport.
  std::unique_ptr<rank::Transport> transport_;
  std::unique_ptr<DeviceFactory> local_;
  std::unique_ptr<rank::RankDeviceFactory> factory_;
};

}  // namespace computron::runtime
