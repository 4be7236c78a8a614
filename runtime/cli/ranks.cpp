#include "runtime/cli/ranks.h"

#include <sched.h>

#include <cstdlib>
#include <iostream>
#include <thread>

#include "runtime/device_factory.h"
#include "runtime/mpi/rank_worker.h"
#ifdef COMPUTRON_HAVE_MPI
#include "runtime/mpi/mpi_transport.h"
#endif

namespace po = boost::program_options;

namespace computron::runtime {

void addRankOptions(po::options_description& opts, RankOptions& options) {
  opts.add_options()(
      "gpus-per-rank", po::value<int>(&options.gpus_per_rank)->default_value(0),
      "under mpirun: GPUs each rank owns, rank r the scenario's GPUs [r*N, (r+1)*N) (0: the scenario's GPUs over the "
      "ranks, rounded up)")(
      "rank-timeout-s", po::value<double>(&options.rank_timeout_s)->default_value(options.rank_timeout_s),
      "under mpirun: a rank not heard from this long is lost; its GPUs' work fails with the reason and the rest "
      "serves on (launch with mpirun --enable-recovery, or Open MPI ends every rank when one dies)")(
      "engine-only", po::bool_switch(&options.engine_only),
      "under mpirun: rank 0 runs the engine alone (a host without GPUs, or to keep it off the GPU hosts); ranks 1.. own "
      "the GPUs");
}

RankSession::RankSession(const RankOptions& options, int scenario_gpus, const std::string& device) {
  layout_.total_gpus = scenario_gpus;
  layout_.gpus_per_rank = scenario_gpus;
#ifdef COMPUTRON_HAVE_MPI
  if (!rank::MpiTransport::launched()) return;
  if (options.rank_timeout_s < 0.05 || options.rank_timeout_s > 1e6)
    throw ConfigError("--rank-timeout-s: must be 0.05 to 1e6");
  if (options.gpus_per_rank < 0 || options.gpus_per_rank > 4096) throw ConfigError("--gpus-per-rank: must be 0 to 4096");
  rank::MpiTransportOptions mo;
  mo.timeout = static_cast<Nanos>(options.rank_timeout_s * 1e9);
  mo.heartbeat = std::min<Nanos>(200 * kNanosPerMilli, mo.timeout / 5);
  auto transport = std::make_unique<rank::MpiTransport>(mo);
  rank_ = transport->rank();
  layout_.ranks = transport->size();
  if (layout_.ranks == 1) return;  // one rank: the one-process runtime
  layout_.first_gpu_rank = options.engine_only ? 1 : 0;
  const int gpu_ranks = layout_.ranks - layout_.first_gpu_rank;
  layout_.gpus_per_rank = options.gpus_per_rank > 0 ? options.gpus_per_rank : (scenario_gpus + gpu_ranks - 1) / gpu_ranks;
  if (static_cast<std::int64_t>(layout_.gpus_per_rank) * gpu_ranks < scenario_gpus)
    throw ConfigError("--gpus-per-rank " + std::to_string(layout_.gpus_per_rank) + " x " + std::to_string(gpu_ranks) +
                      " GPU ranks hold fewer than the scenario's " + std::to_string(scenario_gpus) + " GPUs");
  transport_ = std::move(transport);
  (void)device;
  // Open MPI binds each rank to one core by default (with few ranks): a rank's host store fill
  // and pinning, its copy and checksum threads then share that core (7 minutes instead of 1 to
  // fill 40 GB of random weights on an H200 host, bench/results/mpi-h200-2026-12-01.md).
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const unsigned cores = std::thread::hardware_concurrency();
  if (sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) == 1 && cores > 1)
    std::cerr << "note: rank " << rank_ << " is bound to one core of " << cores
              << "; its host store and copy threads share it. Launch with mpirun --bind-to none\n";
#else
  (void)options;
  (void)device;
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr && std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")) > 1)
    throw ConfigError("started by mpirun with several ranks, but this build has no MPI (install libopenmpi-dev and "
                      "rebuild; CMake reports 'computron: MPI ON')");
#endif
}

RankSession::~RankSession() {
  if (!multi()) return;
  try {
    if (rank_ == 0 && factory_) {
      factory_->detach();     // the backend and its queue are gone by now
      factory_->stopRanks();  // once: ranks it had no device of were never told
    } else if (rank_ == 0 && !aborted_) {
      abort();  // an error before the backend existed
    }
  } catch (...) {
    // Leaving anyway; the ranks give up on rank 0 after their timeout.
  }
  factory_.reset();  // stops the transport before it goes
}

int RankSession::cudaOrdinalShift(int visible_devices) const {
  if (!multi() || rank_ < layout_.first_gpu_rank || visible_devices <= 0) return 0;
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  const int local_rank = local != nullptr ? std::atoi(local) : 0;
  // Ranks are placed in order, so rank 0 is on this node when this node's first rank is 0.
  const bool engine_here = layout_.first_gpu_rank == 1 && rank_ - local_rank == 0;
  const int gpu_rank_on_node = local_rank - (engine_here ? 1 : 0);
  const int base = (gpu_rank_on_node * layout_.gpus_per_rank) % visible_devices;
  return base - layout_.firstGpu(rank_);
}

void RankSession::applyToConfig(EngineConfig& config) const {
  if (!multi()) return;
  config.gpu_node.assign(static_cast<std::size_t>(layout_.total_gpus), 0);
  for (int g = 0; g < layout_.total_gpus; ++g) config.gpu_node[static_cast<std::size_t>(g)] = layout_.owner(g);
}

DeviceFactory& RankSession::localFactory(const std::string& device, int scenario_gpus, std::shared_ptr<FaultPlan> faults,
                                         int& cuda_shift) {
  cuda_shift = 0;
  if (engineOnly()) {
    local_ = makeDeviceFactory("host", 0);  // makes no device: every GPU is another rank's
  } else if (device != "cuda") {
    local_ = makeDeviceFactory(device, scenario_gpus, std::move(faults));
  } else {
    local_ = cudaFactory(scenario_gpus, std::move(faults), cuda_shift);
  }
  return *local_;
}

std::optional<int> RankSession::serveOrSetUp(const std::string& device, const EngineConfig& config,
                                             const RuntimeOptions& options, std::shared_ptr<FaultPlan> faults,
                                             int scenario_gpus, DeviceFactory*& factory) {
  const bool gpu_rank = multi() && rank_ != 0;
  int cuda_shift = 0;
  try {
    factory = &localFactory(device, scenario_gpus, std::move(faults), cuda_shift);
  } catch (const std::exception& e) {
    // A GPU rank tells rank 0, which stops the run with this error instead of waiting for it.
    if (gpu_rank) return reportSetupError(e.what());
    throw;
  }
  if (options.execution) options.execution->setOrdinalShift(cuda_shift);
  if (gpu_rank) return runWorker(config, *factory, options, cuda_shift);
  return std::nullopt;
}

int RankSession::reportSetupError(const std::string& error) {
  if (!multi() || rank_ == 0) throw std::logic_error("RankSession: rank 0 reports its own errors");
  return rank::reportRankSetupError(*transport_, error, std::cerr);
}

std::unique_ptr<DeviceFactory> RankSession::cudaFactory(int scenario_gpus, std::shared_ptr<FaultPlan> faults,
                                                        int& cuda_shift) const {
  const std::string device = "cuda";
  // Without a usable GPU the CUDA error alone does not say what to do instead.
  std::unique_ptr<DeviceFactory> factory;
  try {
    factory = makeDeviceFactory(device, scenario_gpus, faults);
    if (multi() && factory->deviceCount() > 0) {
      cuda_shift = cudaOrdinalShift(factory->deviceCount());
      factory = makeDeviceFactory(device, scenario_gpus, faults, cuda_shift);
    }
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw ConfigError(std::string("--device cuda: no usable GPU (") + e.what() +
                      "); the host-memory device runs the same scenario: --device host");
  }
  if (factory->deviceCount() == 0)
    throw ConfigError("--device cuda: this machine has no GPU; the host-memory device runs the same scenario: --device host");
  // One process owns every GPU of the cluster: the engine plans loads, multi-path routes and copies
  // from twins over all of them, so a GPU the machine lacks would fail those loads at run time.
  if (!multi() && factory->deviceCount() < scenario_gpus)
    throw ConfigError("$.cluster: the scenario's cluster has " + std::to_string(scenario_gpus) +
                      " GPUs but this machine has " + std::to_string(factory->deviceCount()) +
                      " (the engine would route loads through GPUs that are not there); run a cluster of at most " +
                      std::to_string(factory->deviceCount()) + " GPU(s), e.g. --set cluster.preset=\"h200x" +
                      std::to_string(factory->deviceCount()) + "\" with the models on GPU 0, or --device host");
  return factory;
}

std::unique_ptr<RealBackend> RankSession::makeBackend(const EngineConfig& config, DeviceFactory& local,
                                                      const std::string& device, const RuntimeOptions& options) {
  if (!multi()) return std::make_unique<RealBackend>(config, local, options);
  try {
    rank::RankDeviceFactory& factory = engineFactory(local);
    factory.setName(device);
    RuntimeOptions ranked = options;
    // Real models run on the GPU ranks; rank 0 hands each batch's parts over.
    if (options.execution) {
      ranked.execution = std::make_shared<rank::RankExecution>(options.execution, factory);
      factory.setTokenChannel(options.execution->tokenChannel());  // served tokens from the GPU ranks
    }
    return std::make_unique<RealBackend>(config, factory, ranked);
  } catch (...) {
    abort();
    throw;
  }
}

rank::RankDeviceFactory& RankSession::engineFactory(DeviceFactory& local) {
  if (!multi() || rank_ != 0) throw std::logic_error("RankSession: the engine's factory is rank 0's");
  factory_ = std::make_unique<rank::RankDeviceFactory>(local, *transport_, layout_);
  return *factory_;
}

int RankSession::runWorker(const EngineConfig& config, DeviceFactory& local, const RuntimeOptions& options, int shift) {
  if (!multi() || rank_ == 0) throw std::logic_error("RankSession: rank 0 runs the engine");
  const int count = local.deviceCount();
  return rank::runRankWorker(config, local, options, *transport_, layout_, std::cerr,
                             [&](GpuId g) { return g + shift >= 0 && g + shift < count; });
}

void RankSession::abort() {
  if (!multi() || rank_ != 0 || aborted_) return;
  aborted_ = true;
  if (factory_) {
    factory_->abortRanks();
    return;
  }
  // Before the devices' factory started the transport: start it only to say so.
  transport_->leaveWithoutFinalize();
  transport_->start([](int, std::string) {}, [](int, const std::string&) {});
  for (int r = 1; r < layout_.ranks; ++r) transport_->send(r, rank::encodeSignal(rank::MsgType::kAbort));
  transport_->stop();
}

nlohmann::json RankSession::summary() const {
  nlohmann::json out = nlohmann::json::array();
  if (!factory_) return out;
  for (const rank::RankStatus& st : factory_->status()) {
    out.push_back({{"rank", st.rank},
                   {"gpus", st.gpus},
                   {"host", st.host},
                   {"lost", st.lost},
                   {"reason", st.reason},
                   {"jobs", st.jobs},
                   {"jobs_failed_on_loss", st.failed_on_loss}});
  }
  return out;
}

}  // namespace computron::runtime
