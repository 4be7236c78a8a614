// The engine's rank (0) of a multi-process run: a DeviceFactory whose devices are this
// process's own GPUs (from the local factory) and, for GPUs other ranks own, RemoteDevices that
// forward every job to the owning rank and hand its events to the backend's completion queue.
// RealBackend and the engine cannot tell the difference: the core does not know how many
// processes there are.
//
// Rank loss: when the transport reports a rank lost (dead, or silent past the heartbeat
// timeout), every job still out on that rank completes here as failed, with the reason, then one
// kGpuLost event per GPU of the rank follows; jobs submitted later fail at once. Nothing from
// that rank is delivered afterwards, so each job completes exactly once.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "runtime/device.h"
#include "runtime/execution.h"
#include "runtime/mpi/messages.h"
#include "runtime/mpi/transport.h"

namespace computron::runtime::rank {

struct RankDevicesOptions {
  Nanos setup_timeout = 600 * kNanosPerSecond;  // every rank's hello (its host store is built first)
  Nanos stop_timeout = 60 * kNanosPerSecond;    // every rank's kStopped at the end
};

// What became of one rank, for the run's summary.
struct RankStatus {
  int rank = 0;
  std::vector<GpuId> gpus;
  std::string host;
  bool lost = false;
  std::string reason;
  std::int64_t jobs = 0;          // jobs sent to it
  std::int64_t failed_on_loss = 0;  // jobs that were out on it when it was lost
};

class RankDeviceFactory final : public DeviceFactory {
 public:
  // Starts the transport. `local` makes this rank's own GPUs (rank 0's part of the layout).
  RankDeviceFactory(DeviceFactory& local, Transport& transport, RankLayout layout, RankDevicesOptions options = {});
  ~RankDeviceFactory() override;  // stops the transport: no handler runs afterwards

  std::string name() const override { return name_.empty() ? local_.name() : name_; }
  // The device kind the GPU ranks run, when this rank's own factory is another (an engine-only
  // rank 0 makes no devices, and needs no GPU).
  void setName(std::string name) { name_ = std::move(name); }
  int deviceCount() const override { return layout_.total_gpus; }
  HostMemoryPinner* pinner() override { return local_.pinner(); }
  std::unique_ptr<Device> create(GpuId gpu, std::int64_t pool_bytes, std::int64_t chunk_bytes, CompletionQueue& queue,
                                 const Clock& clock) override;
  bool holdsShardsOf(GpuId gpu) const override { return layout_.owner(gpu) == 0; }
  // Waits for every rank's hello: ConfigError with a rank's own set-up error, or past the
  // timeout naming the ranks that did not answer.
  std::map<std::pair<ModelId, int>, std::uint64_t> remoteChecksums() override;

  // Asks every live rank to finish its queued work and stop, and waits for them (bounded).
  // Idempotent; the RemoteDevices' stop() calls it.
  void stopRanks();
  // Tells every rank to exit without serving (set-up failed on this rank); detaches.
  void abortRanks();
  // The backend that owned the completion queue is gone: events from now on are dropped.
  void detach();
  std::vector<RankStatus> status() const;
  const RankLayout& layout() const { return layout_; }

  // For RemoteDevice.
  void sendJob(GpuId gpu, std::string message, DeviceEvent failure);
  // Served tokens from the GPU ranks (kTokens) go here, their times on this process's clock.
  void setTokenChannel(std::shared_ptr<TokenChannel> channel);
  // A served request's client has gone: tells the rank that owns `gpu` (dropped if it was lost).
  void sendCancel(GpuId gpu, RequestId request);
  std::string describe(GpuId gpu) const;

 private:
  struct Outstanding {
    DeviceEvent failure;  // delivered if the rank is lost first
  };
  using JobKey = std::tuple<int, std::uint64_t, int>;  // event kind, op or batch, path or part
  static JobKey keyOf(const DeviceEvent& ev);

  void onMessage(int source, std::string message);
  void onLost(int rank, const std::string& reason);
  // Under mutex_: fail what is out on `rank` and report its GPUs lost.
  void failRankLocked(int rank, const std::string& reason);
  void reportLostGpusLocked(const RankStatus& st, Nanos now);
  void pushLocked(DeviceEvent ev);
  Nanos toLocal(int rank, Nanos remote) const;

  DeviceFactory& local_;
  Transport& transport_;
  RankLayout layout_;
  RankDevicesOptions options_;
  std::string name_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  CompletionQueue* queue_ = nullptr;
  const SteadyClock* clock_ = nullptr;
  std::vector<RankStatus> ranks_;
  std::vector<bool> hello_;
  std::vector<bool> stopped_;
  std::vector<Hello> hellos_;
  std::vector<std::map<JobKey, Outstanding>> outstanding_;
  std::vector<Nanos> offset_;  // remote steady ns + offset = this process's steady ns
  std::vector<std::int64_t> pong_;  // last kPong's value per rank (-1: none yet)
  std::vector<Nanos> pong_at_;
  bool stopping_ = false;
  bool transport_stopped_ = false;
  std::shared_ptr<TokenChannel> tokens_;
};

// Real model execution on rank 0 when every GPU is another rank's (--engine-only): each part of a
// batch or session step goes to the rank that owns its GPU, whose own execution (`inner`'s kind)
// runs it over its pool; the completion comes back as that rank's event. A model whose GPUs span
// ranks has a part on each; those ranks' executions built its TP and PP groups together at start
// (ModelExecution::setGroupExchange). No model may have a GPU on rank 0.
class RankExecution final : public ModelExecution {
 public:
  RankExecution(std::shared_ptr<ModelExecution> inner, RankDeviceFactory& factory)
      : inner_(std::move(inner)), factory_(factory) {}
  ~RankExecution() override { stop(); }
  std::string name() const override { return inner_->name() + " on the GPU ranks"; }
  void validate(const EngineConfig& config) const override;
  void fillShard(const ModelDeployment& model, ModelId id, int shard, std::span<std::byte> image) const override {
    inner_->fillShard(model, id, shard, image);
  }
  void start(const EngineConfig&, const std::vector<Device*>&, CompletionQueue&, const Clock&) override {}
  void submit(ExecPart part) override;
  void stop() override;
  bool supportsSteps() const override { return inner_->supportsSteps(); }
  std::shared_ptr<TokenChannel> tokenChannel() const override { return inner_->tokenChannel(); }

 private:
  // Served requests sent to a GPU rank, watched (every 5 ms, on a thread started with the first)
  // for their client going away: the cancel then goes to that rank. An entry ends when the
  // serving loop drops the payload or the cancel has been sent.
  struct Watched {
    GpuId gpu = 0;
    RequestId request = 0;
    std::weak_ptr<const RequestPayload> payload;
  };
  void watch();

  std::shared_ptr<ModelExecution> inner_;
  RankDeviceFactory& factory_;
  std::mutex watch_mutex_;
  std::condition_variable watch_cv_;
  std::vector<Watched> watched_;
  std::thread watcher_;
  bool stopping_ = false;
};

}  // namespace computron::runtime::rank
