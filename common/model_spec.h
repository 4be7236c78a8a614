// Model architecture and exact parameter bytes, per layer and per shard for any TP x PP.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/model_family.h"
#include "common/types.h"

namespace computron {

enum class DType { kF16, kBF16, kF32 };

int dtypeBytes(DType d);
std::string dtypeName(DType d);  // Hugging Face spelling: "float16", "bfloat16", "float32"
std::string archName(Arch a);    // the family's name: "opt", "llama", "qwen2", "mistral"
// Parses a Hugging Face dtype name ("float16", "bfloat16", "float32"); nullopt when unknown.
std::optional<DType> dtypeFromName(const std::string& name);

// Where a shard sits: tensor rank and pipeline stage, plus the decoder layers it holds.
struct ShardLayout {
  int tp_rank = 0;
  int pp_rank = 0;
  int first_layer = 0;        // inclusive
  int num_layers = 0;         // decoder layers on this stage
  bool has_embeddings = false;  // first stage
  bool has_lm_head = false;     // last stage (final norm + LM head)
  std::int64_t params = 0;      // parameters held by this shard
  std::int64_t bytes = 0;       // params * dtype bytes
  // Bytes of each decoder layer of this shard in order (embeddings counted into the first
  // entry's prefix below, LM head into the suffix) so loads can report per-layer readiness.
  std::int64_t prefix_bytes = 0;  // embeddings before the first layer
  std::int64_t layer_bytes = 0;   // one decoder layer's share on this shard
  std::int64_t suffix_bytes = 0;  // final norm + LM head after the last layer
};

struct ModelSpec {
  std::string name;
  Arch arch = Arch::kOpt;
  int num_layers = 0;
  int hidden = 0;
  int num_heads = 0;
  int num_kv_heads = 0;  // == num_heads without grouped-query attention
  int ffn_hidden = 0;    // OPT: fc1 width; Llama and kin: intermediate_size
  int vocab = 0;
  int max_positions = 0;  // OPT learned positions (table has max_positions + position offset rows)
  DType dtype = DType::kF16;
  bool tie_embeddings = true;  // OPT: LM head shares the token embedding; Llama: separate
  // Numbers the decoder needs beyond the shapes (no bytes depend on them).
  float norm_eps = 1e-5f;       // LayerNorm / RMSNorm epsilon (rms_norm_eps)
  float rope_theta = 10000.f;   // rotary base (rotary families)
  int sliding_window = 0;       // attention window in tokens (Mistral); 0: full attention
  int word_embed_proj_dim = 0; // OPT-350m projects embeddings (0 = same as hidden)
  // OPT's do_layer_norm_before. OPT-350m normalises after attention and MLP instead of before.
  bool layer_norm_before = true;
  // OPT-350m (post-LN) has no final layer norm; every other preset has one.
  bool final_layer_norm = true;

  const ModelFamily& family() const { return modelFamily(arch); }
  int headDim() const { return hidden / num_heads; }
  // Width of the token embedding and LM head rows: word_embed_proj_dim when set, else hidden.
  int embedDim() const { return word_embed_proj_dim > 0 ? word_embed_proj_dim : hidden; }
  bool hasEmbedProjection() const { return embedDim() != hidden; }
  // Vocabulary rows once padded up to a multiple of tp, so every rank of a vocab-parallel
  // embedding or LM head holds the same number of rows (paddedVocab(tp) / tp each).
  std::int64_t paddedVocab(int tp) const;

  // Exact parameter counts of the unsharded model.
  std::int64_t embeddingParams() const;  // token (+ position, + projections) embeddings
  std::int64_t layerParams() const;      // one decoder layer
  std::int64_t headParams() const;       // final norm + LM head (0 for a tied head's weight)
  std::int64_t totalParams() const;
  std::int64_t totalBytes() const { return totalParams() * dtypeBytes(dtype); }

  // Checks that a TP x PP split is possible; throws ConfigError naming `where` when not.
  void validateParallel(int tp, int pp, const std::string& where) const;
  // The shard at (tp_rank, pp_rank). Layers are split over stages as evenly as possible, the
  // earlier stages taking the remainder. See model_spec.cpp for where embeddings and head go.
  ShardLayout shard(int tp, int pp, int tp_rank, int pp_rank) const;
  // Largest shard in bytes over all ranks of a split.
  std::int64_t maxShardBytes(int tp, int pp) const;

  // KV-cache bytes per token for the whole model (all layers, K and V).
  std::int64_t kvBytesPerToken() const;
  // Dense FLOPs per token of a forward pass (2 * matmul params), excluding attention scores.
  double flopsPerToken() const;
};

// Presets: opt-125m ... opt-66b, llama-2-7b/13b/70b, llama-3-8b/70b, qwen2-0.5b/7b, mistral-7b.
ModelSpec modelPreset(const std::string& name);
std::vector<std::string> modelPresetNames();
bool isModelPreset(const std::string& name);
// From a Hugging Face config.json of a registered family (model_family.h: OPTForCausalLM,
// LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM); errors name the file and key.
ModelSpec modelFromHfConfig(const std::string& path);

}  // namespace computron
