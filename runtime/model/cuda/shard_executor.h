// Runs one shard (tp_rank, pp_rank) of a decoder on one GPU: its layers' weights, its slice of
// the KV cache, and the activations of one batch. Several executors (one per GPU, one thread
// each) cooperate through NCCL: an all-reduce inside the TP group after each row-parallel
// product and after the vocab-parallel embedding, an all-gather of vocab-parallel logits, and
// send/recv of the fp32 residual stream between pipeline stages.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/model/cuda/cuda_check.h"
#include "runtime/model/cuda/kernels.h"
#include "runtime/model/cuda/peer_collectives.h"
#include "runtime/model/shard_plan.h"

namespace computron::model {

// A batch that cannot fit the KV-cache and activation budget, or exceeds the sizes the executor
// was built for. The message says what was asked and what is available.
class CapacityError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Numbers of the architecture beyond the shapes (ModelSpec's norm_eps and rope_theta; see
// archExtrasOf and archExtrasFromConfig in generation.h).
struct ArchExtras {
  float rope_theta = 10000.f;  // rotary families
  float norm_eps = 1e-5f;      // OPT LayerNorm 1e-5; RMSNorm from config
};

struct ExecutorLimits {
  int max_batch = 8;          // sequences decoded together
  int max_context = 1024;     // prompt + generated tokens per sequence
  // Tokens in one prefill pass (0: max_batch * max_context), which sizes the activations. A
  // prefill of more tokens runs as several passes over whole sequences, in order (forward()).
  int max_prefill_tokens = 0;
  // Device bytes allowed for KV cache + activations, apart from the weights. 0: no limit.
  std::int64_t kv_and_activation_budget = 0;
  // The caller's device buffer of at least workspaceBytes() for the KV cache and activations
  // (several executors that never run at once on one GPU share one); null: allocated here.
  void* workspace = nullptr;
};

// Communicators of a group that spans processes (runtime/mpi/) can be aborted from another
// thread when a member process is lost: every NCCL call of an executor on them holds `mutex`
// shared and first checks `aborted`; the abort holds it exclusively. So no call runs on a
// communicator once it has been aborted (freed), while the executors of one process's GPUs in
// the group still call NCCL together (a collective's first call connects every member at once).
struct CommGuard {
  std::shared_mutex mutex;
  bool aborted = false;
  std::string reason;
};

struct ParallelComms {
  void* tp_comm = nullptr;  // ncclComm_t of this stage's TP group (tp > 1)
  void* pp_comm = nullptr;  // ncclComm_t of this TP rank's pipeline (pp > 1); rank = stage
  // This stage's TP group over peer access (null: NCCL only); this executor is rank tp_rank.
  // Decode-sized all-reduces and the logits' all-gather run there, and with pp = 1 the whole
  // decode pass is then captured as a CUDA graph on every rank.
  std::shared_ptr<PeerGroup> tp_peer;
  // Set when a group spans processes (null: NCCL calls run unguarded).
  std::shared_ptr<CommGuard> guard;
};

// Bytes per rank the TP group's peer collectives need for these limits: the all-gather of a
// decode pass's logits, and all-reduces up to peerAllReduceLimit().
std::int64_t peerGroupBytes(const ShardPlan& plan, const ExecutorLimits& limits);

// What one forward pass processes. Host-side; identical on every rank of a model.
struct StepBatch {
  bool prefill = false;
  std::vector<int> tokens;     // one per token (read by the first stage only)
  std::vector<int> slots;      // KV-cache slot (sequence) of each token
  std::vector<int> positions;  // position of each token in its sequence
  // Per sequence: index of its last token in this pass (whose logits are produced), and for
  // prefill its first token index and length (tokens of a sequence are consecutive).
  std::vector<int> last_token;
  std::vector<int> seq_begin;
  std::vector<int> seq_len;
  std::vector<int> seq_slot;
};

// One sequence's sampling: temperature 0 is greedy.
struct RowSampling {
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f;
  std::uint64_t seed = 0;
  // The row's own position in its (seed, step) stream (its token index); -1: the call's step.
  // Sequences of an iteration-level session are at different token indices in one pass.
  int step = -1;
};

class ShardExecutor {
 public:
  ShardExecutor(const ShardPlan& plan, const ArchExtras& extras, const ExecutorLimits& limits, int device,
                ParallelComms comms);
  ~ShardExecutor();
  ShardExecutor(const ShardExecutor&) = delete;
  ShardExecutor& operator=(const ShardExecutor&) = delete;

  // Bytes of KV cache and activations this executor allocates for its limits.
  static std::int64_t workspaceBytes(const ShardPlan& plan, const ExecutorLimits& limits);

  // Weights: either the caller's device buffer (the runtime's pool; plan.total_bytes) or a copy
  // made here from host memory, or deterministic random values made on the device.
  void useDeviceWeights(const void* weights);
  void uploadWeights(const void* host_weights);
  void randomWeights(std::uint64_t seed);

  // Layer-pipelined execution: forward() calls wait(segment) on the host before it issues work
  // that reads a weight segment, numbered as the shard buffer is laid out: the prefix (first
  // stage), each decoder layer, the suffix (last stage); empty ones are not counted. The caller
  // blocks there until that segment's bytes are on the GPU (the load runs concurrently). A
  // layer's work also reads the next layer's input norm (fused into its last residual add), so
  // it waits for both. Null: every weight is present.
  using SegmentWait = std::function<void(int segment)>;
  void setSegmentWait(SegmentWait wait) { segment_wait_ = std::move(wait); }

  // One forward pass. On the last stage, logits() then holds [sequences, vocab] fp32. A prefill
  // of more tokens than max_prefill_tokens runs as several passes, each over the next sequences
  // that fit, writing its rows of the logits; every rank of the model splits it alike.
  void forward(const StepBatch& batch);
  // Last stage: picks the next token of each sequence into device memory; then shares them with
  // every stage (pp > 1) and returns them on the host.
  std::vector<int> sampleAndShare(int sequences, float temperature, int top_k, float top_p, std::uint64_t seed, int step);
  // As sampleAndShare, but each row with its own sampling: one launch per row, each drawing from
  // its own (seed, step) stream as if it were alone in the batch.
  std::vector<int> sampleRowsAndShare(const std::vector<RowSampling>& rows, int step);
  // Copies logits of the last forward to the host (last stage only).
  std::vector<float> logitsToHost(int sequences) const;

  // Warm-up without weights: runs this shard's matrix products (q/k/v, output, MLP up and down,
  // OPT's fc1 also through its cuBLASLt bias + ReLU plan, LM head) once at each row count in
  // `rows` that is above the skinny-product limit and within the executor's maximum tokens,
  // reading the KV cache as stand-in weights and writing the activation buffers a pass would, so
  // cuBLAS picks and loads its kernels for these shapes before the first batch. Nothing a later
  // pass reads is left changed (every pass writes those buffers before reading them); skipped
  // when the cache is smaller than the largest matrix.
  void warmProducts(const std::vector<int>& rows);

  const ShardPlan& plan() const { return plan_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  void synchronize() const;

 private:
  // The sampled tokens (in sampled_) to every pipeline stage, then to the host.
  std::vector<int> shareSampled(int sequences);
  // The uploads and launches of forward() after its checks.
  void forwardIssue(const StepBatch& batch, int tokens, int sequences);
  // Runs the layers, final norm and head of a pass whose metadata is on the device.
  void forwardBody(const StepBatch& batch, int tokens, int sequences);
  // One layer; `input_normed`: normed_ already holds its input norm (fused into the previous
  // layer's last residual add). Returns whether normed_ holds the next layer's input norm.
  bool layer(int index, const StepBatch& batch, int tokens, bool input_normed);
  void attentionPrefill(int index, const StepBatch& batch, const kernels::QkvLayout& layout, const void* k_cache, const void* v_cache);
  // Products of up to skinny_rows_ rows (decode) run on kernels::skinnyGemm, larger ones on cuBLAS.
  void gemm(const void* x, const void* w, void* y, int rows, int out_features, int in_features, bool y_f32);
  void allReduce(float* data, std::int64_t count);
  // Whether an all-reduce of `count` floats goes over the peer group in this pass.
  bool peerAllReduce(std::int64_t count) const {
    return peer_active_ && count * 4 <= peer_limit_ && count * 4 <= comms_.tp_peer->maxBytes();
  }
  // Throws when a peer collective of the last pass timed out or was aborted.
  void checkPeers() const;
  // A prefill over more tokens than a pass holds: consecutive groups of whole sequences, one pass
  // each, each writing its sequences' rows of the logits.
  void forwardInPasses(const StepBatch& batch);
  // Runs an NCCL call under the group's guard (spanning groups): DeviceError once aborted.
  template <typename F>
  void collective(F&& call);
  // After waiting on the stream: DeviceError when the group was aborted meanwhile (its
  // collectives ended early, so the results are not to be used).
  void checkAborted() const;
  const std::byte* weight(std::int64_t offset) const { return weights_ + offset; }

  ShardPlan plan_;
  ArchExtras extras_;
  ExecutorLimits limits_;
  int device_ = 0;
  ParallelComms comms_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  // OPT's fc1 with bias and ReLU in the product's epilogue (cuBLASLt), per (rows, alignments):
  // the operation, its matrix layouts and the algorithm the heuristic chose; `ok` false when
  // cuBLASLt offered none, and the plain product with the biasRelu kernel runs instead.
  struct LtPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  cublasLtHandle_t lt_ = nullptr;
  std::map<std::array<int, 5>, LtPlan> lt_plans_;
  bool lt_epilogue_ = true;  // COMPUTRON_LT_EPILOGUE=0 turns the epilogue off (comparisons)
  // y = relu(x w^T + bias) for row counts above the skinny limit; false when not available.
  bool gemmBiasRelu(const void* x, const void* w, const void* bias, void* y, int rows, int out_features, int in_features);
  std::byte* owned_weights_ = nullptr;
  const std::byte* weights_ = nullptr;
  std::int64_t hd_ = 0, qkv_width_ = 0, q_width_ = 0, up_width_ = 0;

  // Device workspace (one allocation, carved up).
  std::byte* workspace_ = nullptr;
  void* k_cache_ = nullptr;  // [layers][max_batch][max_context][kv_heads][hd]
  void* v_cache_ = nullptr;
  float* residual_ = nullptr;      // [tokens, hidden]
  float* projection_ = nullptr;    // [tokens, hidden], row-parallel outputs
  void* normed_ = nullptr;         // [tokens, hidden]
  void* qkv_ = nullptr;            // [tokens, qkv_width]
  void* q_ = nullptr;              // [tokens, q_width]
  void* attention_ = nullptr;      // [tokens, q_width]
  void* mlp_ = nullptr;            // [tokens, up_width]
  void* activated_ = nullptr;      // [tokens, local_ffn] (Llama)
  float* scores_ = nullptr;        // [heads, max_prompt, max_prompt]
  void* probs_ = nullptr;
  void* last_normed_ = nullptr;    // [max_batch, hidden]
  float* local_logits_ = nullptr;  // [max_batch, local_vocab]
  float* gathered_logits_ = nullptr;
  float* logits_ = nullptr;        // [max_batch, vocab]
  int* meta_ = nullptr;            // tokens, slots, positions, context, last_token
  int* sampled_ = nullptr;         // [max_batch]
  float* attention_partial_ = nullptr;  // split-context decode attention partial results
  void* cublas_workspace_ = nullptr;
  int* host_meta_ = nullptr;       // pinned, mapped staging for meta_
  int* mapped_meta_ = nullptr;     // its device address
  std::byte* host_pointer_staging_ = nullptr;  // pinned, mapped staging for attention_pointers_
  int* host_sampled_ = nullptr;    // pinned, mapped: each pass's sampled tokens (kernels::downloadMapped)
  int* mapped_sampled_ = nullptr;
  bool sampled_mapped_ = true;     // COMPUTRON_SAMPLED_MAPPED=0: a cudaMemcpyAsync into pageable memory instead
  bool trace_graphs_ = false;      // COMPUTRON_LOAD_TRACE=1: a GRAPHTRACE line on stderr per captured decode graph
  std::byte* mapped_pointers_ = nullptr;
  cudaEvent_t meta_uploaded_ = nullptr;
  void** attention_pointers_ = nullptr;  // device pointer arrays for batched prefill products
  std::vector<const void*> host_pointers_;
  std::int64_t max_tokens_ = 0, max_prompt_ = 0, cache_layer_elems_ = 0;
  // Decode passes of a single-GPU shard replay a CUDA graph per (tokens, sequences): every input
  // the graph reads lives at fixed device addresses (meta_, the caches, the activations).
  // COMPUTRON_DECODE_GRAPH=0 turns this off; COMPUTRON_SKINNY_ROWS=N sets the largest product
  // that skips cuBLAS (0: cuBLAS always).
  bool use_graphs_ = true;
  int skinny_rows_ = 16;
  // COMPUTRON_DECODE_FUSE=0: skinny products without the q/k/v split, SwiGLU or bias + ReLU in
  // their epilogues (separate kernels after them).
  bool fuse_epilogues_ = true;
  int logits_row_offset_ = 0;  // first logits row this pass writes (a prefill split into passes)
  bool fused_attention_ = true;  // prefill attention by the fused kernel (fusedPrefillAttention)
  int prefill_tiles_ = 0;        // tiles of this prefill pass's fused attention
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs_;
  // The peer group serves this pass (set at the start of forward()).
  bool peer_active_ = false;
  std::int64_t peer_limit_ = 0;
  bool owns_workspace_ = true;
  SegmentWait segment_wait_;
  void waitSegment(int segment) const {
    if (segment_wait_) segment_wait_(segment);
  }
  void dropGraphs();
};

}  // namespace computron::model
