// Generation over one model placed on tp x pp GPUs: one executor and one host thread per GPU,
// NCCL communicators created once when the group is built, every rank running the same
// generation loop on the same host-side state (prompt lengths, positions, finished flags).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/model/cuda/shard_executor.h"

namespace computron::model {

struct SamplingOptions {
  float temperature = 0.f;  // 0: greedy
  int top_k = 0;            // 0: no limit
  float top_p = 1.f;        // 1: no limit
  std::uint64_t seed = 0;
  int eos_token = -1;  // -1: never stop early
};

struct GenerationRequest {
  std::vector<int> prompt;
  int max_new_tokens = 16;
  // The request's own sampling (a served request's temperature, top_p, seed): its row is sampled
  // alone, with its seed and its own step count, so its tokens do not depend on the batch it is
  // in. Unset: the call's SamplingOptions, all rows in one launch.
  std::optional<SamplingOptions> sampling;
  std::vector<int> stop_tokens;  // sampling one of these ends the request (the token is kept)
  // Set by another thread: the request is dropped before the next step. Read only when the
  // executor is the whole group (tp = pp = 1), where no other rank must take the same steps.
  const std::atomic<bool>* cancelled = nullptr;
};

struct GenerationResult {
  std::vector<std::vector<int>> tokens;  // generated tokens per request (EOS included when hit)
  double prefill_seconds = 0;
  std::vector<double> decode_step_seconds;  // one per decode pass
};

// Called on the last stage's TP rank 0 after every pass: step 0 is the prefill, then one per
// decode pass; `sequences` rows of [vocab] logits, for the requests still running, in order.
using LogitsObserver = std::function<void(int step, const std::vector<int>& request_ids, const std::vector<float>& logits)>;

// Called on every rank after each pass, once its sampled tokens are on the host (the pass is
// done on this GPU): step 0 is the prefill.
using StepObserver = std::function<void(int step)>;

// Called on the last stage's TP rank 0 after every pass, before StepObserver: the requests still
// running (indices into the call's requests, in order) and the token each just sampled.
using TokenObserver = std::function<void(int step, const std::vector<int>& request_ids, const std::vector<int>& tokens)>;

// Runs on one rank (all ranks call it with the same arguments).
GenerationResult generate(ShardExecutor& executor, const std::vector<GenerationRequest>& requests,
                          const SamplingOptions& sampling, const LogitsObserver& observer = nullptr,
                          const StepObserver& step_done = nullptr, const TokenObserver& tokens_out = nullptr);

// The executor's numbers (norm epsilon, rope theta) of a spec, as modelFromHfConfig or the preset
// set them; from a model folder's config.json (which must be of the spec's family; rope scaling
// other than the default is refused); or a preset's published values (defaults for other names).
ArchExtras archExtrasOf(const ModelSpec& spec);
ArchExtras archExtrasFromConfig(const std::string& folder, const ModelSpec& spec);
ArchExtras presetArchExtras(const std::string& preset);

// Weights of one shard: where they come from.
struct WeightSource {
  std::string checkpoint;   // a model folder; empty: random weights from `seed`
  std::uint64_t seed = 1;
};

// The GPUs of one placement group and their executors. GPU index = pp_rank * tp + tp_rank.
class ModelGroup {
 public:
  ModelGroup(const ModelSpec& spec, const ArchExtras& extras, int tp, int pp, const std::vector<int>& devices,
             const ExecutorLimits& limits, const WeightSource& weights);
  ~ModelGroup();
  ModelGroup(const ModelGroup&) = delete;
  ModelGroup& operator=(const ModelGroup&) = delete;

  // Runs fn(executor) on every rank, one thread each; rethrows the first failure.
  void onEveryRank(const std::function<void(ShardExecutor&)>& fn);
  // Convenience: generate on all ranks; returns the result of the last stage's TP rank 0.
  GenerationResult generate(const std::vector<GenerationRequest>& requests, const SamplingOptions& sampling,
                            const LogitsObserver& observer = nullptr);
  std::int64_t weightBytesPerGpu(int index) const;
  int size() const { return static_cast<int>(executors_.size()); }

 private:
  int tp_, pp_;
  std::vector<void*> tp_comms_, pp_comms_;  // ncclComm_t, one per GPU
  std::vector<std::shared_ptr<PeerGroup>> peers_;  // per stage: its TP group over peer access, or null
  std::vector<std::unique_ptr<ShardExecutor>> executors_;
};

}  // namespace computron::model
