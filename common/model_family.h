// What one decoder family is made of, described once: norms, activation, positions, which
// projections carry biases, how its Hugging Face config and tensors are named. Byte accounting
// (model_spec.cpp), config.json reading, the shard planner (runtime/model/shard_plan.cpp) and the
// CUDA decoder (runtime/model/cuda/) read these traits instead of comparing the family.
//
// Adding a family: a new Arch value, its ModelFamily in model_family.cpp, and its case in
// modelFamily() (the switch has no default, so -Wswitch under -Werror names every place that
// still lacks the family).
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace computron {

enum class Arch { kOpt, kLlama, kQwen2, kMistral };

enum class NormKind {
  kLayerNorm,  // (x - mean) / sqrt(var + eps) * weight + bias
  kRmsNorm,    // x / sqrt(mean(x^2) + eps) * weight
};

enum class MlpKind {
  kRelu,    // fc2(relu(fc1(x) + b1)) + b2
  kSwiGlu,  // down(silu(gate(x)) * up(x))
};

enum class PositionKind {
  kLearned,  // a table of max_positions + position_offset rows added to the token embedding
  kRotary,   // rotate-half rotary on q and k (no parameters)
};

// Hugging Face tensor names of one family, each joined as root + "layers.N." + name + ".weight"
// (or ".bias") inside the decoder, root + name + ".weight" outside it.
struct TensorNaming {
  std::string_view root;        // "model.decoder." (OPT), "model." (Llama and its kin)
  std::string_view attn_norm;   // "self_attn_layer_norm" / "input_layernorm"
  std::string_view q, k, v, o;  // "self_attn.q_proj" ...; o: "self_attn.out_proj" / "self_attn.o_proj"
  std::string_view mlp_norm;    // "final_layer_norm" / "post_attention_layernorm"
  std::string_view gate;        // SwiGLU only: "mlp.gate_proj"
  std::string_view up;          // "fc1" / "mlp.up_proj"
  std::string_view down;        // "fc2" / "mlp.down_proj"
  std::string_view final_norm;  // "final_layer_norm" / "norm"
};

// How a family says whether it uses a sliding attention window in config.json.
enum class SlidingWindowKey {
  kNone,            // no sliding window
  kSlidingWindow,   // "sliding_window": N, or null for none (Mistral)
  kGatedByUseFlag,  // "sliding_window" counts only when "use_sliding_window" is true (Qwen2)
};

struct ModelFamily {
  Arch arch;
  std::string_view name;                          // "opt", "llama", "qwen2", "mistral"
  std::span<const std::string_view> hf_model_types;    // config.json "model_type"
  std::span<const std::string_view> hf_architectures;  // config.json "architectures"
  NormKind norm;
  MlpKind mlp;
  PositionKind positions;
  int position_offset;  // learned positions: rows before position 0 (OPT: 2, a fairseq leftover)
  bool qkv_bias;        // q, k and v projections carry biases
  bool out_bias;        // the attention output projection carries a bias
  bool mlp_bias;        // the MLP projections carry biases
  bool tie_embeddings_default;  // tie_word_embeddings when config.json does not say
  SlidingWindowKey sliding_window;
  // config.json keys: the MLP width, the norm epsilon ("" when fixed), and their defaults.
  std::string_view ffn_key;       // "ffn_dim" / "intermediate_size"
  std::string_view norm_eps_key;  // "rms_norm_eps"; "" for OPT (LayerNorm eps fixed at 1e-5)
  float default_norm_eps;
  float default_rope_theta;
  TensorNaming names;

  bool normHasBias() const { return norm == NormKind::kLayerNorm; }
  bool rotary() const { return positions == PositionKind::kRotary; }
  bool learnedPositions() const { return positions == PositionKind::kLearned; }
  // Width of the up product: the fused gate|up matrix of SwiGLU is twice the MLP width.
  int upMatrices() const { return mlp == MlpKind::kSwiGlu ? 2 : 1; }
  // Matrices of width ffn in one layer's MLP (fc1 + fc2; gate + up + down).
  int mlpMatrices() const { return mlp == MlpKind::kSwiGlu ? 3 : 2; }
};

// The family of `arch`; every Arch value has one.
const ModelFamily& modelFamily(Arch arch);
// Every family, in Arch order (the registry; docs and error messages list it).
const std::vector<const ModelFamily*>& modelFamilies();
// The family whose config.json "model_type" or "architectures" entry is `name`; null when none.
const ModelFamily* familyForHfModelType(std::string_view model_type);
const ModelFamily* familyForHfArchitecture(std::string_view architecture);
// "opt, llama, qwen2, mistral" and "OPTForCausalLM, LlamaForCausalLM, ..." for messages.
std::string supportedHfModelTypes();
std::string supportedHfArchitectures();

}  // namespace computron
