#include "runtime/model/cuda/shard_executor.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <cstdlib>

#include "runtime/model/cuda/kernels.h"

namespace computron::model {
namespace {

cudaDataType cudaType(DType d) { return d == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF; }

std::int64_t alignUp(std::int64_t v) { return (v + 255) / 256 * 256; }

constexpr std::int64_t kCublasWorkspaceBytes = 32LL << 20;

int envInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

std::string gib(std::int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / static_cast<double>(1LL << 30));
  return buf;
}

// Whether prefill attention runs as the fused kernel (the default) or as cuBLAS products around a
// causal softmax over materialised scores (COMPUTRON_PREFILL_ATTN=cublas, kept for comparison and
// as the path for head dimensions the kernel lacks). Read once: the workspace layout depends on it.
bool fusedPrefillAttention(const ShardPlan& plan) {
  static const bool env_fused = [] {
    const char* v = std::getenv("COMPUTRON_PREFILL_ATTN");
    return v == nullptr || std::string(v) != "cublas";
  }();
  return env_fused && kernels::prefillAttentionSupports(static_cast<int>(plan.spec.headDim()));
}

// Sizes of every workspace buffer, in allocation order; shared by workspaceBytes and the carving.
struct WorkspaceLayout {
  std::int64_t cache_layer_elems = 0, max_tokens = 0, max_prompt = 0;
  std::vector<std::int64_t> sizes;
  std::int64_t total = 0;
};

WorkspaceLayout layoutFor(const ShardPlan& plan, const ExecutorLimits& limits) {
  WorkspaceLayout l;
  const std::int64_t elem = elementBytes(plan.spec.dtype);
  const std::int64_t hd = plan.spec.headDim(), h = plan.spec.hidden;
  const std::int64_t batch = limits.max_batch, ctx = limits.max_context;
  l.max_tokens = limits.max_prefill_tokens > 0 ? limits.max_prefill_tokens : batch * ctx;
  l.max_prompt = std::min<std::int64_t>(ctx, l.max_tokens);
  l.cache_layer_elems = batch * ctx * plan.local_kv_heads * hd;
  const std::int64_t tokens = l.max_tokens;
  const std::int64_t qkv = (plan.local_heads + 2 * plan.local_kv_heads) * hd, q = plan.local_heads * hd;
  const ModelFamily& family = plan.spec.family();
  const std::int64_t up = family.upMatrices() * plan.local_ffn;
  const std::int64_t heads = plan.local_heads;
  const int max_tp = plan.tp;
  const bool fused = fusedPrefillAttention(plan);
  const std::int64_t max_prompt_sq = fused ? 0 : l.max_prompt * l.max_prompt;
  const std::int64_t attention_table =
      fused ? 4 * static_cast<std::int64_t>(sizeof(int)) * kernels::prefillAttentionMaxTiles(static_cast<int>(tokens), static_cast<int>(batch))
            : std::max(1, plan.num_layers) * batch * 6 * heads * static_cast<std::int64_t>(sizeof(void*));
  l.sizes = {
      plan.num_layers * l.cache_layer_elems * elem,             // k cache
      plan.num_layers * l.cache_layer_elems * elem,             // v cache
      tokens * h * 4,                                           // residual
      tokens * h * 4,                                           // projection
      tokens * h * elem,                                        // normed
      tokens * qkv * elem,                                      // qkv
      tokens * q * elem,                                        // q
      tokens * q * elem,                                        // attention
      tokens * up * elem,                                       // mlp
      family.mlp == MlpKind::kSwiGlu ? tokens * plan.local_ffn * elem : 0,  // activated
      heads * max_prompt_sq * 4,                                // scores (cuBLAS prefill attention)
      heads * max_prompt_sq * elem,                             // probs
      batch * h * elem,                                         // last normed
      batch * plan.local_vocab * 4,                             // local logits
      static_cast<std::int64_t>(max_tp) * batch * plan.local_vocab * 4,  // gathered logits
      batch * plan.spec.vocab * 4,                              // logits
      (4 * tokens + batch) * 4,                                 // meta
      batch * 4,                                                // sampled
      attention_table,                                          // prefill tiles, or pointer arrays (cuBLAS)
      4 * kernels::decodeAttentionPartialFloats(static_cast<int>(heads), static_cast<int>(plan.local_kv_heads),
                                                static_cast<int>(hd), static_cast<int>(batch), static_cast<int>(ctx)),  // attention partials
      kCublasWorkspaceBytes,                                    // cuBLAS workspace (graph capture)
  };
  for (auto s : l.sizes) l.total += alignUp(s);
  return l;
}

}  // namespace

std::int64_t ShardExecutor::workspaceBytes(const ShardPlan& plan, const ExecutorLimits& limits) {
  return layoutFor(plan, limits).total;
}

std::int64_t peerGroupBytes(const ShardPlan& plan, const ExecutorLimits& limits) {
  const WorkspaceLayout layout = layoutFor(plan, limits);
  const std::int64_t all_reduce = std::min(peerAllReduceLimit(), layout.max_tokens * plan.spec.hidden * 4);
  const std::int64_t gather = plan.has_lm_head ? static_cast<std::int64_t>(limits.max_batch) * plan.local_vocab * 4 : 0;
  return std::max(all_reduce, gather);
}

ShardExecutor::ShardExecutor(const ShardPlan& plan, const ArchExtras& extras, const ExecutorLimits& limits, int device,
                             ParallelComms comms)
    : plan_(plan), extras_(extras), limits_(limits), device_(device), comms_(comms) {
  if (plan_.spec.dtype == DType::kF32) throw CapacityError("the GPU path runs F16 or BF16 models, not F32");
  if ((plan_.tp > 1 || plan_.pp > 1) && !COMPUTRON_HAVE_NCCL)
    throw CapacityError("this build has no NCCL: only TP = PP = 1 can run");
  hd_ = plan_.spec.headDim();
  q_width_ = plan_.local_heads * hd_;
  qkv_width_ = (plan_.local_heads + 2 * plan_.local_kv_heads) * hd_;
  up_width_ = plan_.spec.family().upMatrices() * plan_.local_ffn;
  if (hd_ != 64 && hd_ != 128) throw CapacityError("head dimension " + std::to_string(hd_) + " is not supported (64 or 128)");
  const int max_decode_context = kernels::decodeAttentionMaxContext(static_cast<int>(plan_.local_heads), static_cast<int>(plan_.local_kv_heads));
  if (limits_.max_context > max_decode_context)
    throw CapacityError("max_context " + std::to_string(limits_.max_context) + " exceeds the decode kernel's " +
                        std::to_string(max_decode_context) + " positions");
  // Attention reads every cached position. Within the window that is what sliding-window
  // attention computes too; beyond it, it is not (docs/model-execution.md, sliding windows).
  if (plan_.spec.sliding_window > 0 && limits_.max_context > plan_.spec.sliding_window)
    throw CapacityError("model '" + plan_.spec.name + "' attends over a sliding window of " +
                        std::to_string(plan_.spec.sliding_window) + " tokens; a maximum context of " +
                        std::to_string(limits_.max_context) +
                        " tokens exceeds it, and attention beyond the window is not implemented (use a maximum context of at most " +
                        std::to_string(plan_.spec.sliding_window) + ")");

  const WorkspaceLayout layout = layoutFor(plan_, limits_);
  max_tokens_ = layout.max_tokens;
  max_prompt_ = layout.max_prompt;
  cache_layer_elems_ = layout.cache_layer_elems;

  CUDA_CHECK(cudaSetDevice(device_));
  // The KV cache and activations are budgeted apart from the weights: refuse before allocating.
  if (limits_.kv_and_activation_budget > 0 && layout.total > limits_.kv_and_activation_budget)
    throw CapacityError("model '" + plan_.spec.name + "' shard (tp rank " + std::to_string(plan_.tp_rank) + ", stage " +
                        std::to_string(plan_.pp_rank) + "): a batch of " + std::to_string(limits_.max_batch) + " x " +
                        std::to_string(limits_.max_context) + " tokens needs " + gib(layout.total) +
                        " of KV cache and activations; the budget is " + gib(limits_.kv_and_activation_budget));
  std::size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (limits_.workspace == nullptr && layout.total > static_cast<std::int64_t>(free_bytes))
    throw CapacityError("model '" + plan_.spec.name + "': KV cache and activations need " + gib(layout.total) + " but GPU " +
                        std::to_string(device_) + " has " + gib(static_cast<std::int64_t>(free_bytes)) + " free");

  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasCreate(&cublas_));
  CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  CUBLAS_CHECK(cublasLtCreate(&lt_));
  if (limits_.workspace != nullptr) {
    workspace_ = static_cast<std::byte*>(limits_.workspace);
    owns_workspace_ = false;
  } else {
    CUDA_CHECK(cudaMalloc(&workspace_, static_cast<std::size_t>(layout.total)));
  }
  std::byte* cursor = workspace_;
  std::vector<void*> parts;
  for (auto s : layout.sizes) {
    parts.push_back(cursor);
    cursor += alignUp(s);
  }
  k_cache_ = parts[0];
  v_cache_ = parts[1];
  residual_ = static_cast<float*>(parts[2]);
  projection_ = static_cast<float*>(parts[3]);
  normed_ = parts[4];
  qkv_ = parts[5];
  q_ = parts[6];
  attention_ = parts[7];
  mlp_ = parts[8];
  activated_ = parts[9];
  scores_ = static_cast<float*>(parts[10]);
  probs_ = parts[11];
  last_normed_ = parts[12];
  local_logits_ = static_cast<float*>(parts[13]);
  gathered_logits_ = static_cast<float*>(parts[14]);
  logits_ = static_cast<float*>(parts[15]);
  meta_ = static_cast<int*>(parts[16]);
  sampled_ = static_cast<int*>(parts[17]);
  attention_pointers_ = static_cast<void**>(parts[18]);
  attention_partial_ = layout.sizes[19] > 0 ? static_cast<float*>(parts[19]) : nullptr;
  cublas_workspace_ = parts[20];
  CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, static_cast<std::size_t>(kCublasWorkspaceBytes)));
  fused_attention_ = fusedPrefillAttention(plan_);
  use_graphs_ = envInt("COMPUTRON_DECODE_GRAPH", 1) != 0;
  trace_graphs_ = envInt("COMPUTRON_LOAD_TRACE", 0) != 0;
  skinny_rows_ = std::clamp(envInt("COMPUTRON_SKINNY_ROWS", 16), 0, kernels::kSkinnyMaxRows);
  fuse_epilogues_ = envInt("COMPUTRON_DECODE_FUSE", 1) != 0;
  lt_epilogue_ = envInt("COMPUTRON_LT_EPILOGUE", 1) != 0;
  peer_limit_ = peerAllReduceLimit();
  if (comms_.tp_peer && (comms_.tp_peer->size() != plan_.tp || comms_.tp_peer->device(plan_.tp_rank) != device_))
    throw std::logic_error("shard executor: the peer group does not match this shard's TP group");
  // Pinned and mapped: uploads run as kernels reading host memory (kernels::uploadMapped).
  CUDA_CHECK(cudaHostAlloc(&host_meta_, static_cast<std::size_t>(layout.sizes[16]), cudaHostAllocMapped | cudaHostAllocPortable));
  CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&mapped_meta_), host_meta_, 0));
  CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host_pointer_staging_), static_cast<std::size_t>(layout.sizes[18]),
                           cudaHostAllocMapped | cudaHostAllocPortable));
  CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&mapped_pointers_), host_pointer_staging_, 0));
  CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host_sampled_), static_cast<std::size_t>(std::max(1, limits_.max_batch)) * sizeof(int),
                           cudaHostAllocMapped | cudaHostAllocPortable));
  CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&mapped_sampled_), host_sampled_, 0));
  sampled_mapped_ = envInt("COMPUTRON_SAMPLED_MAPPED", 1) != 0;
  CUDA_CHECK(cudaEventCreateWithFlags(&meta_uploaded_, cudaEventDisableTiming));
}

ShardExecutor::~ShardExecutor() {
  // Destructors must not throw: release what exists and ignore errors.
  cudaSetDevice(device_);
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  if (meta_uploaded_) cudaEventDestroy(meta_uploaded_);
  if (host_meta_) cudaFreeHost(host_meta_);
  if (host_pointer_staging_) cudaFreeHost(host_pointer_staging_);
  if (host_sampled_) cudaFreeHost(host_sampled_);
  if (workspace_ && owns_workspace_) cudaFree(workspace_);
  if (owned_weights_) cudaFree(owned_weights_);
  for (auto& [key, plan] : lt_plans_) {
    if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
    if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.d) cublasLtMatrixLayoutDestroy(plan.d);
  }
  if (lt_) cublasLtDestroy(lt_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void ShardExecutor::useDeviceWeights(const void* weights) {
  // Captured decode graphs hold weight addresses: a shard reloaded elsewhere needs new ones.
  if (weights_ != nullptr && weights != weights_) dropGraphs();
  weights_ = static_cast<const std::byte*>(weights);
}

void ShardExecutor::dropGraphs() {
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

void ShardExecutor::uploadWeights(const void* host_weights) {
  CUDA_CHECK(cudaSetDevice(device_));
  if (!owned_weights_) CUDA_CHECK(cudaMalloc(&owned_weights_, static_cast<std::size_t>(plan_.total_bytes)));
  CUDA_CHECK(cudaMemcpyAsync(owned_weights_, host_weights, static_cast<std::size_t>(plan_.total_bytes), cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  weights_ = owned_weights_;
}

void ShardExecutor::randomWeights(std::uint64_t seed) {
  CUDA_CHECK(cudaSetDevice(device_));
  if (!owned_weights_) CUDA_CHECK(cudaMalloc(&owned_weights_, static_cast<std::size_t>(plan_.total_bytes)));
  const std::int64_t elem = elementBytes(plan_.spec.dtype);
  std::uint64_t tensor_seed = seed * 0x9e3779b97f4a7c15ull;
  for (const auto& t : plan_.tensors) {
    tensor_seed = tensor_seed * 6364136223846793005ull + 1442695040888963407ull;
    const float amplitude = t.init == InitKind::kMatrix ? 0.0346410161513775f : 0.f;
    const float constant = t.init == InitKind::kNormWeight ? 1.f : 0.f;
    kernels::fillUniform(plan_.spec.dtype, owned_weights_ + t.offset, t.bytes / elem, tensor_seed, amplitude, constant, stream_);
  }
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  weights_ = owned_weights_;
}

void ShardExecutor::synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void ShardExecutor::gemm(const void* x, const void* w, void* y, int rows, int out_features, int in_features, bool y_f32) {
  // Row-major y[rows, out] = x[rows, in] * w[out, in]^T, written column-major as y^T = w x^T.
  if (rows <= skinny_rows_ && in_features % 8 == 0) {
    kernels::skinnyGemm(plan_.spec.dtype, x, w, y, y_f32, rows, out_features, in_features, stream_);
    return;
  }
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType t = cudaType(plan_.spec.dtype);
  CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out_features, rows, in_features, &alpha, w, t, in_features, x, t,
                            in_features, &beta, y, y_f32 ? CUDA_R_32F : t, out_features, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

namespace {
// Largest power of two (at most 256) dividing the address: what cuBLASLt may assume of it.
std::uint32_t alignmentOf(const void* p) {
  const auto v = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t a = 256;
  while (a > 1 && v % a != 0) a >>= 1;
  return a;
}
}  // namespace

bool ShardExecutor::gemmBiasRelu(const void* x, const void* w, const void* bias, void* y, int rows, int out_features, int in_features) {
  if (!lt_epilogue_ || bias == nullptr) return false;
  const std::uint32_t align_w = alignmentOf(w), align_x = alignmentOf(x), align_y = alignmentOf(y), align_bias = alignmentOf(bias);
  // Bias vectors narrower than 16 bytes' alignment are left to the separate kernel.
  if (align_bias < 16) return false;
  const std::array<int, 5> key{rows, out_features, static_cast<int>(align_w), static_cast<int>(align_x), static_cast<int>(align_y)};
  auto it = lt_plans_.find(key);
  if (it == lt_plans_.end()) {
    LtPlan plan;
    const cudaDataType t = cudaType(plan_.spec.dtype);
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_RELU_BIAS;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof trans));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof no_trans));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &t, sizeof t));
    // Column-major: y^T [out, rows] = W^T' [out, in] x^T [in, rows], W stored [in, out] column-major.
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, t, in_features, out_features, in_features));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, t, in_features, rows, in_features));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.d, t, out_features, rows, out_features));
    cublasLtMatmulPreference_t preference = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const std::uint64_t workspace = static_cast<std::uint64_t>(kCublasWorkspaceBytes);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_w, sizeof align_w));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_x, sizeof align_x));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_y, sizeof align_y));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_y, sizeof align_y));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(lt_, plan.desc, plan.a, plan.b, plan.d, plan.d, preference, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    plan.ok = status == CUBLAS_STATUS_SUCCESS && found > 0;
    if (plan.ok) plan.algo = result.algo;
    it = lt_plans_.emplace(key, plan).first;
  }
  if (!it->second.ok) return false;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(it->second.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  const float alpha = 1.f, beta = 0.f;
  CUBLAS_CHECK(cublasLtMatmul(lt_, it->second.desc, &alpha, w, it->second.a, x, it->second.b, &beta, y, it->second.d, y, it->second.d,
                              &it->second.algo, cublas_workspace_, static_cast<std::size_t>(kCublasWorkspaceBytes), stream_));
  return true;
}

void ShardExecutor::warmProducts(const std::vector<int>& rows) {
  const int h = plan_.spec.hidden;
  const std::int64_t elem = elementBytes(plan_.spec.dtype);
  const int local_ffn = static_cast<int>(plan_.local_ffn), local_vocab = static_cast<int>(plan_.local_vocab);
  const std::int64_t largest =
      std::max({qkv_width_, q_width_, up_width_, static_cast<std::int64_t>(local_ffn), static_cast<std::int64_t>(local_vocab)}) * h * elem;
  if (plan_.num_layers == 0 || plan_.num_layers * cache_layer_elems_ * elem < largest + 256) return;
  CUDA_CHECK(cudaSetDevice(device_));
  const void* stand_in = k_cache_;
  const void* down_input = plan_.spec.family().mlp == MlpKind::kSwiGlu ? activated_ : mlp_;
  for (int r : rows) {
    if (r <= skinny_rows_ || r > max_tokens_) continue;
    gemm(normed_, stand_in, qkv_, r, static_cast<int>(qkv_width_), h, false);
    gemm(attention_, stand_in, projection_, r, h, static_cast<int>(q_width_), true);
    gemm(normed_, stand_in, mlp_, r, static_cast<int>(up_width_), h, false);
    // OPT's fc1 runs as a cuBLASLt product with bias + ReLU in its epilogue: its plan (and kernel)
    // per row count, chosen here rather than in the first real pass (the stand-in is the bias too).
    // The stand-in weight sits at the real fc1 weight's offset modulo 256, so the plan's key (which
    // holds the operands' alignments) is the one the real pass looks up.
    if (plan_.spec.family().mlp == MlpKind::kRelu && plan_.layers.front().up_bias >= 0)
      gemmBiasRelu(normed_, static_cast<const std::byte*>(stand_in) + plan_.layers.front().up_weight % 256, stand_in, mlp_, r,
                   static_cast<int>(up_width_), h);
    gemm(down_input, stand_in, projection_, r, h, local_ffn, true);
    if (plan_.has_lm_head && r <= limits_.max_batch)
      gemm(last_normed_, stand_in, plan_.tp == 1 ? logits_ : local_logits_, r, local_vocab, h, true);
  }
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename F>
void ShardExecutor::collective(F&& call) {
  if (!comms_.guard) {
    call();
    return;
  }
  std::shared_lock<std::shared_mutex> lock(comms_.guard->mutex);
  if (comms_.guard->aborted)
    throw DeviceError("the collective group of model '" + plan_.spec.name + "' (GPU " + std::to_string(device_) +
                      ") was aborted: " + comms_.guard->reason);
  call();
}

void ShardExecutor::checkAborted() const {
  if (!comms_.guard) return;
  std::shared_lock<std::shared_mutex> lock(comms_.guard->mutex);
  if (comms_.guard->aborted)
    throw DeviceError("the collective group of model '" + plan_.spec.name + "' (GPU " + std::to_string(device_) +
                      ") was aborted during the pass: " + comms_.guard->reason);
}

void ShardExecutor::allReduce(float* data, std::int64_t count) {
  if (plan_.tp == 1) return;
  if (peerAllReduce(count)) {
    comms_.tp_peer->allReduceSum(plan_.tp_rank, data, count, stream_);
    return;
  }
#if COMPUTRON_HAVE_NCCL
  collective([&] {
    NCCL_CHECK(ncclAllReduce(data, data, static_cast<std::size_t>(count), ncclFloat, ncclSum,
                             static_cast<ncclComm_t>(comms_.tp_comm), stream_));
  });
#else
  (void)data;
  (void)count;
#endif
}

void ShardExecutor::forward(const StepBatch& batch) {
  if (!weights_) throw CapacityError("forward before weights were set");
  const int tokens = static_cast<int>(batch.positions.size());
  const int sequences = static_cast<int>(batch.last_token.size());
  if (tokens == 0 || sequences == 0) throw CapacityError("empty batch");
  if (batch.prefill && tokens > max_tokens_ && logits_row_offset_ == 0 && sequences > 1) {
    forwardInPasses(batch);
    return;
  }
  if (tokens > max_tokens_)
    throw CapacityError("a pass of " + std::to_string(tokens) + " tokens exceeds this executor's " + std::to_string(max_tokens_));
  if (sequences > limits_.max_batch)
    throw CapacityError("a batch of " + std::to_string(sequences) + " sequences exceeds max_batch " + std::to_string(limits_.max_batch));
  for (int n = 0; n < tokens; ++n) {
    if (batch.positions[static_cast<std::size_t>(n)] >= limits_.max_context)
      throw CapacityError("position " + std::to_string(batch.positions[static_cast<std::size_t>(n)]) + " exceeds max_context " +
                          std::to_string(limits_.max_context));
    if (batch.slots[static_cast<std::size_t>(n)] >= limits_.max_batch) throw CapacityError("slot out of range");
  }
  if (!batch.prefill) {
    // Decode attention reads a sequence's older cache rows before the q/k/v kernel of the same
    // pass has finished, which holds only with one new token per sequence (slot) in a pass.
    std::vector<bool> seen(static_cast<std::size_t>(limits_.max_batch), false);
    for (int n = 0; n < tokens; ++n) {
      const auto slot = static_cast<std::size_t>(batch.slots[static_cast<std::size_t>(n)]);
      if (seen[slot]) throw CapacityError("a decode pass holds two tokens of the sequence in slot " + std::to_string(slot));
      seen[slot] = true;
    }
  }
  if (plan_.spec.family().learnedPositions())
    for (int p : batch.positions)
      if (p >= plan_.spec.max_positions)
        throw CapacityError("position " + std::to_string(p) + " is beyond the " + std::to_string(plan_.spec.max_positions) +
                            " learned positions of model '" + plan_.spec.name + "'");
  if (batch.prefill)
    for (int len : batch.seq_len)
      if (len > max_prompt_) throw CapacityError("a prompt of " + std::to_string(len) + " tokens exceeds " + std::to_string(max_prompt_));

  CUDA_CHECK(cudaSetDevice(device_));
  // A failed peer group is refused, not replaced by NCCL: another rank may already be waiting in
  // a peer call of this pass, and a rank on NCCL alone would wait for peers that never join it.
  if (comms_.tp_peer && !comms_.tp_peer->usable())
    throw DeviceError("the tensor-parallel peer collectives of model '" + plan_.spec.name + "' (GPU " + std::to_string(device_) +
                      ") failed in an earlier pass; the group must be reset while every rank is idle before it runs again");
  peer_active_ = comms_.tp_peer != nullptr;
  try {
    forwardIssue(batch, tokens, sequences);
  } catch (...) {
    // Ranks that wait for this one in a peer collective give up now instead of at the timeout.
    if (peer_active_) comms_.tp_peer->abort();
    throw;
  }
}

void ShardExecutor::forwardInPasses(const StepBatch& batch) {
  const int sequences = static_cast<int>(batch.seq_len.size());
  if (sequences > limits_.max_batch)
    throw CapacityError("a batch of " + std::to_string(sequences) + " sequences exceeds max_batch " + std::to_string(limits_.max_batch));
  if (batch.seq_begin.size() != batch.seq_len.size() || batch.last_token.size() != batch.seq_len.size() ||
      batch.seq_slot.size() != batch.seq_len.size())
    throw CapacityError("a prefill batch needs one begin, length, slot and last token per sequence");
  struct ResetOffset {
    int& offset;
    ~ResetOffset() { offset = 0; }
  } reset{logits_row_offset_};
  int first = 0;
  while (first < sequences) {
    // The next sequences that fit one pass, in order; each fits alone (forward refuses a prompt
    // longer than a pass).
    int end = first, total = 0;
    while (end < sequences && (end == first || total + batch.seq_len[static_cast<std::size_t>(end)] <= max_tokens_)) {
      total += batch.seq_len[static_cast<std::size_t>(end)];
      ++end;
    }
    StepBatch pass;
    pass.prefill = true;
    for (int s = first; s < end; ++s) {
      const auto i = static_cast<std::size_t>(s);
      const int begin = batch.seq_begin[i], len = batch.seq_len[i];
      if (begin < 0 || len < 1 || static_cast<std::size_t>(begin + len) > batch.positions.size() ||
          batch.last_token[i] < begin || batch.last_token[i] >= begin + len)
        throw CapacityError("a prefill sequence's tokens are out of the batch");
      const int rebased = static_cast<int>(pass.positions.size());
      pass.seq_begin.push_back(rebased);
      pass.seq_len.push_back(len);
      pass.seq_slot.push_back(batch.seq_slot[i]);
      pass.last_token.push_back(rebased + batch.last_token[i] - begin);
      for (int t = begin; t < begin + len; ++t) {
        const auto ti = static_cast<std::size_t>(t);
        pass.tokens.push_back(ti < batch.tokens.size() ? batch.tokens[ti] : 0);
        pass.slots.push_back(batch.slots[ti]);
        pass.positions.push_back(batch.positions[ti]);
      }
    }
    logits_row_offset_ = first;
    forward(pass);
    first = end;
  }
}

void ShardExecutor::checkPeers() const {
  if (peer_active_ && comms_.tp_peer->failed())
    throw DeviceError("a tensor-parallel peer collective of model '" + plan_.spec.name + "' (GPU " + std::to_string(device_) +
                      ", tp rank " + std::to_string(plan_.tp_rank) +
                      ") gave up: another rank of the group failed or did not arrive in time");
}

void ShardExecutor::forwardIssue(const StepBatch& batch, int tokens, int sequences) {
  // Meta: tokens | slots | positions | context | last_token, in one upload.
  CUDA_CHECK(cudaEventSynchronize(meta_uploaded_));  // the previous upload has left the staging buffer
  int* host_tokens = host_meta_;
  int* host_slots = host_meta_ + max_tokens_;
  int* host_positions = host_meta_ + 2 * max_tokens_;
  int* host_context = host_meta_ + 3 * max_tokens_;
  int* host_last = host_meta_ + 4 * max_tokens_;
  for (int n = 0; n < tokens; ++n) {
    host_tokens[n] = plan_.has_embeddings ? batch.tokens[static_cast<std::size_t>(n)] : 0;
    host_slots[n] = batch.slots[static_cast<std::size_t>(n)];
    host_positions[n] = batch.positions[static_cast<std::size_t>(n)];
    host_context[n] = host_positions[n] + 1;
  }
  for (int s = 0; s < sequences; ++s) host_last[s] = batch.last_token[static_cast<std::size_t>(s)];
  kernels::uploadMapped(meta_, mapped_meta_, static_cast<std::int64_t>(4 * max_tokens_ + sequences) * static_cast<std::int64_t>(sizeof(int)),
                        stream_);
  CUDA_CHECK(cudaEventRecord(meta_uploaded_, stream_));
  const DType dt = plan_.spec.dtype;

  if (batch.prefill && fused_attention_) {
    // The fused kernel's tiles, uploaded with the pass (host_pointer_staging_ is reused only after
    // this upload ran: meta_uploaded_ is recorded after it, and forward() waits for that event).
    int* tiles = reinterpret_cast<int*>(host_pointer_staging_);
    prefill_tiles_ = kernels::prefillAttentionTiles(batch.seq_begin.data(), batch.seq_len.data(), batch.seq_slot.data(),
                                                   static_cast<int>(batch.seq_len.size()), tiles);
    kernels::uploadMapped(attention_pointers_, mapped_pointers_, static_cast<std::int64_t>(prefill_tiles_) * 4 * static_cast<std::int64_t>(sizeof(int)),
                          stream_);
    CUDA_CHECK(cudaEventRecord(meta_uploaded_, stream_));
  } else if (batch.prefill) {
    // Pointer arrays for the batched attention products of every layer and sequence.
    const int heads = static_cast<int>(plan_.local_heads), group = static_cast<int>(plan_.local_heads / plan_.local_kv_heads);
    const std::int64_t elem = elementBytes(dt);
    const std::int64_t kv_row = plan_.local_kv_heads * hd_;
    host_pointers_.assign(static_cast<std::size_t>(plan_.num_layers) * sequences * 6 * heads, nullptr);
    for (int li = 0; li < plan_.num_layers; ++li) {
      const std::byte* kc = static_cast<const std::byte*>(k_cache_) + li * cache_layer_elems_ * elem;
      const std::byte* vc = static_cast<const std::byte*>(v_cache_) + li * cache_layer_elems_ * elem;
      for (int s = 0; s < sequences; ++s) {
        const std::int64_t len = batch.seq_len[static_cast<std::size_t>(s)], begin = batch.seq_begin[static_cast<std::size_t>(s)];
        const std::int64_t slot = batch.seq_slot[static_cast<std::size_t>(s)];
        const void** p = host_pointers_.data() + (static_cast<std::size_t>(li) * sequences + s) * 6 * heads;
        for (int hh = 0; hh < heads; ++hh) {
          const std::int64_t cache_off = (slot * limits_.max_context * kv_row + (hh / group) * hd_) * elem;
          p[0 * heads + hh] = kc + cache_off;
          p[1 * heads + hh] = static_cast<const std::byte*>(q_) + ((begin * heads + hh) * hd_) * elem;
          p[2 * heads + hh] = reinterpret_cast<const std::byte*>(scores_) + hh * len * len * 4;
          p[3 * heads + hh] = vc + cache_off;
          p[4 * heads + hh] = static_cast<const std::byte*>(probs_) + hh * len * len * elem;
          p[5 * heads + hh] = static_cast<const std::byte*>(attention_) + ((begin * heads + hh) * hd_) * elem;
        }
      }
    }
    // The staging is reused by the next prefill only after this one's upload ran (meta_uploaded_
    // is recorded after it, and forward() waits for that event first).
    std::memcpy(host_pointer_staging_, host_pointers_.data(), host_pointers_.size() * sizeof(void*));
    kernels::uploadMapped(attention_pointers_, mapped_pointers_, static_cast<std::int64_t>(host_pointers_.size() * sizeof(void*)), stream_);
    CUDA_CHECK(cudaEventRecord(meta_uploaded_, stream_));
  }

  // Decode: replay the pass captured for this batch size, on one GPU, or on every rank of a TP
  // group whose collectives all run over peer access (no NCCL inside graphs).
  const bool peer_pass = plan_.tp > 1 && peer_active_ && peerAllReduce(static_cast<std::int64_t>(tokens) * plan_.spec.hidden) &&
                         static_cast<std::int64_t>(sequences) * plan_.local_vocab * 4 <= comms_.tp_peer->maxBytes();
  if (!batch.prefill && use_graphs_ && plan_.pp == 1 && (plan_.tp == 1 || peer_pass)) {
    const auto key = std::make_pair(tokens, sequences);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      const auto capture_start = std::chrono::steady_clock::now();
      CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      cudaGraph_t graph = nullptr;
      try {
        forwardBody(batch, tokens, sequences);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      CUDA_CHECK(status);
      it = graphs_.emplace(key, exec).first;
      if (trace_graphs_)
        std::fprintf(stderr, "GRAPHTRACE {\"model\": \"%s\", \"gpu\": %d, \"sequences\": %d, \"t_ms\": %.3f, \"capture_ms\": %.3f}\n",
                     plan_.spec.name.c_str(), device_, sequences,
                     std::chrono::duration<double, std::milli>(capture_start.time_since_epoch()).count(),
                     std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - capture_start).count());
    }
    CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
    return;
  }
  forwardBody(batch, tokens, sequences);
}

void ShardExecutor::forwardBody(const StepBatch& batch, int tokens, int sequences) {
  const int* d_tokens = meta_;
  const int* d_positions = meta_ + 2 * max_tokens_;
  const int* d_last = meta_ + 4 * max_tokens_;
  const int h = plan_.spec.hidden;
  const DType dt = plan_.spec.dtype;

  const int first_layer_segment = plan_.has_embeddings ? 1 : 0;
  if (plan_.has_embeddings) {
    waitSegment(0);
    kernels::embedTokens(dt, weight(plan_.token_embedding), d_tokens, tokens, h, static_cast<int>(plan_.vocab_begin),
                         static_cast<int>(plan_.local_vocab), residual_, stream_);
    allReduce(residual_, static_cast<std::int64_t>(tokens) * h);
    if (plan_.position_embedding >= 0)
      kernels::addPositions(dt, weight(plan_.position_embedding), d_positions, plan_.spec.family().position_offset, tokens, h,
                            residual_, stream_);
  } else {
#if COMPUTRON_HAVE_NCCL
    collective([&] {
      NCCL_CHECK(ncclRecv(residual_, static_cast<std::size_t>(tokens) * h, ncclFloat, plan_.pp_rank - 1,
                          static_cast<ncclComm_t>(comms_.pp_comm), stream_));
    });
#endif
  }

  bool normed = false;
  for (int li = 0; li < plan_.num_layers; ++li) {
    waitSegment(first_layer_segment + li);
    if (li + 1 < plan_.num_layers) waitSegment(first_layer_segment + li + 1);
    normed = layer(li, batch, tokens, normed);
  }

  if (!plan_.has_lm_head) {
#if COMPUTRON_HAVE_NCCL
    collective([&] {
      NCCL_CHECK(ncclSend(residual_, static_cast<std::size_t>(tokens) * h, ncclFloat, plan_.pp_rank + 1,
                          static_cast<ncclComm_t>(comms_.pp_comm), stream_));
    });
#endif
    return;
  }
  waitSegment(first_layer_segment + plan_.num_layers);
  switch (plan_.spec.family().norm) {
    case NormKind::kLayerNorm:
      kernels::layerNorm(dt, residual_, d_last, sequences, h, weight(plan_.final_norm_weight), weight(plan_.final_norm_bias),
                         extras_.norm_eps, last_normed_, stream_);
      break;
    case NormKind::kRmsNorm:
      kernels::rmsNorm(dt, residual_, d_last, sequences, h, weight(plan_.final_norm_weight), extras_.norm_eps, last_normed_, stream_);
      break;
  }
  const int local_vocab = static_cast<int>(plan_.local_vocab);
  float* logits = logits_ + static_cast<std::int64_t>(logits_row_offset_) * plan_.spec.vocab;
  if (plan_.tp == 1) {
    gemm(last_normed_, weight(plan_.lm_head), logits, sequences, local_vocab, h, true);
  } else {
    gemm(last_normed_, weight(plan_.lm_head), local_logits_, sequences, local_vocab, h, true);
    const std::int64_t gather = static_cast<std::int64_t>(sequences) * local_vocab;
    if (peer_active_ && gather * 4 <= comms_.tp_peer->maxBytes()) {
      comms_.tp_peer->allGather(plan_.tp_rank, local_logits_, gathered_logits_, gather, stream_);
    } else {
#if COMPUTRON_HAVE_NCCL
      collective([&] {
        NCCL_CHECK(ncclAllGather(local_logits_, gathered_logits_, static_cast<std::size_t>(gather), ncclFloat,
                                 static_cast<ncclComm_t>(comms_.tp_comm), stream_));
      });
#endif
    }
    kernels::interleaveVocab(gathered_logits_, logits, plan_.tp, sequences, local_vocab, stream_);
  }
}

bool ShardExecutor::layer(int li, const StepBatch& batch, int tokens, bool input_normed) {
  const LayerWeights& w = plan_.layers[static_cast<std::size_t>(li)];
  const DType dt = plan_.spec.dtype;
  const int h = plan_.spec.hidden;
  const ModelFamily& family = plan_.spec.family();
  const bool layer_norm = family.norm == NormKind::kLayerNorm;
  const std::int64_t elem = elementBytes(dt);
  const int* d_slots = meta_ + max_tokens_;
  const int* d_positions = meta_ + 2 * max_tokens_;
  const int* d_context = meta_ + 3 * max_tokens_;
  auto optional = [&](std::int64_t offset) -> const void* { return offset >= 0 ? weight(offset) : nullptr; };

  if (input_normed) {
    // normed_ was written by the previous layer's fused residual add.
  } else if (layer_norm) {
    kernels::layerNorm(dt, residual_, nullptr, tokens, h, weight(w.attn_norm_weight), weight(w.attn_norm_bias), extras_.norm_eps, normed_, stream_);
  } else {
    kernels::rmsNorm(dt, residual_, nullptr, tokens, h, weight(w.attn_norm_weight), extras_.norm_eps, normed_, stream_);
  }
  kernels::QkvLayout layout;
  layout.heads = static_cast<int>(plan_.local_heads);
  layout.kv_heads = static_cast<int>(plan_.local_kv_heads);
  layout.head_dim = static_cast<int>(hd_);
  layout.max_seq = limits_.max_context;
  layout.rotary = family.rotary();
  layout.rope_theta = extras_.rope_theta;
  void* kc = static_cast<std::byte*>(k_cache_) + li * cache_layer_elems_ * elem;
  void* vc = static_cast<std::byte*>(v_cache_) + li * cache_layer_elems_ * elem;
  const bool fused = fuse_epilogues_ && tokens <= skinny_rows_ && h % 8 == 0;
  if (fused) {
    // The q/k/v product with the split, bias and rotary in its epilogue.
    kernels::skinnyGemmQkv(dt, normed_, weight(w.qkv_weight), optional(w.qkv_bias), d_slots, d_positions, tokens, h, layout, q_,
                           kc, vc, stream_);
  } else {
    gemm(normed_, weight(w.qkv_weight), qkv_, tokens, static_cast<int>(qkv_width_), h, false);
    kernels::splitQkv(dt, qkv_, optional(w.qkv_bias), d_slots, d_positions, tokens, layout, q_, kc, vc, stream_);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd_));
  if (batch.prefill) {
    attentionPrefill(li, batch, layout, kc, vc);
  } else {
    kernels::decodeAttention(dt, q_, kc, vc, d_slots, d_context, tokens, layout, scale, attention_, attention_partial_, stream_);
  }
  gemm(attention_, weight(w.out_weight), projection_, tokens, h, static_cast<int>(q_width_), true);
  allReduce(projection_, static_cast<std::int64_t>(tokens) * h);
  kernels::addResidualNorm(dt, layer_norm, residual_, projection_, optional(w.out_bias), tokens, h, weight(w.mlp_norm_weight),
                           optional(w.mlp_norm_bias), extras_.norm_eps, normed_, stream_);
  const void* down_input = mlp_;
  switch (family.mlp) {
    case MlpKind::kRelu:
      if (w.up_bias >= 0 && fused) {
        // fc1 with its bias and ReLU in the product's epilogue.
        kernels::skinnyGemm(dt, normed_, weight(w.up_weight), mlp_, false, tokens, static_cast<int>(up_width_), h, stream_,
                            weight(w.up_bias));
      } else if (tokens <= skinny_rows_ ||
                 !gemmBiasRelu(normed_, weight(w.up_weight), optional(w.up_bias), mlp_, tokens, static_cast<int>(up_width_), h)) {
        gemm(normed_, weight(w.up_weight), mlp_, tokens, static_cast<int>(up_width_), h, false);
        kernels::biasRelu(dt, mlp_, optional(w.up_bias), tokens, static_cast<int>(plan_.local_ffn), stream_);
      }
      break;
    case MlpKind::kSwiGlu:
      if (fused && plan_.local_ffn % 8 == 0) {
        kernels::skinnyGemmSwiGlu(dt, normed_, weight(w.up_weight), activated_, tokens, static_cast<int>(plan_.local_ffn), h,
                                  stream_);
      } else {
        gemm(normed_, weight(w.up_weight), mlp_, tokens, static_cast<int>(up_width_), h, false);
        kernels::swiGlu(dt, mlp_, activated_, tokens, static_cast<int>(plan_.local_ffn), stream_);
      }
      down_input = activated_;
      break;
  }
  gemm(down_input, weight(w.down_weight), projection_, tokens, h, static_cast<int>(plan_.local_ffn), true);
  allReduce(projection_, static_cast<std::int64_t>(tokens) * h);
  if (li + 1 < plan_.num_layers) {
    const LayerWeights& next = plan_.layers[static_cast<std::size_t>(li + 1)];
    kernels::addResidualNorm(dt, layer_norm, residual_, projection_, optional(w.down_bias), tokens, h, weight(next.attn_norm_weight),
                             optional(next.attn_norm_bias), extras_.norm_eps, normed_, stream_);
    return true;
  }
  kernels::addResidual(dt, residual_, projection_, optional(w.down_bias), tokens, h, stream_);
  return false;
}

void ShardExecutor::attentionPrefill(int li, const StepBatch& batch, const kernels::QkvLayout& layout, const void* k_cache,
                                     const void* v_cache) {
  if (fused_attention_) {
    kernels::prefillAttention(plan_.spec.dtype, q_, k_cache, v_cache, reinterpret_cast<const int*>(attention_pointers_), prefill_tiles_,
                              layout, 1.0f / std::sqrt(static_cast<float>(hd_)), attention_, stream_);
    return;
  }
  // Per sequence: scores = q k^T (fp32) for all local heads in one batched product, causal
  // softmax into probs (model dtype), attention = probs v. Heads share a kv head under GQA,
  // which pointer arrays express where strides cannot.
  const int heads = static_cast<int>(plan_.local_heads);
  const int sequences = static_cast<int>(batch.seq_len.size());
  const cudaDataType t = cudaType(plan_.spec.dtype);
  const int kv_row = static_cast<int>(plan_.local_kv_heads * hd_);
  const int q_row = static_cast<int>(q_width_);
  const int hd = static_cast<int>(hd_);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd_)), one = 1.f, zero = 0.f;
  for (int s = 0; s < sequences; ++s) {
    const int len = batch.seq_len[static_cast<std::size_t>(s)];
    void** p = attention_pointers_ + (static_cast<std::size_t>(li) * sequences + s) * 6 * heads;
    // scores^T (col-major [len_k, len_q]) = K (row-major [len_k, hd]) * Q^T.
    CUBLAS_CHECK(cublasGemmBatchedEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, len, len, hd, &scale, p + 0 * heads, t, kv_row,
                                     p + 1 * heads, t, q_row, &zero, p + 2 * heads, CUDA_R_32F, len, heads,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    kernels::causalSoftmax(plan_.spec.dtype, scores_, probs_, heads, len, stream_);
    // out^T (col-major [hd, len_q]) = V^T (col-major view of row-major [len_k, hd]) * P^T.
    CUBLAS_CHECK(cublasGemmBatchedEx(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, hd, len, len, &one, p + 3 * heads, t, kv_row,
                                     p + 4 * heads, t, len, &zero, p + 5 * heads, t, q_row, heads, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
  }
}

std::vector<int> ShardExecutor::shareSampled(int sequences) {
#if COMPUTRON_HAVE_NCCL
  if (plan_.pp > 1)
    collective([&] {
      NCCL_CHECK(ncclBroadcast(sampled_, sampled_, static_cast<std::size_t>(sequences), ncclInt, plan_.pp - 1,
                               static_cast<ncclComm_t>(comms_.pp_comm), stream_));
    });
#endif
  std::vector<int> out(static_cast<std::size_t>(sequences));
  if (sampled_mapped_) {
    // A kernel writes the tokens into mapped host memory: no copy engine, so no wait behind a
    // weight load's copies to or from this GPU.
    kernels::downloadMapped(mapped_sampled_, sampled_, static_cast<std::int64_t>(out.size() * sizeof(int)), stream_);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::copy(host_sampled_, host_sampled_ + out.size(), out.begin());
  } else {
    CUDA_CHECK(cudaMemcpyAsync(out.data(), sampled_, out.size() * sizeof(int), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  checkPeers();
  checkAborted();
  return out;
}

std::vector<int> ShardExecutor::sampleAndShare(int sequences, float temperature, int top_k, float top_p, std::uint64_t seed,
                                               int step) {
  CUDA_CHECK(cudaSetDevice(device_));
  if (plan_.has_lm_head)
    kernels::sampleTokens(logits_, sequences, plan_.spec.vocab, temperature, top_k, top_p, seed, step, sampled_, stream_);
  return shareSampled(sequences);
}

std::vector<int> ShardExecutor::sampleRowsAndShare(const std::vector<RowSampling>& rows, int step) {
  CUDA_CHECK(cudaSetDevice(device_));
  const int sequences = static_cast<int>(rows.size());
  if (plan_.has_lm_head) {
    for (int i = 0; i < sequences; ++i) {
      const RowSampling& r = rows[static_cast<std::size_t>(i)];
      kernels::sampleTokens(logits_ + static_cast<std::int64_t>(i) * plan_.spec.vocab, 1, plan_.spec.vocab, r.temperature,
                            r.top_k, r.top_p, r.seed, r.step >= 0 ? r.step : step, sampled_ + i, stream_);
    }
  }
  return shareSampled(sequences);
}

std::vector<float> ShardExecutor::logitsToHost(int sequences) const {
  std::vector<float> out(static_cast<std::size_t>(sequences) * plan_.spec.vocab);
  if (!plan_.has_lm_head) return out;
  CUDA_CHECK(cudaSetDevice(device_));
  CUDA_CHECK(cudaMemcpyAsync(out.data(), logits_, out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  checkPeers();
  checkAborted();
  return out;
}

}  // namespace computron::model
