// Real model execution for the runtime on CUDA: every shard of every deployment gets a
// model::ShardExecutor reading its weights straight from the shard's extent in the GPU pool, one
// worker thread per GPU runs the batch parts queued for it (prefill, then decode until each
// request has its output tokens), and tensor / pipeline groups talk over NCCL communicators made
// once at start. The executors of one GPU share one KV-cache and activation workspace: the
// engine never runs two batches on a GPU at once.
//
// Requests carry token counts, not text: prompts are synthetic token ids drawn from the request
// id, and generation is greedy with no end-of-sequence stop, so every request produces exactly
// its output_tokens.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime/execution.h"
#include "runtime/job_queue.h"

namespace computron::model {
class ShardExecutor;
class PeerGroup;
struct CommGuard;
}

namespace computron::runtime {

class CudaModelExecution final : public ModelExecution {
 public:
  explicit CudaModelExecution(RealExecutionOptions options);
  ~CudaModelExecution() override;

  std::string name() const override { return "cuda"; }
  void validate(const EngineConfig& config) const override;
  void fillShard(const ModelDeployment& model, ModelId id, int shard, std::span<std::byte> image) const override;
  void start(const EngineConfig& config, const std::vector<Device*>& devices, CompletionQueue& queue,
             const Clock& clock) override;
  void submit(ExecPart part) override;
  void stop() override;
  bool supportsSteps() const override { return true; }
  void setOrdinalShift(int shift) override { options_.ordinal_shift = shift; }
  void setGroupExchange(GroupExchange exchange) override { exchange_ = std::move(exchange); }
  void gpusLost(const std::vector<GpuId>& gpus) override;
  std::shared_ptr<TokenChannel> tokenChannel() const override { return options_.tokens; }

  // Device bytes of KV cache and activations each GPU sets aside (after start()).
  const std::vector<std::int64_t>& workspaceBytes() const { return workspace_bytes_; }
  // Seconds start() spent warming up (0 when COMPUTRON_WARMUP=0).
  double warmUpSeconds() const { return warm_up_seconds_; }

 private:
  struct Worker {
    int ordinal = 0;
    JobQueue<ExecPart> jobs{"model execution"};
    std::thread thread;
  };
  // Before the first request: runs what a first batch would otherwise pay for (model_execution.cpp).
  void warmUp();
  void run(Worker& worker);
  void runPart(const ExecPart& part);
  // One step of a session (iteration batching) on this part's executor.
  void runStep(const ExecPart& part, DeviceEvent& ev);
  // Per executor: the session whose sequences its KV cache holds (slot per request), and each
  // unfinished request's tokens so far (a rejoin after preemption recomputes them). Entries are
  // made in start(); each is touched only by the worker of its GPU.
  struct SessionState {
    BatchId id = -1;
    struct Seq {
      int slot = 0;
      int next = 0;  // the token the next decode step feeds in
    };
    std::map<RequestId, Seq> seqs;
    std::vector<int> free_slots;
    std::map<RequestId, std::vector<int>> history;  // prompt + generated tokens
  };
  std::map<std::pair<ModelId, int>, SessionState> sessions_;
  std::string checkpointFor(const ModelDeployment& model) const;

  // Makes the communicators of one group: NCCL's own set-up when every GPU is this process's,
  // else one communicator per local GPU from an id shared over exchange_ (and registered in
  // spanning_ under `guard`). Entries for other processes' GPUs stay null.
  std::vector<void*> makeGroup(const char* kind, const std::string& placement, const std::vector<GpuId>& gpus,
                               const std::shared_ptr<model::CommGuard>& guard);
  // The first shard of `model` on this process's GPUs (the model must have one).
  int firstLocalShard(const ModelDeployment& model) const;

  RealExecutionOptions options_;
  GroupExchange exchange_;
  std::vector<bool> local_;      // per model: runs here (some or all of its GPUs are this process's)
  std::vector<bool> local_gpu_;  // per GPU: this process's
  // Groups spanning processes: their GPUs, this process's communicators and their guard, so a
  // lost process's groups can be aborted (gpusLost).
  struct Spanning {
    std::vector<GpuId> gpus;
    std::vector<void*> comms;
    std::shared_ptr<model::CommGuard> guard;
  };
  std::mutex spanning_mutex_;
  std::vector<Spanning> spanning_;
  std::set<GpuId> lost_gpus_;  // reported by gpusLost, under spanning_mutex_
  EngineConfig config_;
  CompletionQueue* queue_ = nullptr;
  const Clock* clock_ = nullptr;
  std::map<std::pair<ModelId, int>, std::unique_ptr<model::ShardExecutor>> executors_;
  std::map<std::pair<ModelId, int>, std::pair<void*, void*>> parallel_comms_;  // (tp, pp) ncclComm_t per shard
  std::map<std::pair<ModelId, int>, std::shared_ptr<model::PeerGroup>> tp_peers_;  // per shard: its TP group over peer access
  std::map<std::pair<ModelId, int>, std::shared_ptr<model::CommGuard>> guards_;     // per shard: set when its groups span processes
  std::vector<void*> workspaces_;  // one per GPU
  std::vector<std::int64_t> workspace_bytes_;
  std::vector<void*> comms_;       // ncclComm_t, destroyed at stop
  std::vector<std::unique_ptr<Worker>> workers_;
  bool stopped_ = false;
  double warm_up_seconds_ = 0;
  std::mutex token_log_mutex_;
  std::ofstream token_log_;  // options_.token_log, when given
};

}  // namespace computron::runtime
