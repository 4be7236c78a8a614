#include "runtime/cuda/model_execution.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>

#if COMPUTRON_HAVE_NCCL
#include <nccl.h>
#endif

#include "runtime/device.h"
#include "runtime/fault_plan.h"
#include "runtime/model/cuda/generation.h"
#include "runtime/model/cuda/kernels.h"
#include "runtime/model/cuda/shard_executor.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/shard_plan.h"

namespace computron::runtime {
namespace {

std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

model::ShardPlan planFor(const ModelDeployment& d, int shard) {
  return model::planShard(d.spec, d.tp, d.pp, shard % d.tp, shard / d.tp);
}

// Tokens of one prefill pass (COMPUTRON_PREFILL_PASS_TOKENS, default 16384, never below the
// maximum context): the activations are sized for this many tokens, not for max_batch full
// contexts; a larger prefill runs as several passes over whole sequences. At 16384 tokens the
// products are as efficient as at any size (bench/results/prefill-2026-12-01.md), and Llama-3-8B's
// activations take about 2.8 GB instead of about 41 GB for 32 x 8192 tokens.
int prefillPassTokens(int max_batch, int max_context) {
  static const int configured = [] {
    const char* v = std::getenv("COMPUTRON_PREFILL_PASS_TOKENS");
    return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : 16384;
  }();
  const std::int64_t all = static_cast<std::int64_t>(max_batch) * max_context;
  return static_cast<int>(std::min<std::int64_t>(all, std::max(configured, max_context)));
}

model::ExecutorLimits limitsFor(const ModelDeployment& d, int max_context) {
  model::ExecutorLimits limits;
  limits.max_batch = std::max(1, d.max_batch);
  limits.max_context = max_context;
  limits.max_prefill_tokens = prefillPassTokens(limits.max_batch, max_context);
  return limits;
}

// A stand-in for `real` in warm-up: the same family, dtype, head dimension and grouping of query
// heads over kv heads, with one kv head per TP rank, one layer per stage, a small FFN and vocab.
// Its passes launch the kernels (the same templates), library calls and collectives the real
// model's do, on a few MiB.
ModelSpec warmUpStandIn(const ModelSpec& real, int tp, int pp) {
  ModelSpec m = real;
  m.name = real.name + "-warm-up";
  const int group = std::max(1, real.num_heads / std::max(1, real.num_kv_heads));
  const int hd = real.headDim();
  m.num_kv_heads = tp;
  m.num_heads = tp * group;
  m.hidden = m.num_heads * hd;
  m.ffn_hidden = 2 * m.hidden;
  m.num_layers = pp;
  m.vocab = 512;
  m.max_positions = std::max(64, std::min(real.max_positions, 2048));
  m.word_embed_proj_dim = 0;
  return m;
}

constexpr int kWarmUpPrompt = 24;  // above the skinny-product limit: prefill takes the cuBLAS path
constexpr int kWarmUpContext = 32;

#if COMPUTRON_HAVE_NCCL
void ncclCheck(ncclResult_t r, const std::string& what) {
  if (r != ncclSuccess) throw std::runtime_error(std::string("NCCL: ") + what + ": " + ncclGetErrorString(r));
}
#endif

}  // namespace

CudaModelExecution::CudaModelExecution(RealExecutionOptions options) : options_(std::move(options)) {}

CudaModelExecution::~CudaModelExecution() { stop(); }

std::string CudaModelExecution::checkpointFor(const ModelDeployment& model) const {
  auto it = options_.checkpoints.find(model.name);
  if (it == options_.checkpoints.end() && !model.weights.empty()) it = options_.checkpoints.find(model.weights);
  return it == options_.checkpoints.end() ? std::string() : it->second;
}

void CudaModelExecution::validate(const EngineConfig& config) const {
  for (std::size_t m = 0; m < config.models.size(); ++m) {
    const ModelDeployment& d = config.models[m];
    const std::string where = "models[" + std::to_string(m) + "] '" + d.name + "'";
    if (d.spec.dtype == DType::kF32) throw ConfigError(where + ": real execution runs F16 or BF16 models, not F32");
#if !COMPUTRON_HAVE_NCCL
    if (d.numShards() > 1) throw ConfigError(where + ": this build has no NCCL, so only TP = PP = 1 runs real models");
#endif
    const std::int64_t hd = d.spec.headDim();
    if (hd != 64 && hd != 128) throw ConfigError(where + ": head dimension " + std::to_string(hd) + " is not supported (64 or 128)");
    for (int s = 0; s < d.numShards(); ++s) {
      const model::ShardPlan plan = planFor(d, s);
      const ShardLayout layout = d.spec.shard(d.tp, d.pp, s % d.tp, s / d.tp);
      if (plan.total_bytes != layout.bytes || plan.prefix_bytes != layout.prefix_bytes ||
          plan.layer_bytes != layout.layer_bytes || plan.suffix_bytes != layout.suffix_bytes)
        throw ConfigError(where + ": shard " + std::to_string(s) + "'s executor layout (" + std::to_string(plan.total_bytes) +
                          " bytes) differs from the runtime's (" + std::to_string(layout.bytes) + ")");
    }
    const std::string folder = checkpointFor(d);
    if (!folder.empty()) model::Checkpoint::open(folder);  // a missing or broken folder fails now
  }
  for (const auto& [name, folder] : options_.checkpoints) {
    bool used = false;
    for (const auto& d : config.models) used = used || d.name == name || d.weights == name;
    if (!used) throw ConfigError("--checkpoint " + name + "=" + folder + ": no model or weights label is called '" + name + "'");
  }
  if (options_.max_context < 2) throw ConfigError("max context must be at least 2 tokens");
}

void CudaModelExecution::fillShard(const ModelDeployment& model, ModelId id, int shard, std::span<std::byte> image) const {
  const model::ShardPlan plan = planFor(model, shard);
  const std::string folder = checkpointFor(model);
  if (!folder.empty()) {
    model::loadShard(model::Checkpoint::open(folder), plan, image);
    return;
  }
  // Random weights: uniform in +-0.0346 (std 0.02) for matrices, 1 for norm weights, 0 for
  // biases, each element a hash of (seed, model, shard, tensor, index), filled on all cores (a
  // 26 GB shard in seconds; the values do not depend on the thread count).
  const DType dtype = plan.spec.dtype;
  const std::int64_t elem = model::elementBytes(dtype);
  const std::uint64_t base = mix(options_.seed * 1000003ull + static_cast<std::uint64_t>(id) * 7919ull + static_cast<std::uint64_t>(shard));
  struct Piece {
    std::byte* out;
    std::int64_t first, count;
    std::uint64_t seed;
    float amplitude, constant;
  };
  std::vector<Piece> pieces;
  constexpr std::int64_t kPiece = 1 << 22;  // elements per work item
  for (std::size_t k = 0; k < plan.tensors.size(); ++k) {
    const auto& t = plan.tensors[k];
    const float amplitude = t.init == model::InitKind::kMatrix ? 0.0346410161513775f : 0.f;
    const float constant = t.init == model::InitKind::kNormWeight ? 1.f : 0.f;
    const std::int64_t n = t.bytes / elem;
    for (std::int64_t first = 0; first < n; first += kPiece)
      pieces.push_back({image.data() + t.offset, first, std::min(kPiece, n - first), mix(base + k), amplitude, constant});
  }
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t p = next++; p < pieces.size(); p = next++) {
      const Piece& pc = pieces[p];
      for (std::int64_t i = pc.first; i < pc.first + pc.count; ++i) {
        float v = pc.constant;
        if (pc.amplitude != 0.f) {
          const double u = static_cast<double>(mix(pc.seed + static_cast<std::uint64_t>(i)) >> 11) * 0x1.0p-53;
          v = pc.amplitude * static_cast<float>(2.0 * u - 1.0);
        }
        const std::uint16_t bits = dtype == DType::kF16 ? model::floatToHalf(v) : model::floatToBf16(v);
        std::memcpy(pc.out + i * elem, &bits, 2);
      }
    }
  };
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
}

void CudaModelExecution::start(const EngineConfig& config, const std::vector<Device*>& devices, CompletionQueue& queue,
                               const Clock& clock) {
  config_ = config;
  queue_ = &queue;
  clock_ = &clock;
  const std::size_t gpus = devices.size();
  // Under mpirun a rank runs the shards on its own GPUs only (devices of other ranks are null); a
  // model whose GPUs span ranks runs on each of them, its groups' communicators made from an id
  // the ranks share (exchange_).
  local_gpu_.assign(gpus, false);
  for (std::size_t g = 0; g < gpus; ++g) local_gpu_[g] = devices[g] != nullptr;
  auto is_local = [&](GpuId g) { return static_cast<std::size_t>(g) < gpus && local_gpu_[static_cast<std::size_t>(g)]; };
  local_.assign(config_.models.size(), false);
  for (std::size_t m = 0; m < config_.models.size(); ++m) {
    const ModelDeployment& d = config_.models[m];
    int here = 0;
    for (GpuId g : d.gpus) here += is_local(g);
    if (here != 0 && here != d.numShards() && !exchange_)
      throw ConfigError("real execution: model " + d.name + " has GPUs in more than one process; its TP and PP groups " +
                        "must be one process's");
    local_[m] = here != 0;
  }
  // One workspace per GPU, as large as the largest shard placed there needs.
  workspace_bytes_.assign(gpus, 0);
  for (std::size_t m = 0; m < config_.models.size(); ++m) {
    const ModelDeployment& d = config_.models[m];
    if (!local_[m]) continue;
    for (int s = 0; s < d.numShards(); ++s) {
      const GpuId gpu = d.gpus[static_cast<std::size_t>(s)];
      if (!is_local(gpu)) continue;
      const auto g = static_cast<std::size_t>(gpu);
      workspace_bytes_[g] = std::max(workspace_bytes_[g], model::ShardExecutor::workspaceBytes(planFor(d, s), limitsFor(d, options_.max_context)));
    }
  }
  workspaces_.assign(gpus, nullptr);
  for (std::size_t g = 0; g < gpus; ++g) {
    if (workspace_bytes_[g] == 0) continue;
    CUDA_CHECK(cudaSetDevice(static_cast<int>(g) + options_.ordinal_shift));
    std::size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (workspace_bytes_[g] > static_cast<std::int64_t>(free_bytes))
      throw ConfigError("real execution: GPU " + std::to_string(g) + " needs " + std::to_string(workspace_bytes_[g] >> 20) +
                        " MiB of KV cache and activations (max_batch x max context " + std::to_string(options_.max_context) +
                        ") beside its weight pool but has " + std::to_string(free_bytes >> 20) +
                        " MiB free; lower the weight budget, max_batch or --max-context");
    CUDA_CHECK(cudaMalloc(&workspaces_[g], static_cast<std::size_t>(workspace_bytes_[g])));
  }

  // Communicators: one set per distinct (tp, pp, GPUs) group, shared by the models placed alike
  // (a GPU runs one batch at a time, so their collectives never interleave).
  std::map<std::tuple<int, int, std::vector<GpuId>>, std::vector<std::pair<void*, void*>>> groups;
  std::map<std::pair<std::tuple<int, int, std::vector<GpuId>>, int>, std::shared_ptr<model::PeerGroup>> peers;
  std::map<std::tuple<int, int, std::vector<GpuId>>, std::shared_ptr<model::CommGuard>> guards;
#if COMPUTRON_HAVE_NCCL
  setenv("NCCL_NVLS_ENABLE", "0", 1);  // NVLink multicast stays off on shared machines
#endif
  for (std::size_t m = 0; m < config_.models.size(); ++m) {
    const ModelDeployment& d = config_.models[m];
    if (!local_[m]) continue;
    const int n = d.numShards();
    auto key = std::make_tuple(d.tp, d.pp, d.gpus);
    bool spans = false;
    for (GpuId g : d.gpus) spans = spans || !is_local(g);
    auto found = groups.find(key);
    if (found == groups.end()) {
      std::vector<std::pair<void*, void*>> comms(static_cast<std::size_t>(n), {nullptr, nullptr});
      // One guard for every communicator of a placement that spans processes.
      auto guard = spans ? std::make_shared<model::CommGuard>() : nullptr;
      guards[key] = guard;
      std::string placement = "tp" + std::to_string(d.tp) + "pp" + std::to_string(d.pp) + "@";
      for (std::size_t i = 0; i < d.gpus.size(); ++i) placement += (i ? "," : "") + std::to_string(d.gpus[i]);
      if (d.tp > 1) {
        for (int stage = 0; stage < d.pp; ++stage) {
          std::vector<GpuId> members;
          for (int r = 0; r < d.tp; ++r) members.push_back(d.gpus[static_cast<std::size_t>(stage * d.tp + r)]);
          const std::vector<void*> c = makeGroup("tp", placement, members, guard);
          for (int r = 0; r < d.tp; ++r) comms[static_cast<std::size_t>(stage * d.tp + r)].first = c[static_cast<std::size_t>(r)];
        }
      }
      if (d.pp > 1) {
        for (int r = 0; r < d.tp; ++r) {
          std::vector<GpuId> members;
          for (int stage = 0; stage < d.pp; ++stage) members.push_back(d.gpus[static_cast<std::size_t>(stage * d.tp + r)]);
          const std::vector<void*> c = makeGroup("pp", placement, members, guard);
          for (int stage = 0; stage < d.pp; ++stage) comms[static_cast<std::size_t>(stage * d.tp + r)].second = c[static_cast<std::size_t>(stage)];
        }
      }
      found = groups.emplace(key, std::move(comms)).first;
      // The group's TP collectives over peer access, sized for every model placed alike (inside
      // one process only: peer access does not cross processes).
      if (d.tp > 1 && !spans && model::peerCollectivesEnabled(/*by_default=*/false)) {
        for (int stage = 0; stage < d.pp; ++stage) {
          std::int64_t bytes = 0;
          std::vector<int> devs;
          for (int r = 0; r < d.tp; ++r) devs.push_back(static_cast<int>(d.gpus[static_cast<std::size_t>(stage * d.tp + r)]) + options_.ordinal_shift);
          for (const ModelDeployment& other : config_.models)
            if (other.tp == d.tp && other.pp == d.pp && other.gpus == d.gpus)
              bytes = std::max(bytes, model::peerGroupBytes(planFor(other, stage * d.tp), limitsFor(other, options_.max_context)));
          peers[{key, stage}] = model::PeerGroup::create(devs, bytes);
        }
      }
    }
    const model::ArchExtras extras = [&] {
      const std::string folder = checkpointFor(d);
      return folder.empty() ? model::archExtrasOf(d.spec) : model::archExtrasFromConfig(folder, d.spec);
    }();
    for (int s = 0; s < n; ++s) {
      if (!is_local(d.gpus[static_cast<std::size_t>(s)])) continue;
      const auto g = static_cast<std::size_t>(d.gpus[static_cast<std::size_t>(s)]);
      model::ExecutorLimits limits = limitsFor(d, options_.max_context);
      limits.workspace = workspaces_[g];
      const auto& c = found->second[static_cast<std::size_t>(s)];
      const auto peer = peers.find({key, s / d.tp});
      const model::ParallelComms comms{c.first, c.second, peer == peers.end() ? nullptr : peer->second, guards.at(key)};
      parallel_comms_[{static_cast<ModelId>(m), s}] = c;
      tp_peers_[{static_cast<ModelId>(m), s}] = comms.tp_peer;
      guards_[{static_cast<ModelId>(m), s}] = comms.guard;
      sessions_[{static_cast<ModelId>(m), s}] = SessionState{};
      executors_[{static_cast<ModelId>(m), s}] =
          std::make_unique<model::ShardExecutor>(planFor(d, s), extras, limits, static_cast<int>(g) + options_.ordinal_shift, comms);
    }
  }
  if (!options_.token_log.empty()) {
    token_log_.open(options_.token_log, std::ios::trunc);
    if (!token_log_) throw ConfigError("--token-log: cannot write " + options_.token_log);
  }
  warmUp();
  for (std::size_t g = 0; g < gpus; ++g) {
    auto w = std::make_unique<Worker>();
    w->ordinal = static_cast<int>(g) + options_.ordinal_shift;
    Worker* raw = w.get();
    // Another rank's GPU gets no thread (and so no CUDA context from this process).
    if (devices[g] != nullptr) w->thread = std::thread([this, raw] { run(*raw); });
    workers_.push_back(std::move(w));
  }
}

std::vector<void*> CudaModelExecution::makeGroup(const char* kind, const std::string& placement, const std::vector<GpuId>& gpus,
                                                 const std::shared_ptr<model::CommGuard>& guard) {
  const int n = static_cast<int>(gpus.size());
  std::vector<void*> out(gpus.size(), nullptr);
  auto is_local = [&](GpuId g) { return static_cast<std::size_t>(g) < local_gpu_.size() && local_gpu_[static_cast<std::size_t>(g)]; };
  int here = 0;
  for (GpuId g : gpus) here += is_local(g);
  if (here == 0) return out;  // another process's group of a model spanning processes
#if COMPUTRON_HAVE_NCCL
  std::vector<ncclComm_t> c(gpus.size(), nullptr);
  if (here == n) {
    std::vector<int> devs;
    for (GpuId g : gpus) devs.push_back(static_cast<int>(g) + options_.ordinal_shift);
    ncclCheck(ncclCommInitAll(c.data(), n, devs.data()), std::string("ncclCommInitAll (") + kind + ")");
  } else {
    // Spans processes: the process of the first GPU makes the id, the others get it from it.
    // The key names the group within its placement, so two placements sharing GPUs never
    // share an id.
    std::string key = std::string(kind) + ":" + placement;
    for (GpuId g : gpus) key += ":" + std::to_string(g);
    ncclUniqueId id{};
    std::string bytes;
    if (is_local(gpus.front())) {
      ncclCheck(ncclGetUniqueId(&id), "ncclGetUniqueId");
      bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
    }
    {
      std::lock_guard<std::mutex> lock(spanning_mutex_);
      for (GpuId g : gpus)
        if (lost_gpus_.count(g) > 0)
          throw ConfigError("real execution: collective group " + key + " includes GPU " + std::to_string(g) + ", which was lost");
    }
    bytes = exchange_(key, gpus, bytes);
    if (bytes.size() != sizeof id)
      throw model::DeviceError("real execution: the id of collective group " + key + " has " + std::to_string(bytes.size()) +
                        " bytes, not " + std::to_string(sizeof id));
    std::memcpy(&id, bytes.data(), sizeof id);
    ncclCheck(ncclGroupStart(), "ncclGroupStart");
    for (int r = 0; r < n; ++r) {
      if (!is_local(gpus[static_cast<std::size_t>(r)])) continue;
      CUDA_CHECK(cudaSetDevice(static_cast<int>(gpus[static_cast<std::size_t>(r)]) + options_.ordinal_shift));
      ncclCheck(ncclCommInitRank(&c[static_cast<std::size_t>(r)], n, id, r), std::string("ncclCommInitRank (") + key + ")");
    }
    ncclCheck(ncclGroupEnd(), std::string("ncclCommInitRank (") + key + ")");
  }
  Spanning spanning;
  for (std::size_t r = 0; r < gpus.size(); ++r) {
    out[r] = c[r];
    if (c[r] == nullptr) continue;
    if (guard) {
      spanning.comms.push_back(c[r]);  // destroyed (or aborted) through spanning_
    } else {
      comms_.push_back(c[r]);
    }
  }
  if (guard) {
    spanning.gpus = gpus;
    spanning.guard = guard;
    std::lock_guard<std::mutex> lock(spanning_mutex_);
    spanning_.push_back(std::move(spanning));
  }
#else
  (void)kind;
  (void)guard;
  (void)n;  // the executors refuse TP or PP > 1 without NCCL
#endif
  return out;
}

int CudaModelExecution::firstLocalShard(const ModelDeployment& model) const {
  for (int s = 0; s < model.numShards(); ++s) {
    const auto g = static_cast<std::size_t>(model.gpus[static_cast<std::size_t>(s)]);
    if (g < local_gpu_.size() && local_gpu_[g]) return s;
  }
  throw std::logic_error("model execution: model " + model.name + " has no shard here");
}

void CudaModelExecution::gpusLost(const std::vector<GpuId>& gone) {
  std::lock_guard<std::mutex> lock(spanning_mutex_);
  lost_gpus_.insert(gone.begin(), gone.end());  // groups not built yet refuse them (makeGroup)
  // Every placement with a group that includes a lost GPU loses all its groups here: an
  // executor that stops at the aborted guard must not leave a partner of this process waiting in
  // another of the placement's communicators (its TP group inside the process, say).
  std::set<model::CommGuard*> hit;
  for (const Spanning& group : spanning_)
    for (GpuId g : gone)
      if (std::find(group.gpus.begin(), group.gpus.end(), g) != group.gpus.end()) hit.insert(group.guard.get());
  for (model::CommGuard* guard : hit) {
    // Exclusive: no executor is inside an NCCL call on these communicators, and none starts one
    // afterwards. Aborting ends the kernels of a collective waiting for the lost GPU.
    std::unique_lock<std::shared_mutex> exclusive(guard->mutex);
    if (!guard->aborted) {
      guard->aborted = true;
      guard->reason = "GPU " + std::to_string(gone.front()) + (gone.size() > 1 ? " and others" : "") +
                      " of another process were lost";
    }
    for (Spanning& group : spanning_) {
      if (group.guard.get() != guard) continue;
#if COMPUTRON_HAVE_NCCL
      for (void* c : group.comms) ncclCommAbort(static_cast<ncclComm_t>(c));
#endif
      group.comms.clear();
    }
  }
}

// What a first batch pays beyond a warm one (about 250 ms on H200 before this), paid here instead,
// without any weights resident:
//  * For every distinct placement (tp, pp, GPUs) and shape family (family, dtype, head dimension,
//    query heads per kv head), a stand-in model (warmUpStandIn) with random weights of its own
//    runs one prefill of kWarmUpPrompt tokens (cuBLAS products and batched attention) and one
//    decode pass (the skinny products with fused epilogues, split decode attention, sampling) on
//    every rank at once, over the placement's own NCCL communicators. That loads the decoder
//    kernels on each GPU where CUDA loads modules lazily, at first launch (the computron binary
//    asks for eager loading, see app/main.cpp, unless the environment says otherwise), initialises
//    cuBLAS/cuBLASLt in each GPU's context, and makes NCCL connect the channels of the all-reduce,
//    all-gather, broadcast and send/recv the real passes use (NCCL connects at first use).
//  * Every real executor runs its own matrix products once at a few prefill sizes over its
//    workspace (ShardExecutor::warmProducts), so cuBLAS has chosen and loaded the kernels for the
//    real shapes.
// Not warmed: single-GPU decode graphs (captured per batch shape at first use; they hold the
// weights' addresses) and cuBLAS kernels for row counts between the sizes warmed that the
// heuristic gives a kernel of their own. The sizes are dense (kWarmProductRows): with only 64,
// 256 and 1024 rows warmed, a first batch of 6 x 64 prompt tokens on OPT-13B took 29 ms
// against 24 ms for a warm batch of 8 x 64 (cuBLAS loading the kernels it picked for 384 rows).
// COMPUTRON_WARMUP=0 turns it off (to measure what it saves).
namespace {
// Prefill row counts (tokens of a pass) whose products the executors run once at start: every
// multiple of 64 to 1,024 (batches of 64-token prompts; first batches of 5 x 64 and 7 x 64 tokens
// on OPT-13B ran 13-83 ms over their warm time when only powers of two were warmed), then powers
// of two and 1.5 times them to 16,384.
const std::vector<int> kWarmProductRows = [] {
  std::vector<int> rows = {24, 32, 48};
  for (int r = 64; r <= 1024; r += 64) rows.push_back(r);
  for (int r : {1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384}) rows.push_back(r);
  return rows;
}();
}  // namespace

void CudaModelExecution::warmUp() {
  const char* env = std::getenv("COMPUTRON_WARMUP");
  if (env != nullptr && std::string(env) == "0") return;
  const auto started = std::chrono::steady_clock::now();
  std::set<std::tuple<int, int, std::vector<GpuId>, int, int, int, int>> done;
  for (std::size_t m = 0; m < config_.models.size(); ++m) {
    const ModelDeployment& d = config_.models[m];
    if (!local_[m]) continue;
    const int group = std::max(1, d.spec.num_heads / std::max(1, d.spec.num_kv_heads));
    if (!done.insert({d.tp, d.pp, d.gpus, static_cast<int>(d.spec.arch), static_cast<int>(d.spec.dtype), d.spec.headDim(), group})
             .second)
      continue;
    // A placement spanning processes is not warmed with stand-ins: a stand-in that failed to
    // build on one process would leave the others waiting in its collectives. Its first batch
    // connects NCCL (the products are still warmed below).
    if (guards_.at({static_cast<ModelId>(m), firstLocalShard(d)})) continue;
    // Built first, all of them: a failure then leaves no rank waiting in a collective.
    std::vector<std::unique_ptr<model::ShardExecutor>> stand_ins;
    try {
      const ModelSpec spec = warmUpStandIn(d.spec, d.tp, d.pp);
      model::ExecutorLimits limits;
      limits.max_batch = 1;
      limits.max_context = kWarmUpContext;
      for (int s = 0; s < d.numShards(); ++s) {
        const int g = static_cast<int>(d.gpus[static_cast<std::size_t>(s)]) + options_.ordinal_shift;
        if (!local_gpu_[static_cast<std::size_t>(d.gpus[static_cast<std::size_t>(s)])]) continue;  // another process's shard
        const auto nccl = parallel_comms_.at({static_cast<ModelId>(m), s});
        const model::ParallelComms comms{nccl.first, nccl.second, tp_peers_.at({static_cast<ModelId>(m), s}),
                                         guards_.at({static_cast<ModelId>(m), s})};
        CUDA_CHECK(cudaSetDevice(g));
        auto ex = std::make_unique<model::ShardExecutor>(model::planShard(spec, d.tp, d.pp, s % d.tp, s / d.tp),
                                                         model::archExtrasOf(d.spec), limits, g,
                                                         comms);
        ex->randomWeights(static_cast<std::uint64_t>(s) + 1);
        stand_ins.push_back(std::move(ex));
      }
    } catch (const std::exception& e) {
      std::cerr << "model execution: warm-up of " << d.name << " skipped (" << e.what() << "); its first batch pays for it\n";
      continue;
    }
    std::mutex mutex;
    std::string failure;
    std::vector<std::thread> threads;
    for (auto& ex : stand_ins) {
      threads.emplace_back([&, executor = ex.get()] {
        try {
          CUDA_CHECK(cudaSetDevice(executor->device()));
          model::GenerationRequest request;
          for (int i = 0; i < kWarmUpPrompt; ++i) request.prompt.push_back((7 * i + 1) % 512);
          request.max_new_tokens = 2;
          model::generate(*executor, {request}, model::SamplingOptions{});
          executor->synchronize();
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mutex);
          if (failure.empty()) failure = e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    stand_ins.clear();
    if (!failure.empty()) std::cerr << "model execution: warm-up of " << d.name << " failed (" << failure << ")\n";
  }
  // The real shapes' products, at a few prefill sizes, one executor at a time (they share their
  // GPU's workspace); once per GPU and shape (cuBLAS loads its kernels per GPU context).
  std::set<std::tuple<int, std::string, int, int, int>> shapes;
  for (auto& [key, ex] : executors_) {
    const ModelDeployment& d = config_.models[static_cast<std::size_t>(key.first)];
    if (!shapes.insert({ex->device(), d.spec.name, d.tp, d.pp, key.second}).second) continue;
    try {
      CUDA_CHECK(cudaSetDevice(ex->device()));
      ex->warmProducts(kWarmProductRows);
    } catch (const std::exception& e) {
      std::cerr << "model execution: warm-up of the products of " << config_.models[static_cast<std::size_t>(key.first)].name
                << " failed (" << e.what() << ")\n";
    }
  }
  warm_up_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

void CudaModelExecution::submit(ExecPart part) {
  const auto g = static_cast<std::size_t>(part.gpu);
  if (g >= workers_.size()) throw std::logic_error("model execution: no GPU " + std::to_string(part.gpu));
  workers_[g]->jobs.push(std::move(part));
}

void CudaModelExecution::stop() {
  if (stopped_) return;
  stopped_ = true;
  for (auto& w : workers_) w->jobs.stop();
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
  workers_.clear();
  executors_.clear();
  tp_peers_.clear();
#if COMPUTRON_HAVE_NCCL
  for (void* c : comms_) ncclCommDestroy(static_cast<ncclComm_t>(c));
#endif
  comms_.clear();
  {
    std::lock_guard<std::mutex> lock(spanning_mutex_);
#if COMPUTRON_HAVE_NCCL
    for (Spanning& group : spanning_)
      for (void* c : group.comms) ncclCommDestroy(static_cast<ncclComm_t>(c));
#endif
    spanning_.clear();
  }
  for (std::size_t g = 0; g < workspaces_.size(); ++g) {
    if (workspaces_[g] == nullptr) continue;
    cudaSetDevice(static_cast<int>(g) + options_.ordinal_shift);
    cudaFree(workspaces_[g]);
  }
  workspaces_.clear();
}

void CudaModelExecution::run(Worker& worker) {
  if (cudaSetDevice(worker.ordinal) != cudaSuccess) return;
  ExecPart part;
  while (worker.jobs.pop(part)) runPart(part);
}

void CudaModelExecution::runPart(const ExecPart& part) {
  DeviceEvent ev;
  ev.kind = DeviceEvent::Kind::kExecDone;
  ev.batch = part.batch;
  ev.path = part.part;
  ev.gpu = part.gpu;
  ev.start = clock_->now();
  bool gate_failed = false;
  if (part.step) {
    runStep(part, ev);
    ev.time = clock_->now();
    queue_->push(std::move(ev));
    return;
  }
  try {
    model::ShardExecutor& ex = *executors_.at({part.model, part.shard});
    ex.useDeviceWeights(part.weights);
    if (part.gate) {
      ex.setSegmentWait([gate = part.gate, &gate_failed](int segment) {
        if (!gate->wait(segment)) gate_failed = true;
      });
    } else {
      ex.setSegmentWait(nullptr);
    }
    const int vocab = config_.models[static_cast<std::size_t>(part.model)].spec.vocab;
    std::vector<model::GenerationRequest> requests;
    std::vector<std::shared_ptr<const RequestPayload>> payloads;
    for (const Request& r : part.requests) {
      model::GenerationRequest g;
      g.max_new_tokens = std::max(1, r.output_tokens);
      // A served request brings its prompt and sampling; a replayed one gets a synthetic prompt
      // of its length and greedy decoding.
      if (auto payload = options_.tokens ? options_.tokens->find(r.id) : nullptr) {
        g.prompt.assign(payload->prompt.begin(), payload->prompt.end());
        model::SamplingOptions own;
        own.temperature = payload->temperature;
        own.top_k = payload->top_k;
        own.top_p = payload->top_p;
        own.seed = payload->seed;
        g.sampling = own;
        g.stop_tokens.assign(payload->stop_ids.begin(), payload->stop_ids.end());
        g.cancelled = &payload->cancelled;
        payloads.push_back(std::move(payload));  // keeps the flag alive while the part runs
      }
      if (g.prompt.empty()) {
        const int prompt = std::max(1, r.prompt_tokens);
        for (int i = 0; i < prompt; ++i)
          g.prompt.push_back(static_cast<int>(mix(static_cast<std::uint64_t>(r.id) * 1000003ull + static_cast<std::uint64_t>(i)) %
                                              static_cast<std::uint64_t>(vocab)));
      }
      requests.push_back(std::move(g));
    }
    model::TokenObserver deliver;
    if (options_.tokens) {
      deliver = [&](int step, const std::vector<int>& active, const std::vector<int>& next) {
        const Nanos now = clock_->now();
        std::vector<TokenDelivery> out;
        out.reserve(active.size());
        for (std::size_t i = 0; i < active.size(); ++i) {
          const auto r = static_cast<std::size_t>(active[i]);
          const auto& stops = requests[r].stop_tokens;
          out.push_back({part.requests[r].id, step, next[i], std::find(stops.begin(), stops.end(), next[i]) != stops.end(), now});
        }
        options_.tokens->deliver(std::move(out));
      };
    }
    model::SamplingOptions sampling;  // greedy, no end-of-sequence stop
    const model::GenerationResult generated =
        model::generate(ex, requests, sampling, nullptr, [&](int) { ev.step_end.push_back(clock_->now()); }, deliver);
    ex.setSegmentWait(nullptr);
    if (gate_failed) {
      ev.ok = false;
      ev.error = "its weights did not all arrive: " + part.gate->error();
    }
    // An injected failed batch: the part ran (the ranks of a group keep issuing the same
    // collectives), then reports failure, as on the host device.
    if (options_.faults) {
      if (auto failure = options_.faults->failBatch(part.model, part.part); failure && ev.ok) {
        ev.ok = false;
        ev.error = *failure;
      }
    }
    // Served requests' tokens only: a failed part's requests are retried, and log then.
    if (token_log_.is_open() && part.shard == 0 && ev.ok) {
      std::ostringstream lines;
      const std::string& name = config_.models[static_cast<std::size_t>(part.model)].name;
      for (std::size_t r = 0; r < part.requests.size() && r < generated.tokens.size(); ++r) {
        lines << "request " << part.requests[r].id << " model " << name << " tokens";
        for (int t : generated.tokens[r]) lines << ' ' << t;
        lines << '\n';
      }
      std::lock_guard<std::mutex> lock(token_log_mutex_);
      token_log_ << lines.str() << std::flush;
    }
  } catch (const std::exception& e) {
    ev.ok = false;
    ev.error = "model " + config_.models[static_cast<std::size_t>(part.model)].name + " shard " + std::to_string(part.shard) +
               " on GPU " + std::to_string(part.gpu) + ": " + e.what();
  }
  ev.time = clock_->now();
  queue_->push(std::move(ev));
}

// A session's step: a prefill of the joining sequences into free KV-cache slots (a rejoin after
// preemption recomputes its prompt and the tokens it had made), or one decode pass over the
// sequences named, each at its own slot and position; sampled tokens shared with every rank.
// Every rank of the model runs the same step, assigning slots in the same order.
// A served request (its payload in the TokenChannel, `computron serve`) brings its prompt ids and
// sampling, each row drawing from its own (seed, token index) stream as in a request-level batch,
// and its tokens are delivered to the channel as the step ends (by the last stage's tensor rank
// 0). A stop id or a cancelled client ends the sequence with this step (DeviceEvent::stopped, sent
// to rank 0 with the completion under mpirun). Replayed requests keep the synthetic prompt of their length and greedy decoding.
void CudaModelExecution::runStep(const ExecPart& part, DeviceEvent& ev) {
  const StepCommand& cmd = *part.step;
  const ModelDeployment& d = config_.models[static_cast<std::size_t>(part.model)];
  try {
    model::ShardExecutor& ex = *executors_.at({part.model, part.shard});
    SessionState& ss = sessions_.at({part.model, part.shard});
    if (ss.id != cmd.batch) {
      // A new session: the cache of the previous one (another model may have used the
      // workspace since) holds nothing this one reads.
      ss.id = cmd.batch;
      ss.seqs.clear();
      ss.free_slots.clear();
      for (int slot = std::max(1, d.max_batch) - 1; slot >= 0; --slot) ss.free_slots.push_back(slot);
    }
    for (RequestId id : cmd.retired) {
      // Ended for good (never a preempted sequence): its tokens are not needed again. This rank
      // may not have seen it end (a client's cancel is seen where the server runs).
      ss.history.erase(id);
      auto it = ss.seqs.find(id);
      if (it == ss.seqs.end()) continue;
      ss.free_slots.push_back(it->second.slot);
      ss.seqs.erase(it);
    }
    ex.useDeviceWeights(part.weights);
    ex.setSegmentWait(nullptr);
    const int vocab = d.spec.vocab;
    model::StepBatch batch;
    std::vector<RequestId> order;
    if (!cmd.prefill.empty()) {
      batch.prefill = true;
      for (const StepSequence& s : cmd.prefill) {
        if (ss.free_slots.empty())
          throw model::CapacityError("no free KV-cache slot for request " + std::to_string(s.request.id) + " (max_batch " +
                                     std::to_string(d.max_batch) + ")");
        if (s.context + (s.request.output_tokens - s.generated) > options_.max_context)
          throw model::CapacityError("request " + std::to_string(s.request.id) + " needs " +
                                     std::to_string(s.context + s.request.output_tokens - s.generated) +
                                     " tokens of context, over --max-context " + std::to_string(options_.max_context));
        const int slot = ss.free_slots.back();
        ss.free_slots.pop_back();
        std::vector<int>& tokens = ss.history[s.request.id];
        if (tokens.empty() && options_.tokens)
          if (auto payload = options_.tokens->find(s.request.id); payload && !payload->prompt.empty())
            tokens.assign(payload->prompt.begin(), payload->prompt.end());
        if (tokens.empty()) {
          const int prompt = std::max(1, s.request.prompt_tokens);
          for (int i = 0; i < prompt; ++i)
            tokens.push_back(static_cast<int>(mix(static_cast<std::uint64_t>(s.request.id) * 1000003ull + static_cast<std::uint64_t>(i)) %
                                              static_cast<std::uint64_t>(vocab)));
        }
        // The engine's context counts the prompt and every token made; what this rank kept of
        // them (all, unless it never saw the sequence before) is recomputed.
        tokens.resize(static_cast<std::size_t>(std::max(1, s.context)), tokens.back());
        batch.seq_begin.push_back(static_cast<int>(batch.tokens.size()));
        batch.seq_len.push_back(static_cast<int>(tokens.size()));
        batch.seq_slot.push_back(slot);
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          batch.tokens.push_back(tokens[i]);
          batch.slots.push_back(slot);
          batch.positions.push_back(static_cast<int>(i));
        }
        batch.last_token.push_back(static_cast<int>(batch.tokens.size()) - 1);
        ss.seqs[s.request.id] = SessionState::Seq{slot, 0};
        order.push_back(s.request.id);
      }
    } else {
      for (const StepSequence& s : cmd.decode) {
        auto it = ss.seqs.find(s.request.id);
        if (it == ss.seqs.end())
          throw std::logic_error("decode step names request " + std::to_string(s.request.id) + ", which is not in the session");
        batch.tokens.push_back(it->second.next);
        batch.slots.push_back(it->second.slot);
        batch.positions.push_back(std::max(0, s.context - 1));  // the token made last is fed in now
        batch.last_token.push_back(static_cast<int>(batch.tokens.size()) - 1);
        order.push_back(s.request.id);
      }
    }
    ex.forward(batch);
    // Served rows sample as their request asks. Every rank of the group sees the same payloads
    // (one process, one channel), so all of them take the same sampling call.
    const auto& seqs = cmd.prefill.empty() ? cmd.decode : cmd.prefill;
    std::vector<std::shared_ptr<const RequestPayload>> payloads(order.size());
    bool served = false;
    if (options_.tokens)
      for (std::size_t i = 0; i < order.size(); ++i) {
        payloads[i] = options_.tokens->find(order[i]);
        served = served || payloads[i] != nullptr;
      }
    std::vector<int> next;
    if (served) {
      std::vector<model::RowSampling> rows(order.size());
      for (std::size_t i = 0; i < order.size(); ++i) {
        if (const auto& p = payloads[i]) rows[i] = {p->temperature, p->top_k, p->top_p, p->seed};
        rows[i].step = seqs[i].generated;
      }
      next = ex.sampleRowsAndShare(rows, static_cast<int>(cmd.step));
    } else {
      next = ex.sampleAndShare(static_cast<int>(order.size()), 0.f, 0, 1.f, 0, static_cast<int>(cmd.step));
    }
    const model::ShardPlan& plan = ex.plan();
    if (served && plan.has_lm_head && plan.tp_rank == 0) {
      const Nanos now = clock_->now();
      std::vector<TokenDelivery> out;
      for (std::size_t i = 0; i < order.size(); ++i) {
        const auto& p = payloads[i];
        if (!p) continue;
        const bool stop = std::find(p->stop_ids.begin(), p->stop_ids.end(), next[i]) != p->stop_ids.end();
        out.push_back({order[i], seqs[i].generated, next[i], stop, now});
      }
      options_.tokens->deliver(std::move(out));
    }
    // A served sequence that sampled a stop id, or whose client has gone, ends with this step: the
    // engine retires it (StepResult::stopped). Every rank has the same tokens; the backend merges
    // the ranks' lists.
    std::vector<bool> stopped(order.size(), false);
    for (std::size_t i = 0; i < order.size(); ++i) {
      const auto& p = payloads[i];
      if (p && (std::find(p->stop_ids.begin(), p->stop_ids.end(), next[i]) != p->stop_ids.end() ||
                p->cancelled.load(std::memory_order_relaxed))) {
        ev.stopped.push_back(order[i]);
        stopped[i] = true;
      }
    }
    for (std::size_t i = 0; i < order.size(); ++i) {
      const RequestId id = order[i];
      ss.seqs[id].next = next[i];
      std::vector<int>& tokens = ss.history[id];
      tokens.push_back(next[i]);
      // A sequence whose last token this was leaves the session: forget its tokens now (the
      // session may end without naming it as retired). So does one that stopped early; the engine
      // retires it before the next step.
      const StepSequence& s = cmd.prefill.empty() ? cmd.decode[i] : cmd.prefill[i];
      if (stopped[i] || s.generated + 1 >= std::max(1, s.request.output_tokens)) ss.history.erase(id);
    }
  } catch (const std::exception& e) {
    ev.ok = false;
    ev.error = "model " + d.name + " shard " + std::to_string(part.shard) + " on GPU " + std::to_string(part.gpu) +
               ", step " + std::to_string(cmd.step) + ": " + e.what();
  }
}

}  // namespace computron::runtime
