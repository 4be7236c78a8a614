// The registry of decoder families. Traits follow each family's transformers modeling file
// (modeling_opt.py, modeling_llama.py, modeling_qwen2.py, modeling_mistral.py).
#include "common/model_family.h"

#include <stdexcept>

namespace computron {
namespace {

constexpr TensorNaming kOptNames{
    .root = "model.decoder.",
    .attn_norm = "self_attn_layer_norm",
    .q = "self_attn.q_proj",
    .k = "self_attn.k_proj",
    .v = "self_attn.v_proj",
    .o = "self_attn.out_proj",
    .mlp_norm = "final_layer_norm",
    .gate = "",
    .up = "fc1",
    .down = "fc2",
    .final_norm = "final_layer_norm",
};

// Llama, Qwen2 and Mistral checkpoints share these names.
constexpr TensorNaming kLlamaNames{
    .root = "model.",
    .attn_norm = "input_layernorm",
    .q = "self_attn.q_proj",
    .k = "self_attn.k_proj",
    .v = "self_attn.v_proj",
    .o = "self_attn.o_proj",
    .mlp_norm = "post_attention_layernorm",
    .gate = "mlp.gate_proj",
    .up = "mlp.up_proj",
    .down = "mlp.down_proj",
    .final_norm = "norm",
};

constexpr std::string_view kOptTypes[] = {"opt"};
constexpr std::string_view kOptArchitectures[] = {"OPTForCausalLM"};
constexpr ModelFamily kOpt{
    .arch = Arch::kOpt,
    .name = "opt",
    .hf_model_types = kOptTypes,
    .hf_architectures = kOptArchitectures,
    .norm = NormKind::kLayerNorm,
    .mlp = MlpKind::kRelu,
    .positions = PositionKind::kLearned,
    .position_offset = 2,
    .qkv_bias = true,
    .out_bias = true,
    .mlp_bias = true,
    .tie_embeddings_default = true,
    .sliding_window = SlidingWindowKey::kNone,
    .ffn_key = "ffn_dim",
    .norm_eps_key = "",
    .default_norm_eps = 1e-5f,
    .default_rope_theta = 0.f,
    .names = kOptNames,
};

constexpr std::string_view kLlamaTypes[] = {"llama"};
constexpr std::string_view kLlamaArchitectures[] = {"LlamaForCausalLM"};
constexpr ModelFamily kLlama{
    .arch = Arch::kLlama,
    .name = "llama",
    .hf_model_types = kLlamaTypes,
    .hf_architectures = kLlamaArchitectures,
    .norm = NormKind::kRmsNorm,
    .mlp = MlpKind::kSwiGlu,
    .positions = PositionKind::kRotary,
    .position_offset = 0,
    .qkv_bias = false,
    .out_bias = false,
    .mlp_bias = false,
    .tie_embeddings_default = false,
    .sliding_window = SlidingWindowKey::kNone,
    .ffn_key = "intermediate_size",
    .norm_eps_key = "rms_norm_eps",
    .default_norm_eps = 1e-6f,
    .default_rope_theta = 10000.f,
    .names = kLlamaNames,
};

// Llama with biases on q, k and v only (Qwen2Attention: q/k/v_proj bias=True, o_proj bias=False).
constexpr std::string_view kQwen2Types[] = {"qwen2"};
constexpr std::string_view kQwen2Architectures[] = {"Qwen2ForCausalLM"};
constexpr ModelFamily kQwen2{
    .arch = Arch::kQwen2,
    .name = "qwen2",
    .hf_model_types = kQwen2Types,
    .hf_architectures = kQwen2Architectures,
    .norm = NormKind::kRmsNorm,
    .mlp = MlpKind::kSwiGlu,
    .positions = PositionKind::kRotary,
    .position_offset = 0,
    .qkv_bias = true,
    .out_bias = false,
    .mlp_bias = false,
    .tie_embeddings_default = false,
    .sliding_window = SlidingWindowKey::kGatedByUseFlag,
    .ffn_key = "intermediate_size",
    .norm_eps_key = "rms_norm_eps",
    .default_norm_eps = 1e-6f,
    .default_rope_theta = 10000.f,
    .names = kLlamaNames,
};

// Llama with a sliding attention window (null in the later v0.2 and v0.3 configs).
constexpr std::string_view kMistralTypes[] = {"mistral"};
constexpr std::string_view kMistralArchitectures[] = {"MistralForCausalLM"};
constexpr ModelFamily kMistral{
    .arch = Arch::kMistral,
    .name = "mistral",
    .hf_model_types = kMistralTypes,
    .hf_architectures = kMistralArchitectures,
    .norm = NormKind::kRmsNorm,
    .mlp = MlpKind::kSwiGlu,
    .positions = PositionKind::kRotary,
    .position_offset = 0,
    .qkv_bias = false,
    .out_bias = false,
    .mlp_bias = false,
    .tie_embeddings_default = false,
    .sliding_window = SlidingWindowKey::kSlidingWindow,
    .ffn_key = "intermediate_size",
    .norm_eps_key = "rms_norm_eps",
    .default_norm_eps = 1e-6f,
    .default_rope_theta = 10000.f,
    .names = kLlamaNames,
};

std::string joined(std::span<const std::string_view> ModelFamily::*list) {
  std::string out;
  for (const ModelFamily* family : modelFamilies())
    for (std::string_view name : family->*list) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

}  // namespace

const ModelFamily& modelFamily(Arch arch) {
  switch (arch) {
    case Arch::kOpt:
      return kOpt;
    case Arch::kLlama:
      return kLlama;
    case Arch::kQwen2:
      return kQwen2;
    case Arch::kMistral:
      return kMistral;
  }
  throw std::logic_error("modelFamily: unknown Arch");
}

const std::vector<const ModelFamily*>& modelFamilies() {
  static const std::vector<const ModelFamily*> all = {&kOpt, &kLlama, &kQwen2, &kMistral};
  return all;
}

const ModelFamily* familyForHfModelType(std::string_view model_type) {
  for (const ModelFamily* family : modelFamilies())
    for (std::string_view type : family->hf_model_types)
      if (type == model_type) return family;
  return nullptr;
}

const ModelFamily* familyForHfArchitecture(std::string_view architecture) {
  for (const ModelFamily* family : modelFamilies())
    for (std::string_view name : family->hf_architectures)
      if (name == architecture) return family;
  return nullptr;
}

std::string supportedHfModelTypes() { return joined(&ModelFamily::hf_model_types); }

std::string supportedHfArchitectures() { return joined(&ModelFamily::hf_architectures); }

}  // namespace computron
