// Parameter accounting for the decoder families of model_family.h, and how a TP x PP split places them.
//
// Sharding follows Megatron-LM:
//   - decoder layers are split over pipeline stages as evenly as possible, earlier stages taking
//     the remainder;
//   - column-parallel q/k/v, fc1 and gate/up split weight and bias 1/tp; row-parallel out_proj,
//     o_proj, fc2 and down split the weight 1/tp but every rank holds the whole bias (it is added
//     once, after the all-reduce); norms are replicated;
//   - the token embedding is vocab-parallel over the TP ranks of the first stage, the vocabulary
//     padded up to a multiple of tp; OPT's learned position table and OPT-350m's project_in are
//     replicated on each TP rank of the first stage;
//   - the final norm, OPT-350m's project_out and the vocab-parallel LM head sit on the last stage.
//     A tied head with pp == 1 shares the embedding matrix; with pp > 1 the last stage keeps its
//     own copy (Megatron's word-embedding copy on the last stage), which costs extra bytes.
#include "common/model_spec.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "common/json_reader.h"

namespace computron {

int dtypeBytes(DType d) {
  switch (d) {
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kF32:
      return 4;
  }
  throw std::logic_error("dtypeBytes: unknown DType");
}

std::string dtypeName(DType d) {
  switch (d) {
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF32:
      return "float32";
  }
  throw std::logic_error("dtypeName: unknown DType");
}

std::optional<DType> dtypeFromName(const std::string& name) {
  if (name == "float16") return DType::kF16;
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float32") return DType::kF32;
  return std::nullopt;
}

std::string archName(Arch a) { return std::string(modelFamily(a).name); }

namespace {

// Parameters of one decoder layer held by each of `tp` tensor-parallel ranks (tp = 1: the whole
// layer). Widths divide exactly because validateParallel checks heads, kv heads and ffn.
std::int64_t layerParamsPerRank(const ModelSpec& m, int tp) {
  const ModelFamily& family = m.family();
  const std::int64_t h = m.hidden;
  const std::int64_t f_part = m.ffn_hidden / tp;
  const std::int64_t q_part = static_cast<std::int64_t>(m.num_heads) * m.headDim() / tp;
  const std::int64_t kv_part = static_cast<std::int64_t>(m.num_kv_heads) * m.headDim() / tp;
  // Column-parallel q, k, v (weight and bias split); row-parallel o (bias replicated).
  const std::int64_t attention = h * (q_part + 2 * kv_part) + q_part * h +
                                 (family.qkv_bias ? q_part + 2 * kv_part : 0) + (family.out_bias ? h : 0);
  // Column-parallel fc1 or gate and up, row-parallel fc2 or down, the same way.
  const std::int64_t mlp = family.mlpMatrices() * h * f_part + (family.mlp_bias ? family.upMatrices() * f_part + h : 0);
  const std::int64_t norms = 2 * (family.normHasBias() ? 2 * h : h);  // replicated
  return attention + mlp + norms;
}

// Rows of the token embedding (or LM head) on each TP rank, times their width.
std::int64_t vocabParallelParamsPerRank(const ModelSpec& m, int tp) {
  return m.paddedVocab(tp) / tp * m.embedDim();
}

std::int64_t positionTableParams(const ModelSpec& m) {
  const ModelFamily& family = m.family();
  if (!family.learnedPositions()) return 0;
  return static_cast<std::int64_t>(m.max_positions + family.position_offset) * m.hidden;
}

// project_in (first stage) and project_out (last stage) each; both are bias-free.
std::int64_t embedProjectionParams(const ModelSpec& m) {
  return m.hasEmbedProjection() ? static_cast<std::int64_t>(m.embedDim()) * m.hidden : 0;
}

std::int64_t finalNormParams(const ModelSpec& m) {
  if (!m.final_layer_norm) return 0;
  return (m.family().normHasBias() ? 2 : 1) * static_cast<std::int64_t>(m.hidden);
}

// Weights that are multiplied (not looked up or added) in one decoder layer.
std::int64_t layerMatmulParams(const ModelSpec& m) {
  const std::int64_t h = m.hidden;
  const std::int64_t q_width = static_cast<std::int64_t>(m.num_heads) * m.headDim();
  const std::int64_t kv_width = static_cast<std::int64_t>(m.num_kv_heads) * m.headDim();
  return 2 * h * q_width + 2 * h * kv_width + m.family().mlpMatrices() * h * m.ffn_hidden;
}

struct StageLayers {
  int first_layer;
  int num_layers;
};

StageLayers stageLayers(int num_layers, int pp, int pp_rank) {
  const int base = num_layers / pp;
  const int remainder = num_layers % pp;
  return {pp_rank * base + std::min(pp_rank, remainder), base + (pp_rank < remainder ? 1 : 0)};
}

}  // namespace

std::int64_t ModelSpec::paddedVocab(int tp) const {
  return (static_cast<std::int64_t>(vocab) + tp - 1) / tp * tp;
}

std::int64_t ModelSpec::embeddingParams() const {
  return vocabParallelParamsPerRank(*this, 1) + positionTableParams(*this) + 2 * embedProjectionParams(*this);
}

std::int64_t ModelSpec::layerParams() const { return layerParamsPerRank(*this, 1); }

std::int64_t ModelSpec::headParams() const {
  return finalNormParams(*this) + (tie_embeddings ? 0 : vocabParallelParamsPerRank(*this, 1));
}

std::int64_t ModelSpec::totalParams() const {
  return embeddingParams() + num_layers * layerParams() + headParams();
}

void ModelSpec::validateParallel(int tp, int pp, const std::string& where) const {
  auto fail = [&](const std::string& message) { throw ConfigError(where + ": " + message); };
  const std::string tp_text = "tp=" + std::to_string(tp);
  if (tp < 1) fail("tp must be at least 1, got " + std::to_string(tp));
  if (pp < 1) fail("pp must be at least 1, got " + std::to_string(pp));
  if (num_heads % tp != 0)
    fail(tp_text + " does not divide num_heads=" + std::to_string(num_heads) + " of " + name);
  if (num_kv_heads % tp != 0)
    fail(tp_text + " does not divide num_kv_heads=" + std::to_string(num_kv_heads) + " of " + name +
         " (with grouped-query attention each rank holds whole KV heads, so tp must divide the KV head count)");
  if (ffn_hidden % tp != 0)
    fail(tp_text + " does not divide ffn_hidden=" + std::to_string(ffn_hidden) + " of " + name);
  if (pp > num_layers)
    fail("pp=" + std::to_string(pp) + " exceeds num_layers=" + std::to_string(num_layers) + " of " + name +
         " (every stage needs at least one layer)");
}

ShardLayout ModelSpec::shard(int tp, int pp, int tp_rank, int pp_rank) const {
  validateParallel(tp, pp, name);
  if (tp_rank < 0 || tp_rank >= tp || pp_rank < 0 || pp_rank >= pp)
    throw std::out_of_range("ModelSpec::shard: rank (" + std::to_string(tp_rank) + ", " +
                            std::to_string(pp_rank) + ") outside tp=" + std::to_string(tp) +
                            " pp=" + std::to_string(pp));
  ShardLayout s;
  s.tp_rank = tp_rank;
  s.pp_rank = pp_rank;
  const StageLayers layers = stageLayers(num_layers, pp, pp_rank);
  s.first_layer = layers.first_layer;
  s.num_layers = layers.num_layers;
  s.has_embeddings = pp_rank == 0;
  s.has_lm_head = pp_rank == pp - 1;

  std::int64_t prefix_params = 0;
  if (s.has_embeddings) {
    prefix_params = vocabParallelParamsPerRank(*this, tp) + positionTableParams(*this) + embedProjectionParams(*this);
  }
  std::int64_t suffix_params = 0;
  if (s.has_lm_head) {
    // A tied head on a single stage reads the embedding matrix already counted in the prefix.
    const bool head_shares_embedding = tie_embeddings && pp == 1;
    suffix_params = finalNormParams(*this) + embedProjectionParams(*this) +
                    (head_shares_embedding ? 0 : vocabParallelParamsPerRank(*this, tp));
  }
  const std::int64_t layer_params = layerParamsPerRank(*this, tp);

  const std::int64_t bytes_per_param = dtypeBytes(dtype);
  s.params = prefix_params + s.num_layers * layer_params + suffix_params;
  s.bytes = s.params * bytes_per_param;
  s.prefix_bytes = prefix_params * bytes_per_param;
  s.layer_bytes = layer_params * bytes_per_param;
  s.suffix_bytes = suffix_params * bytes_per_param;
  return s;
}

std::int64_t ModelSpec::maxShardBytes(int tp, int pp) const {
  validateParallel(tp, pp, name);
  std::int64_t largest = 0;
  for (int pp_rank = 0; pp_rank < pp; ++pp_rank)
    for (int tp_rank = 0; tp_rank < tp; ++tp_rank)
      largest = std::max(largest, shard(tp, pp, tp_rank, pp_rank).bytes);
  return largest;
}

std::int64_t ModelSpec::kvBytesPerToken() const {
  return 2LL * num_layers * num_kv_heads * headDim() * dtypeBytes(dtype);
}

double ModelSpec::flopsPerToken() const {
  const std::int64_t lm_head = static_cast<std::int64_t>(vocab) * embedDim();
  const std::int64_t matmul_params =
      num_layers * layerMatmulParams(*this) + lm_head + 2 * embedProjectionParams(*this);
  return 2.0 * static_cast<double>(matmul_params);
}

// ---- Presets -------------------------------------------------------------------------------

namespace {

ModelSpec optPreset(const std::string& name, int layers, int hidden, int heads, int ffn) {
  ModelSpec m;
  m.name = name;
  m.arch = Arch::kOpt;
  m.num_layers = layers;
  m.hidden = hidden;
  m.num_heads = heads;
  m.num_kv_heads = heads;
  m.ffn_hidden = ffn;
  m.vocab = 50272;
  m.max_positions = 2048;
  m.dtype = DType::kF16;
  m.tie_embeddings = true;
  m.norm_eps = modelFamily(Arch::kOpt).default_norm_eps;
  return m;
}

// Llama and the families shaped like it (Qwen2, Mistral).
struct RotaryShape {
  int layers, hidden, heads, kv_heads, ffn, vocab, max_positions;
  DType dtype;
  float rope_theta, norm_eps;
};

ModelSpec rotaryPreset(const std::string& name, Arch arch, const RotaryShape& shape) {
  ModelSpec m;
  m.name = name;
  m.arch = arch;
  m.num_layers = shape.layers;
  m.hidden = shape.hidden;
  m.num_heads = shape.heads;
  m.num_kv_heads = shape.kv_heads;
  m.ffn_hidden = shape.ffn;
  m.vocab = shape.vocab;
  m.max_positions = shape.max_positions;
  m.dtype = shape.dtype;
  m.tie_embeddings = modelFamily(arch).tie_embeddings_default;
  m.rope_theta = shape.rope_theta;
  m.norm_eps = shape.norm_eps;
  return m;
}

ModelSpec llamaPreset(const std::string& name, int layers, int hidden, int heads, int kv_heads, int ffn,
                      int vocab, int max_positions, DType dtype, float rope_theta) {
  return rotaryPreset(name, Arch::kLlama,
                      {layers, hidden, heads, kv_heads, ffn, vocab, max_positions, dtype, rope_theta, 1e-5f});
}

// Shapes from the published Hugging Face config.json of each checkpoint.
const std::vector<ModelSpec>& presets() {
  static const std::vector<ModelSpec> all = [] {
    ModelSpec opt_350m = optPreset("opt-350m", 24, 1024, 16, 4096);
    opt_350m.word_embed_proj_dim = 512;
    opt_350m.layer_norm_before = false;
    opt_350m.final_layer_norm = false;
    // mistralai/Mistral-7B-v0.1: a 4096-token sliding window over 32768 rotary positions.
    ModelSpec mistral_7b = rotaryPreset("mistral-7b", Arch::kMistral,
                                        {32, 4096, 32, 8, 14336, 32000, 32768, DType::kBF16, 10000.f, 1e-5f});
    mistral_7b.sliding_window = 4096;
    return std::vector<ModelSpec>{
        optPreset("opt-125m", 12, 768, 12, 3072),
        opt_350m,
        optPreset("opt-1.3b", 24, 2048, 32, 8192),
        optPreset("opt-2.7b", 32, 2560, 32, 10240),
        optPreset("opt-6.7b", 32, 4096, 32, 16384),
        optPreset("opt-13b", 40, 5120, 40, 20480),
        optPreset("opt-30b", 48, 7168, 56, 28672),
        optPreset("opt-66b", 64, 9216, 72, 36864),
        llamaPreset("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, DType::kF16, 10000.f),
        llamaPreset("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, DType::kF16, 10000.f),
        llamaPreset("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, DType::kF16, 10000.f),
        llamaPreset("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, DType::kBF16, 500000.f),
        llamaPreset("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, DType::kBF16, 500000.f),
        // Qwen/Qwen2-7B: biases on q, k and v; no sliding window (use_sliding_window: false).
        rotaryPreset("qwen2-7b", Arch::kQwen2,
                     {28, 3584, 28, 4, 18944, 152064, 131072, DType::kBF16, 1000000.f, 1e-6f}),
        mistral_7b,
    };
  }();
  return all;
}

}  // namespace

std::vector<std::string> modelPresetNames() {
  std::vector<std::string> names;
  for (const ModelSpec& m : presets()) names.push_back(m.name);
  return names;
}

bool isModelPreset(const std::string& name) {
  const auto& all = presets();
  return std::any_of(all.begin(), all.end(), [&](const ModelSpec& m) { return m.name == name; });
}

ModelSpec modelPreset(const std::string& name) {
  for (const ModelSpec& m : presets())
    if (m.name == name) return m;
  std::string known;
  for (const std::string& n : modelPresetNames()) known += (known.empty() ? "" : ", ") + n;
  throw ConfigError("unknown model preset \"" + name + "\" (known: " + known + ")");
}

// ---- Hugging Face config.json ----------------------------------------------------------------

namespace {

// Typed access to the keys of one config.json. Errors read "<file>: <key>: <problem>".
class HfConfig {
 public:
  HfConfig(const nlohmann::json& doc, std::string file) : doc_(doc), file_(std::move(file)) {
    if (!doc_.is_object()) throw ConfigError(file_ + ": expected a JSON object at the top level");
  }

  bool has(const std::string& key) const { return doc_.contains(key) && !doc_.at(key).is_null(); }

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw ConfigError(file_ + ": " + key + ": " + message);
  }

  JsonReader reader(const std::string& key) const {
    if (!has(key)) fail(key, "required key is missing");
    return JsonReader(doc_.at(key), file_ + ": " + key);
  }

  // Bounded so that parameter and byte counts stay far inside int64 (docs/scenario.md).
  int positiveInt(const std::string& key) const {
    const std::int64_t v = reader(key).asInt();
    const std::int64_t max = maxOf(key);
    if (v <= 0 || v > max)
      fail(key, "must be a positive integer of at most " + std::to_string(max) + ", got " + std::to_string(v));
    return static_cast<int>(v);
  }
  static std::int64_t maxOf(const std::string& key) {
    if (key == "num_hidden_layers" || key == "num_attention_heads" || key == "num_key_value_heads" || key == "head_dim")
      return 4096;
    if (key == "hidden_size" || key == "word_embed_proj_dim") return 1 << 17;
    if (key == "vocab_size" || key == "max_position_embeddings" || key == "sliding_window") return 1 << 24;
    return 1 << 20;  // ffn sizes and anything else
  }
  int positiveIntOr(const std::string& key, int fallback) const { return has(key) ? positiveInt(key) : fallback; }
  bool boolOr(const std::string& key, bool fallback) const { return has(key) ? reader(key).asBool() : fallback; }
  double positiveNumberOr(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const double v = reader(key).asDouble();
    if (!(v > 0) || v > 1e12) fail(key, "must be a positive number of at most 1e12, got " + std::to_string(v));
    return v;
  }
  std::string string(const std::string& key) const { return reader(key).asString(); }

 private:
  const nlohmann::json& doc_;
  std::string file_;
};

const ModelFamily& hfFamily(const HfConfig& config) {
  if (config.has("model_type")) {
    const std::string type = config.string("model_type");
    if (const ModelFamily* family = familyForHfModelType(type)) return *family;
    config.fail("model_type", "unsupported model type \"" + type + "\" (supported: " + supportedHfModelTypes() + ")");
  }
  if (config.has("architectures")) {
    const JsonReader list = config.reader("architectures");
    std::string seen;
    for (std::size_t i = 0; i < list.size(); ++i) {
      const std::string arch = list.at(i).asString();
      if (const ModelFamily* family = familyForHfArchitecture(arch)) return *family;
      seen += (seen.empty() ? "" : ", ") + arch;
    }
    config.fail("architectures", "unsupported architectures [" + seen + "] (supported: " + supportedHfArchitectures() + ")");
  }
  config.fail("model_type", "required key is missing (and no architectures list to fall back on)");
}

DType hfDtype(const HfConfig& config) {
  // Recent transformers write "dtype"; older ones "torch_dtype".
  const std::string key = config.has("torch_dtype") || !config.has("dtype") ? "torch_dtype" : "dtype";
  const std::string name = config.string(key);
  if (auto dtype = dtypeFromName(name)) return *dtype;
  config.fail(key, "unsupported dtype \"" + name + "\" (supported: float16, bfloat16, float32)");
}

// Architectural switches whose non-default value would change the parameter count in ways this
// accounting does not model; refuse them rather than report wrong bytes.
void rejectUnsupportedVariants(const HfConfig& config, const ModelFamily& family, int hidden, int heads) {
  const std::string name(family.name);
  // Llama's switches; a family without such biases never has them on.
  if (!family.qkv_bias && config.boolOr("attention_bias", false))
    config.fail("attention_bias", name + " with attention biases is not supported");
  if (!family.mlp_bias && config.boolOr("mlp_bias", false)) config.fail("mlp_bias", name + " with MLP biases is not supported");
  if (config.has("head_dim") && config.positiveInt("head_dim") * heads != hidden)
    config.fail("head_dim", "head_dim * num_attention_heads must equal hidden_size");
}

// Tokens one attention window spans; 0 for full attention.
int hfSlidingWindow(const HfConfig& config, const ModelFamily& family) {
  switch (family.sliding_window) {
    case SlidingWindowKey::kNone:
      return 0;
    case SlidingWindowKey::kSlidingWindow:
      return config.positiveIntOr("sliding_window", 0);
    case SlidingWindowKey::kGatedByUseFlag:
      return config.boolOr("use_sliding_window", false) ? config.positiveIntOr("sliding_window", 0) : 0;
  }
  throw std::logic_error("hfSlidingWindow: unknown SlidingWindowKey");
}

// rope_theta at the top level (transformers 4.x) or inside rope_parameters (5.x) / rope_scaling.
float hfRopeTheta(const HfConfig& config, const ModelFamily& family, const nlohmann::json& doc) {
  double theta = config.positiveNumberOr("rope_theta", family.default_rope_theta);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (config.has(key) && doc.at(key).is_object() && doc.at(key).contains("rope_theta")) {
      const double nested = JsonReader(doc.at(key).at("rope_theta"), std::string(key) + ".rope_theta").asDouble();
      if (!(nested > 0)) config.fail(std::string(key) + ".rope_theta", "must be a positive number");
      theta = nested;
    }
  }
  return static_cast<float>(theta);
}

std::string hfModelName(const std::filesystem::path& file) {
  const std::string folder = file.parent_path().filename().string();
  return folder.empty() ? "hf:" + file.string() : folder;
}

}  // namespace

ModelSpec modelFromHfConfig(const std::string& path) {
  // A checkpoint folder is accepted too: its config.json is read.
  std::filesystem::path file(path);
  if (std::filesystem::is_directory(file)) file /= "config.json";
  const nlohmann::json doc = readJsonFile(file.string());  // names file:line:column on bad JSON
  const HfConfig config(doc, file.string());

  const ModelFamily& family = hfFamily(config);
  ModelSpec m;
  m.name = hfModelName(file);
  m.arch = family.arch;
  m.num_layers = config.positiveInt("num_hidden_layers");
  m.hidden = config.positiveInt("hidden_size");
  m.num_heads = config.positiveInt("num_attention_heads");
  m.num_kv_heads = config.positiveIntOr("num_key_value_heads", m.num_heads);
  m.ffn_hidden = config.positiveInt(std::string(family.ffn_key));
  m.vocab = config.positiveInt("vocab_size");
  m.max_positions = config.positiveInt("max_position_embeddings");
  m.dtype = hfDtype(config);
  m.tie_embeddings = config.boolOr("tie_word_embeddings", family.tie_embeddings_default);
  m.norm_eps = family.norm_eps_key.empty()
                   ? family.default_norm_eps
                   : static_cast<float>(config.positiveNumberOr(std::string(family.norm_eps_key), family.default_norm_eps));
  if (family.rotary()) m.rope_theta = hfRopeTheta(config, family, doc);
  m.sliding_window = hfSlidingWindow(config, family);

  if (m.hidden % m.num_heads != 0)
    config.fail("num_attention_heads", std::to_string(m.num_heads) + " does not divide hidden_size=" +
                                           std::to_string(m.hidden));
  if (m.num_heads % m.num_kv_heads != 0)
    config.fail("num_key_value_heads", std::to_string(m.num_kv_heads) + " does not divide num_attention_heads=" +
                                           std::to_string(m.num_heads));
  rejectUnsupportedVariants(config, family, m.hidden, m.num_heads);

  // Keys only one family has (transformers' OPTConfig).
  switch (family.arch) {
    case Arch::kOpt: {
      if (!config.boolOr("enable_bias", true)) config.fail("enable_bias", "OPT without biases is not supported");
      if (!config.boolOr("layer_norm_elementwise_affine", true))
        config.fail("layer_norm_elementwise_affine", "OPT without LayerNorm weights is not supported");
      const int proj_dim = config.positiveIntOr("word_embed_proj_dim", m.hidden);
      m.word_embed_proj_dim = proj_dim == m.hidden ? 0 : proj_dim;
      m.layer_norm_before = config.boolOr("do_layer_norm_before", true);
      // transformers builds the final norm only for pre-LN models not asking to drop it.
      m.final_layer_norm = m.layer_norm_before && !config.boolOr("_remove_final_layer_norm", false);
      break;
    }
    case Arch::kLlama:
    case Arch::kQwen2:
    case Arch::kMistral:
      break;
  }
  return m;
}

}  // namespace computron
