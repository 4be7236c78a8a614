#include "runtime/model/cuda/generation.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>

#include "common/json_reader.h"
#include "runtime/model/cuda/cuda_check.h"

namespace computron::model {

ArchExtras archExtrasOf(const ModelSpec& spec) {
  ArchExtras extras;
  extras.norm_eps = spec.norm_eps;
  if (spec.family().rotary()) extras.rope_theta = spec.rope_theta;
  return extras;
}

ArchExtras archExtrasFromConfig(const std::string& folder, const ModelSpec& spec) {
  // The checkpoint's own config.json says the numbers, whatever spec the caller placed.
  const ModelSpec from_config = modelFromHfConfig(folder + "/config.json");
  if (from_config.arch != spec.arch)
    throw ConfigError(folder + "/config.json: a " + archName(from_config.arch) + " checkpoint for a " + archName(spec.arch) +
                      " model '" + spec.name + "'");
  if (spec.family().rotary()) {
    // Rope scaling (Llama 3.1's, YaRN, ...) changes the angles; only the plain rotary is implemented.
    const nlohmann::json config = readJsonFile(folder + "/config.json");
    for (const char* key : {"rope_parameters", "rope_scaling"}) {
      if (!config.contains(key) || !config[key].is_object()) continue;
      const std::string type = config[key].value("rope_type", config[key].value("type", std::string("default")));
      if (type != "default") throw ConfigError(folder + "/config.json: rope type '" + type + "' is not supported (default only)");
    }
  }
  return archExtrasOf(from_config);
}

ArchExtras presetArchExtras(const std::string& preset) {
  return isModelPreset(preset) ? archExtrasOf(modelPreset(preset)) : ArchExtras{};
}

GenerationResult generate(ShardExecutor& executor, const std::vector<GenerationRequest>& requests,
                          const SamplingOptions& sampling, const LogitsObserver& observer, const StepObserver& step_done,
                          const TokenObserver& tokens_out) {
  const ShardPlan& plan = executor.plan();
  const bool reports = plan.has_lm_head && plan.tp_rank == 0;
  const bool alone = plan.tp == 1 && plan.pp == 1;  // no other rank must take the same steps
  const int count = static_cast<int>(requests.size());
  if (count == 0) return {};
  for (int r = 0; r < count; ++r) {
    const auto& req = requests[static_cast<std::size_t>(r)];
    if (req.prompt.empty()) throw CapacityError("request " + std::to_string(r) + " has an empty prompt");
    if (req.max_new_tokens < 1) throw CapacityError("request " + std::to_string(r) + " asks for no tokens");
    for (int t : req.prompt)
      if (t < 0 || t >= plan.spec.vocab) throw CapacityError("request " + std::to_string(r) + " has token " + std::to_string(t) + " outside the vocabulary");
  }

  GenerationResult result;
  result.tokens.assign(static_cast<std::size_t>(count), {});
  std::vector<int> length(static_cast<std::size_t>(count));  // tokens in the cache after the pass
  std::vector<int> active;                                   // requests still generating, in order
  bool per_row = false;  // some request brings its own sampling
  for (const auto& req : requests) per_row = per_row || req.sampling.has_value();
  std::vector<RowSampling> rows;
  using Clock = std::chrono::steady_clock;

  StepBatch batch;
  batch.prefill = true;
  for (int r = 0; r < count; ++r) {
    const auto& prompt = requests[static_cast<std::size_t>(r)].prompt;
    batch.seq_begin.push_back(static_cast<int>(batch.tokens.size()));
    batch.seq_len.push_back(static_cast<int>(prompt.size()));
    batch.seq_slot.push_back(r);
    for (std::size_t i = 0; i < prompt.size(); ++i) {
      batch.tokens.push_back(prompt[i]);
      batch.slots.push_back(r);
      batch.positions.push_back(static_cast<int>(i));
    }
    batch.last_token.push_back(static_cast<int>(batch.tokens.size()) - 1);
    length[static_cast<std::size_t>(r)] = static_cast<int>(prompt.size());
    active.push_back(r);
  }

  int step = 0;
  while (!active.empty()) {
    const auto start = Clock::now();
    executor.forward(batch);
    if (observer && reports) observer(step, active, executor.logitsToHost(static_cast<int>(active.size())));
    std::vector<int> next;
    if (per_row) {
      rows.clear();
      for (int r : active) {
        const SamplingOptions& s = requests[static_cast<std::size_t>(r)].sampling.value_or(sampling);
        rows.push_back({s.temperature, s.top_k, s.top_p, s.seed});
      }
      next = executor.sampleRowsAndShare(rows, step);
    } else {
      next = executor.sampleAndShare(static_cast<int>(active.size()), sampling.temperature, sampling.top_k, sampling.top_p,
                                     sampling.seed, step);
    }
    if (tokens_out && reports) tokens_out(step, active, next);
    if (step_done) step_done(step);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (step == 0) result.prefill_seconds = seconds; else result.decode_step_seconds.push_back(seconds);

    std::vector<int> still;
    StepBatch decode;
    for (std::size_t i = 0; i < active.size(); ++i) {
      const int r = active[i];
      auto& out = result.tokens[static_cast<std::size_t>(r)];
      out.push_back(next[i]);
      const GenerationRequest& req = requests[static_cast<std::size_t>(r)];
      const int eos = req.sampling ? req.sampling->eos_token : sampling.eos_token;
      const bool done = next[i] == eos || static_cast<int>(out.size()) >= req.max_new_tokens ||
                        std::find(req.stop_tokens.begin(), req.stop_tokens.end(), next[i]) != req.stop_tokens.end() ||
                        (alone && req.cancelled != nullptr && req.cancelled->load(std::memory_order_relaxed));
      if (done) continue;
      still.push_back(r);
      decode.tokens.push_back(next[i]);
      decode.slots.push_back(r);
      decode.positions.push_back(length[static_cast<std::size_t>(r)]);
      decode.last_token.push_back(static_cast<int>(decode.tokens.size()) - 1);
      ++length[static_cast<std::size_t>(r)];
    }
    active = std::move(still);
    batch = std::move(decode);
    ++step;
  }
  return result;
}

ModelGroup::ModelGroup(const ModelSpec& spec, const ArchExtras& extras, int tp, int pp, const std::vector<int>& devices,
                       const ExecutorLimits& limits, const WeightSource& weights)
    : tp_(tp), pp_(pp) {
  const int n = tp * pp;
  if (static_cast<int>(devices.size()) != n)
    throw CapacityError("tp " + std::to_string(tp) + " x pp " + std::to_string(pp) + " needs " + std::to_string(n) + " GPUs, got " +
                        std::to_string(devices.size()));
  tp_comms_.assign(static_cast<std::size_t>(n), nullptr);
  pp_comms_.assign(static_cast<std::size_t>(n), nullptr);
#if COMPUTRON_HAVE_NCCL
  // NVLink multicast (NVLS) can take a shared host's GPUs out of service: always off.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  if (tp > 1) {
    for (int stage = 0; stage < pp; ++stage) {
      std::vector<int> devs;
      for (int r = 0; r < tp; ++r) devs.push_back(devices[static_cast<std::size_t>(stage * tp + r)]);
      std::vector<ncclComm_t> comms(static_cast<std::size_t>(tp));
      NCCL_CHECK(ncclCommInitAll(comms.data(), tp, devs.data()));
      for (int r = 0; r < tp; ++r) tp_comms_[static_cast<std::size_t>(stage * tp + r)] = comms[static_cast<std::size_t>(r)];
    }
  }
  if (pp > 1) {
    for (int r = 0; r < tp; ++r) {
      std::vector<int> devs;
      for (int stage = 0; stage < pp; ++stage) devs.push_back(devices[static_cast<std::size_t>(stage * tp + r)]);
      std::vector<ncclComm_t> comms(static_cast<std::size_t>(pp));
      NCCL_CHECK(ncclCommInitAll(comms.data(), pp, devs.data()));
      for (int stage = 0; stage < pp; ++stage) pp_comms_[static_cast<std::size_t>(stage * tp + r)] = comms[static_cast<std::size_t>(stage)];
    }
  }
#else
  if (n > 1) throw CapacityError("this build has no NCCL: only one GPU per model");
#endif
  // Each stage's TP group over peer access where every pair has it (NVLink): decode-sized
  // all-reduces and the logits' all-gather, and whole-pass CUDA graphs at pp = 1.
  std::vector<std::shared_ptr<PeerGroup>>& stage_peers = peers_;
  stage_peers.assign(static_cast<std::size_t>(pp), nullptr);
  if (tp > 1 && peerCollectivesEnabled(/*by_default=*/true)) {
    for (int stage = 0; stage < pp; ++stage) {
      std::vector<int> devs;
      for (int r = 0; r < tp; ++r) devs.push_back(devices[static_cast<std::size_t>(stage * tp + r)]);
      stage_peers[static_cast<std::size_t>(stage)] = PeerGroup::create(devs, peerGroupBytes(planShard(spec, tp, pp, 0, stage), limits));
    }
  }
  executors_.resize(static_cast<std::size_t>(n));
  std::unique_ptr<Checkpoint> checkpoint;
  if (!weights.checkpoint.empty()) checkpoint = std::make_unique<Checkpoint>(Checkpoint::open(weights.checkpoint));
  for (int stage = 0; stage < pp; ++stage) {
    for (int r = 0; r < tp; ++r) {
      const std::size_t i = static_cast<std::size_t>(stage * tp + r);
      const ShardPlan plan = planShard(spec, tp, pp, r, stage);
      executors_[i] = std::make_unique<ShardExecutor>(plan, extras, limits, devices[i],
                                                      ParallelComms{tp_comms_[i], pp_comms_[i], stage_peers[static_cast<std::size_t>(stage)], nullptr});
      if (checkpoint) {
        // Pinned staging so the upload runs at PCIe rate; the runtime's host store plays this role.
        void* host = nullptr;
        CUDA_CHECK(cudaMallocHost(&host, static_cast<std::size_t>(plan.total_bytes)));
        try {
          loadShard(*checkpoint, plan, std::span<std::byte>(static_cast<std::byte*>(host), static_cast<std::size_t>(plan.total_bytes)));
          executors_[i]->uploadWeights(host);
        } catch (...) {
          cudaFreeHost(host);
          throw;
        }
        CUDA_CHECK(cudaFreeHost(host));
      } else {
        executors_[i]->randomWeights(weights.seed + 7919 * i);
      }
    }
  }
}

ModelGroup::~ModelGroup() {
  executors_.clear();
#if COMPUTRON_HAVE_NCCL
  for (void* c : tp_comms_) if (c) ncclCommDestroy(static_cast<ncclComm_t>(c));
  for (void* c : pp_comms_) if (c) ncclCommDestroy(static_cast<ncclComm_t>(c));
#endif
}

void ModelGroup::onEveryRank(const std::function<void(ShardExecutor&)>& fn) {
  if (executors_.size() == 1) {
    fn(*executors_[0]);
    return;
  }
  std::mutex mutex;
  std::exception_ptr failure;
  std::vector<std::thread> threads;
  for (auto& ex : executors_) {
    threads.emplace_back([&, executor = ex.get()] {
      try {
        CUDA_CHECK(cudaSetDevice(executor->device()));
        fn(*executor);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!failure) failure = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

GenerationResult ModelGroup::generate(const std::vector<GenerationRequest>& requests, const SamplingOptions& sampling,
                                      const LogitsObserver& observer) {
  // Every rank's thread of the last call has joined: a peer group that failed then can be reset.
  for (auto& peer : peers_)
    if (peer && !peer->usable()) peer->reset();
  std::vector<GenerationResult> results(executors_.size());
  std::vector<ShardExecutor*> order;
  for (auto& e : executors_) order.push_back(e.get());
  onEveryRank([&](ShardExecutor& ex) {
    std::size_t i = 0;
    while (order[i] != &ex) ++i;
    results[i] = model::generate(ex, requests, sampling, observer);
  });
  return results[static_cast<std::size_t>((pp_ - 1) * tp_)];
}

std::int64_t ModelGroup::weightBytesPerGpu(int index) const { return executors_[static_cast<std::size_t>(index)]->plan().total_bytes; }

}  // namespace computron::model
