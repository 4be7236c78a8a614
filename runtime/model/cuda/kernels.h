// Decoder kernels. Activations of the residual stream are fp32 (accuracy against an fp32
// reference, and exact TP all-reduces); inputs to matrix products are the model dtype (F16 or
// BF16). Each launcher takes the model dtype and dispatches to the typed kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/model_spec.h"
#include "runtime/model/prefill_tiles.h"

namespace computron::model::kernels {

// residual[n] = embedding rows of tokens[n] held by this rank (vocab rows [vocab_begin,
// vocab_begin + local_vocab)), zeros for tokens of other ranks.
void embedTokens(DType dtype, const void* table, const int* tokens, int num_tokens, int hidden, int vocab_begin,
                 int local_vocab, float* residual, cudaStream_t stream);
// residual[n] += table[pos[n] + position_offset] (OPT's learned positions are offset by 2).
void addPositions(DType dtype, const void* table, const int* positions, int position_offset, int num_tokens, int hidden,
                  float* residual, cudaStream_t stream);
// out = norm(residual) in the model dtype, over the rows named by `rows` (or all when null).
void layerNorm(DType dtype, const float* residual, const int* rows, int num_rows, int hidden, const void* weight,
               const void* bias, float eps, void* out, cudaStream_t stream);
void rmsNorm(DType dtype, const float* residual, const int* rows, int num_rows, int hidden, const void* weight,
             float eps, void* out, cudaStream_t stream);
// residual += projection (+ bias), the projection being a row-parallel product in fp32.
void addResidual(DType dtype, float* residual, const float* projection, const void* bias, int num_tokens, int hidden,
                 cudaStream_t stream);
// In place: x = relu(x + bias).
void biasRelu(DType dtype, void* x, const void* bias, int num_tokens, int width, cudaStream_t stream);
// out[n, j] = silu(gate_up[n, j]) * gate_up[n, width + j].
void swiGlu(DType dtype, const void* gate_up, void* out, int num_tokens, int width, cudaStream_t stream);
// Splits the fused q|k|v product per token: adds biases (when given: OPT, Qwen2), rotates q and k
// (rotary families, HF's rotate-half convention) and writes q to `q` [n, heads, hd] and k, v into the caches
// [slot, max_seq, kv_heads, hd] at (slot[n], pos[n]).
struct QkvLayout {
  int heads = 0, kv_heads = 0, head_dim = 0, max_seq = 0;
  bool rotary = false;
  float rope_theta = 10000.f;
};
// per_pair: the older one-pair-per-thread kernel (checks compare the two).
void splitQkv(DType dtype, const void* qkv, const void* bias, const int* slots, const int* positions, int num_tokens,
              const QkvLayout& layout, void* q, void* k_cache, void* v_cache, cudaStream_t stream, bool per_pair = false);
// Causal softmax of scores [rows, len, len] (fp32) into probs (model dtype), zeros above the diagonal.
void causalSoftmax(DType dtype, const float* scores, void* probs, int matrices, int len, cudaStream_t stream);
// Prefill attention, fused and causal: every query row r of a sequence attends over its cache
// rows [0, r] (the prompt's q/k/v were just written there by splitQkv), with the softmax kept on
// chip. The work is cut into tiles of kPrefillAttentionTile query rows; a tile is 4 ints
// {first token of the sequence in q and out, sequence length, cache slot, first query row}.
// The tiles are built on the host by prefillAttentionTiles (runtime/model/prefill_tiles.h).
// Whether the fused kernel handles this head dimension (64 or 128).
bool prefillAttentionSupports(int head_dim);
void prefillAttention(DType dtype, const void* q, const void* k_cache, const void* v_cache, const int* tiles, int num_tiles,
                      const QkvLayout& layout, float scale, void* out, cudaStream_t stream);
// Decode attention: one query token per sequence over its cached keys [0, context[n]). The
// context is split into chunks over several blocks when the (kv head, sequence) blocks alone
// would not fill the GPU; `partial` then holds decodeAttentionPartialFloats floats.
void decodeAttention(DType dtype, const void* q, const void* k_cache, const void* v_cache, const int* slots,
                     const int* context, int num_tokens, const QkvLayout& layout, float scale, void* out, float* partial,
                     cudaStream_t stream);
int decodeAttentionSplits(int kv_heads, int num_tokens, int max_seq);
// Floats of the partial buffer for any batch of 1..max_tokens decode tokens (0 when none splits).
std::int64_t decodeAttentionPartialFloats(int heads, int kv_heads, int head_dim, int max_tokens, int max_seq);
// Largest context decodeAttention accepts for this layout.
int decodeAttentionMaxContext(int heads, int kv_heads);
// Decode products: y[rows, out] = x[rows, in] w[out, in]^T for 1..kSkinnyMaxRows rows on the
// tensor cores, fp32 accumulation; y in fp32 or the model dtype. `in` must be a multiple of 8.
// With relu_bias (model-dtype y only): y = relu(y + relu_bias), biasRelu's rounding.
constexpr int kSkinnyMaxRows = 32;
void skinnyGemm(DType dtype, const void* x, const void* w, void* y, bool y_f32, int rows, int out_features, int in_features,
                cudaStream_t stream, const void* relu_bias = nullptr);
// The same product with the following kernel in its epilogue: silu(gate) * up of a fused
// gate|up matrix [2 * width, in] into out [rows, width] (swiGlu), and the q/k/v split with bias
// and rotary into q and the caches (splitQkv). Results equal the unfused pair's.
void skinnyGemmSwiGlu(DType dtype, const void* x, const void* w_gate_up, void* out, int rows, int width, int in_features,
                      cudaStream_t stream);
void skinnyGemmQkv(DType dtype, const void* x, const void* w_qkv, const void* bias, const int* slots, const int* positions,
                   int rows, int in_features, const QkvLayout& layout, void* q, void* k_cache, void* v_cache,
                   cudaStream_t stream);
// residual += projection (+ projection_bias), then out = LayerNorm (weight, bias) or RMSNorm
// (weight) of residual: addResidual followed by layerNorm / rmsNorm in one kernel.
void addResidualNorm(DType dtype, bool layer_norm, float* residual, const float* projection, const void* projection_bias,
                     int num_tokens, int hidden, const void* weight, const void* bias, float eps, void* out,
                     cudaStream_t stream);
// logits[b, r * local_vocab + j] = gathered[r, b, j].
void interleaveVocab(const float* gathered, float* logits, int tp, int batch, int local_vocab, cudaStream_t stream);
// Picks one token per row. temperature <= 0: greedy (first index of the maximum). Otherwise
// softmax(logits / temperature) restricted to the top_k (0: all) tokens and then to the
// smallest set whose probability reaches top_p, sampled with a counter-based generator
// seeded by (seed, row, step), so runs repeat exactly.
void sampleTokens(const float* logits, int batch, int vocab, float temperature, int top_k, float top_p,
                  std::uint64_t seed, int step, int* tokens, cudaStream_t stream);
// Deterministic uniform fill for benchmark weights: values in [-amplitude, amplitude), or all
// `constant` when amplitude is 0.
void fillUniform(DType dtype, void* data, std::int64_t elements, std::uint64_t seed, float amplitude, float constant,
                 cudaStream_t stream);

// Copies `bytes` (a multiple of 4) from pinned, mapped host memory with a kernel on `stream`: the
// executor's small per-pass uploads must not queue on the host-to-device copy engine behind a
// multi-gigabyte weight load to the same GPU (layer-pipelined execution).
void uploadMapped(void* dst, const void* mapped_host, std::int64_t bytes, cudaStream_t stream);

// The other way: `bytes` (a multiple of 4) of device memory written by a kernel into pinned,
// mapped host memory (visible to the host once `stream` is synchronized). The sampled tokens of
// every pass go this way, so a pass never waits for a copy engine that a weight load keeps busy.
void downloadMapped(void* mapped_host, const void* src, std::int64_t bytes, cudaStream_t stream);

}  // namespace computron::model::kernels
