// Model execution inside the runtime: the interface RealBackend hands batches to when it runs real
// models (runtime/cuda/model_execution.h, the decoders of runtime/model on CUDA) instead of the
// PLACEHOLDER kernel, and the gate that lets a batch start on a shard that is still loading.
//
// Layer-pipelined execution: when the engine starts a batch on a model whose load is in flight
// (policy.layer_pipelined), each part gets a SegmentGate. The backend opens it segment by segment
// as the load's copies land (the same progress that feeds the layer-readiness timeline), and the
// executor blocks on it before it issues the work that reads a segment, so the first layers run
// while later ones are still on the link.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/core/engine.h"
#include "runtime/completion_queue.h"
#include "runtime/token_channel.h"

namespace computron::runtime {

class Device;
class FaultPlan;

class SegmentGate {
 public:
  explicit SegmentGate(int segments) : segments_(segments) {}
  int segments() const { return segments_; }
  // Segments [0, ready) are on the GPU. Never goes back.
  void advance(int ready) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (ready <= ready_) return;
      ready_ = ready;
    }
    cv_.notify_all();
  }
  void fail(const std::string& error) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (failed_) return;
      failed_ = true;
      error_ = error;
    }
    cv_.notify_all();
  }
  // Blocks until `segment` is on the GPU (true) or the load failed first (false). A failed gate
  // does not throw: the ranks of a tensor-parallel group must keep issuing the same collectives,
  // so an executor runs on (over whatever bytes arrived) and reports the failure at the end.
  bool wait(int segment) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return failed_ || ready_ > segment || segment >= segments_; });
    return ready_ > segment || segment >= segments_;
  }
  std::string error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }
  int ready() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return ready_;
  }

 private:
  const int segments_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  int ready_ = 0;
  bool failed_ = false;
  std::string error_;
};

// Settings of real model execution (runtime/cuda/model_execution.h).
struct RealExecutionOptions {
  int max_context = 1024;  // prompt + output tokens per request; sizes the KV cache
  // Model folders (config.json + safetensors) by deployment name or weights label; the other
  // models get deterministic random weights of their shapes.
  std::map<std::string, std::string> checkpoints;
  std::uint64_t seed = 1;
  // Injected faults (runtime/fault_plan.h): a failed batch fails its part 0 after the part ran.
  std::shared_ptr<FaultPlan> faults;
  // Served requests' prompts and sampling, and where their tokens go (`computron serve`); null:
  // synthetic prompts, greedy, tokens kept inside the executor.
  std::shared_ptr<TokenChannel> tokens;
  // GPU g is CUDA device g + ordinal_shift (a rank of a multi-process run, as for its devices).
  int ordinal_shift = 0;
  // Non-empty: every served request-level batch's generated tokens are written here (the file is
  // truncated at start), one line per request ("request ID model NAME tokens T1 T2 ..."), by the
  // process holding the model's first shard, so two runs' outputs compare after sorting
  // (`replay --token-log`).
  std::string token_log;
};

// One GPU's part of a batch.
struct ExecPart {
  BatchId batch = 0;
  int part = 0;     // index into the batch's GPUs (= the shard index)
  ModelId model = 0;
  int shard = 0;
  GpuId gpu = 0;
  const std::byte* weights = nullptr;  // the shard image in this GPU's pool
  std::int64_t weights_offset = 0;     // where that is in the pool (a rank that owns the GPU rebases it)
  std::vector<Request> requests;
  std::shared_ptr<SegmentGate> gate;   // null: the shard is resident
  // Iteration batching: this part is one step of a session (requests is then empty); its
  // completion carries only `start` and `time`.
  std::shared_ptr<const StepCommand> step;
  // Multi-process serving (runtime/mpi/): the served requests' payloads travel with the part, one
  // per request (a step's: one per sequence it names; null: a synthetic prompt), and the owning
  // rank files them in its token channel.
  std::vector<std::shared_ptr<const RequestPayload>> payloads;
};

// The requests a part's payloads belong to, in order: its requests, or a step's sequences (the
// joiners of a prefill step, else the decoding ones).
inline std::size_t payloadSlots(const ExecPart& part) {
  if (!part.step) return part.requests.size();
  return part.step->prefill.empty() ? part.step->decode.size() : part.step->prefill.size();
}
inline RequestId payloadRequest(const ExecPart& part, std::size_t i) {
  if (!part.step) return part.requests[i].id;
  return (part.step->prefill.empty() ? part.step->decode : part.step->prefill)[i].request.id;
}

class ModelExecution {
 public:
  virtual ~ModelExecution() = default;
  virtual std::string name() const = 0;
  // Checks the deployments before anything is allocated (ConfigError naming the model).
  virtual void validate(const EngineConfig& config) const = 0;
  // Writes the host image of shard `shard` of `model`: the layout the executor reads.
  virtual void fillShard(const ModelDeployment& model, ModelId id, int shard, std::span<std::byte> image) const = 0;
  // Called once, after the devices exist (`devices[g]` is GPU g; null for another process's GPU,
  // whose models that process runs): builds what runs the models and starts one worker per GPU. Completions go to `queue` as kExecDone events: `start`, then in
  // `step_end` the end of every pass (prefill first), `ok`/`error`.
  virtual void start(const EngineConfig& config, const std::vector<Device*>& devices, CompletionQueue& queue,
                     const Clock& clock) = 0;
  // Queues a part on its GPU's worker. Parts of one GPU run in submission order.
  virtual void submit(ExecPart part) = 0;
  // Finishes queued parts and joins the workers. Idempotent.
  virtual void stop() = 0;
  // Runs session steps (ExecPart::step) for iteration batching.
  virtual bool supportsSteps() const { return false; }
  // Before start(): GPU g is device g + shift (a rank of a multi-process run, runtime/mpi/).
  virtual void setOrdinalShift(int /*shift*/) {}

  // Multi-process runs (runtime/mpi/): how the processes holding the GPUs of a collective group
  // that spans them agree on its id. start() calls it on every such process, for each such group
  // in the same order everywhere: the process holding gpus[0] passes the id it made and gets it
  // back; the others pass "" and get that id (blocking and bounded: ConfigError past the bound,
  // or when the process holding gpus[0] is lost). Without it (one process) start() refuses a
  // model whose GPUs this process holds only some of.
  using GroupExchange =
      std::function<std::string(const std::string& key, const std::vector<GpuId>& gpus, const std::string& id)>;
  virtual void setGroupExchange(GroupExchange /*exchange*/) {}
  // Another process's GPUs are gone (runtime/mpi/: its rank was lost): every collective group
  // that includes one of them is aborted, so a part waiting in one of its collectives fails
  // instead of waiting forever, and that group's later parts fail at once. Callable from any
  // thread.
  virtual void gpusLost(const std::vector<GpuId>& /*gpus*/) {}
  // Where served requests' payloads are looked up and their tokens delivered (`computron
  // serve`); null without one.
  virtual std::shared_ptr<TokenChannel> tokenChannel() const { return nullptr; }
};

}  // namespace computron::runtime
