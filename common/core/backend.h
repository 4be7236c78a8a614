// The boundary between the scheduling core and whatever moves bytes and runs kernels: the
// discrete-event simulator (sim/) or real GPUs (runtime/). The core issues commands; the backend
// reports completions by calling the Engine's on*Done methods (from the core's own thread: a
// threaded backend queues completions and delivers them there).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/model_spec.h"
#include "common/types.h"
#include "common/workload.h"

namespace computron {

using OpId = std::uint64_t;

// How a shard's bytes reach its GPU. Each part moves `bytes` over the host link of `via` GPU; a
// part whose `via` differs from the target is forwarded over NVLink (multi-path load). A part with
// `from_device` set copies from `via`'s resident copy of the same shard over NVLink alone. A part
// with `from_node` >= 0 comes from that node's host memory over the network (its NIC, the spine,
// the target node's NIC) and then the target's host link; `via` is then the target.
struct RoutePart {
  GpuId via = 0;
  std::int64_t bytes = 0;
  bool from_device = false;
  int from_node = -1;
};

struct LoadCommand {
  OpId op = 0;
  ModelId model = 0;
  int shard = 0;  // index = pp_rank * tp + tp_rank
  GpuId gpu = 0;
  std::int64_t bytes = 0;
  ShardLayout layout;
  std::vector<RoutePart> route;  // parts sum to bytes; one part via == gpu is a direct load
};

struct EvictCommand {
  OpId op = 0;
  ModelId model = 0;
  int shard = 0;
  GpuId gpu = 0;
  std::int64_t bytes = 0;
};

struct ExecuteCommand {
  BatchId batch = 0;
  ModelId model = 0;
  int tp = 1;
  int pp = 1;
  std::vector<GpuId> gpus;  // shard i runs on gpus[i]
  std::vector<Request> requests;
};

// Completion of a batch. Times are the backend's clock. Request i of the command produced its
// first token at first_token and its last at finish[i].
struct BatchResult {
  BatchId batch = 0;
  Nanos start = 0;
  Nanos first_token = 0;
  std::vector<Nanos> finish;
  bool ok = true;
  std::string error;
};

// Iteration-level batching (policy.batching "iteration"): a model's session runs one step at a
// time, and the engine decides between steps which sequences join and which leave.
struct StepSequence {
  Request request;
  // The sequence's history as this step reads it: its prompt plus the tokens it has made (a
  // decode step feeds the last of them in, at position context - 1; a prefill step after a
  // preemption recomputes all of them).
  std::int32_t context = 0;
  std::int32_t generated = 0;  // output tokens made so far
};

struct StepCommand {
  BatchId batch = 0;      // the session (one per model at a time)
  std::int64_t step = 0;  // 0, 1, ... within the session
  ModelId model = 0;
  int tp = 1;
  int pp = 1;
  std::vector<GpuId> gpus;  // shard i runs on gpus[i]
  // A prefill step fills the KV cache of the joining sequences (`prefill`, each over `context`
  // tokens) and makes each one's next token; sequences already decoding wait that step. A decode
  // step (`prefill` empty) makes one token of every sequence in `decode`.
  std::vector<StepSequence> prefill;
  std::vector<StepSequence> decode;
  // Sequences that ended (made their last token, stopped, or failed with a step) since the model's
  // previous step, in this session or in one that ended before it could name them: a backend
  // releases their KV cache slots and forgets their tokens. Preempted sequences are never named:
  // they rejoin later with a prefill over their tokens so far. A session ends without a further
  // command when its last sequence leaves (or is preempted, or a step fails): its end releases
  // every sequence's cache.
  std::vector<RequestId> retired;
};

struct StepResult {
  BatchId batch = 0;
  std::int64_t step = 0;
  Nanos start = 0;
  Nanos end = 0;  // every sequence of the step has its new token
  bool ok = true;
  std::string error;
  // Sequences that end with this step's token before their output_tokens: a served request's stop
  // id, or its client gone (the runtime in one process; the simulator never stops early).
  std::vector<RequestId> stopped;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual void load(const LoadCommand& cmd) = 0;
  virtual void evict(const EvictCommand& cmd) = 0;
  virtual void execute(const ExecuteCommand& cmd) = 0;
  // Runs one step of a session; completion through Engine::onStepDone. A backend that runs
  // request-level batches only keeps this default, and the scenario is refused before it starts.
  virtual bool supportsSteps() const { return false; }
  virtual void step(const StepCommand& /*cmd*/) {
    throw std::logic_error("this backend runs request-level batches only");
  }
};

// Time enters the core only through this interface.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual Nanos now() const = 0;
};

}  // namespace computron
