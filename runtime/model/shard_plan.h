// Where each weight of one shard (tp_rank, pp_rank) of a model lives in that shard's host buffer,
// and which slice of which checkpoint tensor fills it.
//
// Split rules (Megatron-style, so a decoder layer needs two all-reduces and no other traffic):
//  - column-parallel (output features split over TP ranks): q, k, v (by heads; grouped k/v by kv
//    heads), OPT fc1, SwiGLU gate and up, with their biases (OPT's, Qwen2's q/k/v);
//  - row-parallel (input features split): OPT out_proj and fc2, Llama o_proj and down_proj; the
//    partial sums are all-reduced and the (unsplit) bias is added once after the all-reduce;
//  - vocab-parallel: the token embedding and the LM head are split by vocabulary rows. Each rank
//    looks up the tokens in its rows (zeros elsewhere) and an all-reduce completes the embedding;
//    each rank computes logits for its rows and an all-gather completes them;
//  - replicated: layer norms, OPT's learned position table, row-parallel biases;
//  - pipeline: decoder layers split over stages as evenly as possible, earlier stages taking the
//    remainder; embeddings on the first stage, final norm and LM head on the last. A tied LM head
//    (OPT) is the embedding itself when one stage holds both, and a copy on the last stage when
//    PP > 1.
//
// Layout of the buffer: prefix (embeddings), then one contiguous block per decoder layer (the same
// size for every layer, so a loader can report layer i ready when its bytes have arrived), then
// the suffix (final norm, LM head). Fused tensors: q|k|v rows in one matrix, Llama gate|up rows in
// one matrix, so each is a single matrix product. No padding: every tensor's size is a multiple of
// 16 bytes for the shapes we accept, so all tensors stay 16-byte aligned.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/model_spec.h"
#include "runtime/model/safetensors.h"

namespace computron::model {

enum class Split {
  kReplicated,  // whole tensor on every TP rank
  kRows,        // dim 0 split over TP ranks (column-parallel weight, its bias, vocab-parallel)
  kCols,        // dim 1 split over TP ranks (row-parallel weight)
};

// How random weights of this tensor are drawn (benchmarks and tests without a checkpoint).
enum class InitKind { kMatrix, kNormWeight, kZero };

struct TensorSource {
  std::string hf_name;                  // checkpoint tensor name (with the "model." prefix)
  std::vector<std::int64_t> full_shape;  // expected shape in the checkpoint
  Split split = Split::kReplicated;
  std::int64_t dest_offset = 0;  // byte offset in the shard buffer
};

struct ShardTensor {
  std::string name;                // our name, e.g. "layers.3.qkv.weight"
  std::vector<std::int64_t> shape;  // local (per-shard) shape
  std::int64_t offset = 0;          // bytes into the shard buffer
  std::int64_t bytes = 0;
  InitKind init = InitKind::kMatrix;
  std::vector<TensorSource> sources;  // concatenated along dim 0
};

// Byte offsets of one decoder layer's tensors in the shard buffer; -1 where the family has no such
// tensor (model_family.h: RMSNorm has no bias; Llama and Mistral have no biases, Qwen2 only q/k/v).
struct LayerWeights {
  std::int64_t attn_norm_weight = -1, attn_norm_bias = -1;
  std::int64_t qkv_weight = -1, qkv_bias = -1;  // [(q + 2 kv) local rows, hidden]
  std::int64_t out_weight = -1, out_bias = -1;  // [hidden, q local cols]; bias unsplit
  std::int64_t mlp_norm_weight = -1, mlp_norm_bias = -1;
  std::int64_t up_weight = -1, up_bias = -1;      // fc1 [ffn local, hidden]; SwiGLU gate|up [2 ffn local, hidden]
  std::int64_t down_weight = -1, down_bias = -1;  // [hidden, ffn local]; bias unsplit
};

struct ShardPlan {
  ModelSpec spec;
  int tp = 1, pp = 1, tp_rank = 0, pp_rank = 0;
  int first_layer = 0, num_layers = 0;
  bool has_embeddings = false, has_lm_head = false;

  // Per-rank sizes.
  std::int64_t local_heads = 0, local_kv_heads = 0, local_ffn = 0;
  std::int64_t vocab_begin = 0, local_vocab = 0;  // vocab rows held (embedding and LM head)

  std::vector<ShardTensor> tensors;
  std::int64_t token_embedding = -1;     // [local_vocab, hidden]
  std::int64_t position_embedding = -1;  // OPT: [max_positions + 2, hidden]
  std::vector<LayerWeights> layers;      // num_layers entries
  std::int64_t final_norm_weight = -1, final_norm_bias = -1;
  std::int64_t lm_head = -1;  // [local_vocab, hidden]; may point at token_embedding (tied, PP = 1)

  std::int64_t prefix_bytes = 0, layer_bytes = 0, suffix_bytes = 0, total_bytes = 0;
};

// Throws ConfigError when the split is impossible (heads, kv heads, ffn or vocab not divisible
// by tp; more stages than layers; hidden not a multiple of 8; unsupported OPT projection).
ShardPlan planShard(const ModelSpec& spec, int tp, int pp, int tp_rank, int pp_rank);

// Fills `dest` (exactly plan.total_bytes) from the checkpoint: checks every tensor is present
// with the expected shape and a float dtype before reading anything, then reads each slice,
// converting to the model's dtype when the checkpoint's differs.
void loadShard(const Checkpoint& checkpoint, const ShardPlan& plan, std::span<std::byte> dest);

// Deterministic random weights with the model's shapes (N(0, 0.02)-like uniform matrices, unit
// norm weights, zero biases). The values of a full tensor do not depend on the split, so shards
// of one seed assemble into the same model for any TP x PP.
void fillRandomShard(const ShardPlan& plan, std::uint64_t seed, std::span<std::byte> dest);

// The random value of element `index` of full (unsplit) checkpoint tensor `hf_name`.
float randomWeight(std::uint64_t seed, const std::string& hf_name, std::uint64_t index, InitKind init);

}  // namespace computron::model
