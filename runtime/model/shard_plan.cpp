#include "runtime/model/shard_plan.h"

#include <cstring>

#include "common/splitmix.h"

namespace computron::model {
namespace {

[[noreturn]] void refuse(const ModelSpec& spec, const std::string& message) {
  throw ConfigError("model '" + spec.name + "': " + message);
}

// Builds the plan tensor by tensor, handing out consecutive offsets.
class PlanBuilder {
 public:
  PlanBuilder(ShardPlan& plan) : plan_(plan), elem_(elementBytes(plan.spec.dtype)) {}

  std::int64_t offset() const { return next_; }

  // A tensor filled from one or more checkpoint slices stacked along dim 0.
  std::int64_t add(const std::string& name, std::vector<std::int64_t> shape, InitKind init,
                   std::vector<TensorSource> sources) {
    ShardTensor t;
    t.name = name;
    t.shape = std::move(shape);
    t.offset = next_;
    std::int64_t elements = 1;
    for (auto d : t.shape) elements *= d;
    t.bytes = elements * elem_;
    t.init = init;
    std::int64_t source_offset = next_;
    for (auto& s : sources) {
      s.dest_offset = source_offset;
      source_offset += localElements(s) * elem_;
    }
    if (source_offset != next_ + t.bytes) refuse(plan_.spec, "internal: sources of " + name + " do not fill it");
    t.sources = std::move(sources);
    next_ += t.bytes;
    plan_.tensors.push_back(std::move(t));
    return plan_.tensors.back().offset;
  }

  std::int64_t localElements(const TensorSource& s) const {
    std::int64_t elements = 1;
    for (auto d : s.full_shape) elements *= d;
    return s.split == Split::kReplicated ? elements : elements / plan_.tp;
  }

 private:
  ShardPlan& plan_;
  std::int64_t elem_;
  std::int64_t next_ = 0;
};

TensorSource source(std::string name, std::vector<std::int64_t> shape, Split split) {
  TensorSource s;
  s.hf_name = std::move(name);
  s.full_shape = std::move(shape);
  s.split = split;
  return s;
}

}  // namespace

ShardPlan planShard(const ModelSpec& spec, int tp, int pp, int tp_rank, int pp_rank) {
  ShardPlan plan;
  plan.spec = spec;
  plan.tp = tp;
  plan.pp = pp;
  plan.tp_rank = tp_rank;
  plan.pp_rank = pp_rank;

  if (tp < 1 || pp < 1 || tp_rank < 0 || tp_rank >= tp || pp_rank < 0 || pp_rank >= pp)
    refuse(spec, "bad shard (tp " + std::to_string(tp) + ", pp " + std::to_string(pp) + ", rank " +
                     std::to_string(tp_rank) + ", stage " + std::to_string(pp_rank) + ")");
  if (spec.num_layers < 1 || spec.hidden < 1 || spec.num_heads < 1 || spec.vocab < 1 || spec.ffn_hidden < 1)
    refuse(spec, "layers, hidden, heads, ffn and vocab must be positive");
  const int kv_heads = spec.num_kv_heads > 0 ? spec.num_kv_heads : spec.num_heads;
  if (spec.hidden % spec.num_heads != 0) refuse(spec, "hidden is not a multiple of the head count");
  if (spec.num_heads % kv_heads != 0) refuse(spec, "heads are not a multiple of kv heads");
  if (spec.hidden % 8 != 0) refuse(spec, "hidden must be a multiple of 8 (16-byte aligned rows)");
  if (pp > spec.num_layers) refuse(spec, "pp " + std::to_string(pp) + " exceeds its " + std::to_string(spec.num_layers) + " layers");
  if (spec.num_heads % tp != 0) refuse(spec, "tp " + std::to_string(tp) + " does not divide its " + std::to_string(spec.num_heads) + " heads");
  // Replicating kv heads over more ranks than there are kv heads is not implemented.
  if (kv_heads % tp != 0) refuse(spec, "tp " + std::to_string(tp) + " does not divide its " + std::to_string(kv_heads) + " kv heads");
  if (spec.ffn_hidden % tp != 0 || (spec.ffn_hidden / tp) % 8 != 0)
    refuse(spec, "tp " + std::to_string(tp) + " does not split ffn " + std::to_string(spec.ffn_hidden) + " into multiples of 8");
  if (spec.vocab % tp != 0) refuse(spec, "tp " + std::to_string(tp) + " does not divide vocab " + std::to_string(spec.vocab));
  const ModelFamily& family = spec.family();
  if (spec.hasEmbedProjection()) refuse(spec, "embedding projections (word_embed_proj_dim != hidden) are not supported");
  if (family.learnedPositions() && spec.max_positions < 1) refuse(spec, "learned positions need max_positions");
  if (family.mlp == MlpKind::kSwiGlu && family.mlp_bias) refuse(spec, "SwiGLU MLP biases are not supported");

  const std::int64_t h = spec.hidden;
  const std::int64_t hd = spec.headDim();
  plan.local_heads = spec.num_heads / tp;
  plan.local_kv_heads = kv_heads / tp;
  plan.local_ffn = spec.ffn_hidden / tp;
  plan.local_vocab = spec.vocab / tp;
  plan.vocab_begin = plan.local_vocab * tp_rank;

  // Layers over stages: the first (num_layers % pp) stages take one extra.
  const int base = spec.num_layers / pp, extra = spec.num_layers % pp;
  plan.num_layers = base + (pp_rank < extra ? 1 : 0);
  plan.first_layer = pp_rank * base + std::min(pp_rank, extra);
  plan.has_embeddings = pp_rank == 0;
  plan.has_lm_head = pp_rank == pp - 1;

  const TensorNaming& n = family.names;
  const std::string root(n.root);
  const std::int64_t V = spec.vocab, q_rows = spec.num_heads * hd, kv_rows = kv_heads * hd, F = spec.ffn_hidden;
  PlanBuilder b(plan);

  if (plan.has_embeddings) {
    plan.token_embedding = b.add("embed_tokens.weight", {plan.local_vocab, h}, InitKind::kMatrix,
                                 {source(root + "embed_tokens.weight", {V, h}, Split::kRows)});
    if (family.learnedPositions()) {
      const std::int64_t rows = spec.max_positions + family.position_offset;
      plan.position_embedding = b.add("embed_positions.weight", {rows, h}, InitKind::kMatrix,
                                      {source(root + "embed_positions.weight", {rows, h}, Split::kReplicated)});
    }
  }
  plan.prefix_bytes = b.offset();

  // A norm: weight, and a bias for LayerNorm; replicated.
  auto addNorm = [&](const std::string& ours, const std::string& hf, std::int64_t& weight, std::int64_t& bias) {
    weight = b.add(ours + ".weight", {h}, InitKind::kNormWeight, {source(hf + ".weight", {h}, Split::kReplicated)});
    if (family.normHasBias())
      bias = b.add(ours + ".bias", {h}, InitKind::kZero, {source(hf + ".bias", {h}, Split::kReplicated)});
  };
  auto joined = [](const std::string& prefix, std::string_view name) { return prefix + std::string(name); };

  for (int i = 0; i < plan.num_layers; ++i) {
    const int layer = plan.first_layer + i;
    const std::string p = root + "layers." + std::to_string(layer) + ".";
    const std::string ours = "layers." + std::to_string(layer) + ".";
    LayerWeights w;
    const std::int64_t local_qkv = (plan.local_heads + 2 * plan.local_kv_heads) * hd;
    const std::int64_t local_q = plan.local_heads * hd;
    const std::string q = joined(p, n.q), k = joined(p, n.k), v = joined(p, n.v), o = joined(p, n.o);
    addNorm(ours + "attn_norm", joined(p, n.attn_norm), w.attn_norm_weight, w.attn_norm_bias);
    // Column-parallel: each rank's q rows (its heads), then its k and v rows (its kv heads).
    w.qkv_weight = b.add(ours + "qkv.weight", {local_qkv, h}, InitKind::kMatrix,
                         {source(q + ".weight", {q_rows, h}, Split::kRows), source(k + ".weight", {kv_rows, h}, Split::kRows),
                          source(v + ".weight", {kv_rows, h}, Split::kRows)});
    if (family.qkv_bias)
      w.qkv_bias = b.add(ours + "qkv.bias", {local_qkv}, InitKind::kZero,
                         {source(q + ".bias", {q_rows}, Split::kRows), source(k + ".bias", {kv_rows}, Split::kRows),
                          source(v + ".bias", {kv_rows}, Split::kRows)});
    // Row-parallel: the bias is whole on every rank, added once after the all-reduce.
    w.out_weight = b.add(ours + "out.weight", {h, local_q}, InitKind::kMatrix, {source(o + ".weight", {h, q_rows}, Split::kCols)});
    if (family.out_bias)
      w.out_bias = b.add(ours + "out.bias", {h}, InitKind::kZero, {source(o + ".bias", {h}, Split::kReplicated)});
    addNorm(ours + "mlp_norm", joined(p, n.mlp_norm), w.mlp_norm_weight, w.mlp_norm_bias);
    const std::string up = joined(p, n.up), down = joined(p, n.down);
    switch (family.mlp) {
      case MlpKind::kRelu:
        w.up_weight = b.add(ours + "up.weight", {plan.local_ffn, h}, InitKind::kMatrix, {source(up + ".weight", {F, h}, Split::kRows)});
        if (family.mlp_bias)
          w.up_bias = b.add(ours + "up.bias", {plan.local_ffn}, InitKind::kZero, {source(up + ".bias", {F}, Split::kRows)});
        break;
      case MlpKind::kSwiGlu:
        // gate rows then up rows of this rank, one matrix: one product.
        w.up_weight = b.add(ours + "gate_up.weight", {2 * plan.local_ffn, h}, InitKind::kMatrix,
                            {source(joined(p, n.gate) + ".weight", {F, h}, Split::kRows), source(up + ".weight", {F, h}, Split::kRows)});
        break;
    }
    w.down_weight = b.add(ours + "down.weight", {h, plan.local_ffn}, InitKind::kMatrix, {source(down + ".weight", {h, F}, Split::kCols)});
    if (family.mlp_bias)
      w.down_bias = b.add(ours + "down.bias", {h}, InitKind::kZero, {source(down + ".bias", {h}, Split::kReplicated)});
    plan.layers.push_back(w);
    if (i == 0) plan.layer_bytes = b.offset() - plan.prefix_bytes;
  }
  const std::int64_t layers_end = b.offset();

  if (plan.has_lm_head) {
    addNorm("final_norm", joined(root, n.final_norm), plan.final_norm_weight, plan.final_norm_bias);
    if (spec.tie_embeddings && plan.has_embeddings) {
      plan.lm_head = plan.token_embedding;
    } else {
      // A tied head on a later stage is a copy of the embedding rows; an untied one is lm_head.
      const std::string name = spec.tie_embeddings ? root + "embed_tokens.weight" : "lm_head.weight";
      plan.lm_head = b.add("lm_head.weight", {plan.local_vocab, h}, InitKind::kMatrix, {source(name, {V, h}, Split::kRows)});
    }
  }
  plan.suffix_bytes = b.offset() - layers_end;
  plan.total_bytes = b.offset();
  return plan;
}

namespace {

// Resolves a checkpoint name: our names carry the "model." prefix of current transformers; older
// OPT checkpoints (facebook/opt-*) store "decoder.layers..." without it.
const TensorInfo& findTensor(const Checkpoint& ckpt, const TensorSource& s) {
  if (!ckpt.has(s.hf_name) && s.hf_name.rfind("model.", 0) == 0 && ckpt.has(s.hf_name.substr(6)))
    return ckpt.tensor(s.hf_name.substr(6), s.full_shape);
  return ckpt.tensor(s.hf_name, s.full_shape);
}

}  // namespace

void loadShard(const Checkpoint& ckpt, const ShardPlan& plan, std::span<std::byte> dest) {
  if (static_cast<std::int64_t>(dest.size()) != plan.total_bytes)
    throw ConfigError("loadShard: destination holds " + std::to_string(dest.size()) + " bytes, shard needs " +
                      std::to_string(plan.total_bytes));
  // Validate everything first so a bad checkpoint fails before any bytes move.
  for (const auto& t : plan.tensors)
    for (const auto& s : t.sources) (void)findTensor(ckpt, s);

  const DType dtype = plan.spec.dtype;
  const std::int64_t elem = elementBytes(dtype);
  for (const auto& t : plan.tensors) {
    for (const auto& s : t.sources) {
      const TensorInfo& info = findTensor(ckpt, s);
      const std::int64_t rows = s.full_shape[0];
      const std::int64_t cols = s.full_shape.size() > 1 ? s.full_shape[1] : 1;
      std::int64_t row_begin = 0, local_rows = rows, col_begin = 0, local_cols = cols;
      if (s.split == Split::kRows) {
        local_rows = rows / plan.tp;
        row_begin = local_rows * plan.tp_rank;
      } else if (s.split == Split::kCols) {
        local_cols = cols / plan.tp;
        col_begin = local_cols * plan.tp_rank;
      }
      const std::size_t bytes = static_cast<std::size_t>(local_rows * local_cols * elem);
      ckpt.readBlock(info, row_begin, local_rows, col_begin, local_cols, dtype,
                     dest.subspan(static_cast<std::size_t>(s.dest_offset), bytes));
    }
  }
}

namespace {

std::uint64_t nameHash(const std::string& name) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

float randomWeight(std::uint64_t seed, const std::string& hf_name, std::uint64_t index, InitKind init) {
  if (init == InitKind::kNormWeight) return 1.0f;
  if (init == InitKind::kZero) return 0.0f;
  const std::uint64_t bits = splitmix64(splitmix64(seed ^ nameHash(hf_name)) + index);
  // Uniform on [-a, a) with a = 0.02 * sqrt(3): standard deviation 0.02, like HF's init.
  const double unit = static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
  return static_cast<float>((unit * 2.0 - 1.0) * 0.0346410161513775);
}

void fillRandomShard(const ShardPlan& plan, std::uint64_t seed, std::span<std::byte> dest) {
  if (static_cast<std::int64_t>(dest.size()) != plan.total_bytes)
    throw ConfigError("fillRandomShard: destination does not match the shard size");
  const DType dtype = plan.spec.dtype;
  const std::int64_t elem = elementBytes(dtype);
  for (const auto& t : plan.tensors) {
    for (const auto& s : t.sources) {
      const std::int64_t rows = s.full_shape[0];
      const std::int64_t cols = s.full_shape.size() > 1 ? s.full_shape[1] : 1;
      std::int64_t row_begin = 0, local_rows = rows, col_begin = 0, local_cols = cols;
      if (s.split == Split::kRows) { local_rows = rows / plan.tp; row_begin = local_rows * plan.tp_rank; }
      if (s.split == Split::kCols) { local_cols = cols / plan.tp; col_begin = local_cols * plan.tp_rank; }
      std::byte* out = dest.data() + s.dest_offset;
      for (std::int64_t r = 0; r < local_rows; ++r) {
        for (std::int64_t c = 0; c < local_cols; ++c) {
          const std::uint64_t index = static_cast<std::uint64_t>((row_begin + r) * cols + col_begin + c);
          const float v = randomWeight(seed, s.hf_name, index, t.init);
          std::byte* e = out + (r * local_cols + c) * elem;
          if (dtype == DType::kF32) {
            std::memcpy(e, &v, 4);
          } else {
            const std::uint16_t bits = dtype == DType::kF16 ? floatToHalf(v) : floatToBf16(v);
            std::memcpy(e, &bits, 2);
          }
        }
      }
    }
  }
}

}  // namespace computron::model
