// Splitter: for every TP x PP, each shard loaded from a checkpoint holds exactly the slices the
// split rules name, in the planned layout; bad checkpoints fail before any byte is written.
#include "runtime/model/shard_plan.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "tests/model/safetensors_writer.h"

namespace computron::model {
namespace {

using testing_support::FakeTensor;
using testing_support::TempDir;
using testing_support::writeSafetensors;

ModelSpec tinyOpt() {
  ModelSpec s;
  s.name = "tiny-opt";
  s.arch = Arch::kOpt;
  s.num_layers = 5;
  s.hidden = 32;
  s.num_heads = 4;
  s.num_kv_heads = 4;
  s.ffn_hidden = 64;
  s.vocab = 48;
  s.max_positions = 14;  // 16 position rows
  s.dtype = DType::kF16;
  s.tie_embeddings = true;
  return s;
}

ModelSpec tinyLlama() {
  ModelSpec s;
  s.name = "tiny-llama";
  s.arch = Arch::kLlama;
  s.num_layers = 4;
  s.hidden = 64;
  s.num_heads = 8;
  s.num_kv_heads = 4;  // grouped-query attention
  s.ffn_hidden = 96;
  s.vocab = 40;
  s.dtype = DType::kBF16;
  s.tie_embeddings = false;
  return s;
}

// Llama with biases on q, k and v, here with a tied head (Qwen2's small checkpoints tie theirs).
ModelSpec tinyQwen2() {
  ModelSpec s = tinyLlama();
  s.name = "tiny-qwen2";
  s.arch = Arch::kQwen2;
  s.dtype = DType::kF16;
  s.tie_embeddings = true;
  return s;
}

ModelSpec tinyMistral() {
  ModelSpec s = tinyLlama();
  s.name = "tiny-mistral";
  s.arch = Arch::kMistral;
  s.sliding_window = 16;  // no tensor depends on it
  return s;
}

// The checkpoint names of the test, written out per family rather than read from the traits.
struct HfNames {
  std::string root, out_proj;
};

HfNames hfNames(Arch arch) {
  switch (arch) {
    case Arch::kOpt:
      return {"model.decoder.", "self_attn.out_proj.weight"};
    case Arch::kLlama:
    case Arch::kQwen2:
    case Arch::kMistral:
      return {"model.", "self_attn.o_proj.weight"};
  }
  return {};
}

// Writes every tensor the full model needs, filled with randomWeight values, as F32 (so loading
// also exercises the conversion), split over two files with an index.
// With random_biases, biases get random values too (InitKind::kMatrix) instead of zeros.
void writeFullCheckpoint(const ModelSpec& spec, std::uint64_t seed, const std::string& dir, bool random_biases = false) {
  std::map<std::string, std::pair<std::vector<std::int64_t>, InitKind>> all;
  for (int stage = 0; stage < spec.num_layers; ++stage) {
    const ShardPlan plan = planShard(spec, 1, spec.num_layers, 0, stage);
    for (const auto& t : plan.tensors)
      for (const auto& s : t.sources)
        all[s.hf_name] = {s.full_shape, random_biases && t.init == InitKind::kZero ? InitKind::kMatrix : t.init};
  }
  std::vector<FakeTensor> first, second;
  std::string index = R"({"weight_map": {)";
  int i = 0;
  for (const auto& [name, shape_init] : all) {
    FakeTensor t{name, "F32", shape_init.first, {}};
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    t.data.resize(static_cast<std::size_t>(n) * 4);
    for (std::int64_t e = 0; e < n; ++e) {
      const float v = randomWeight(seed, name, static_cast<std::uint64_t>(e), shape_init.second);
      std::memcpy(t.data.data() + e * 4, &v, 4);
    }
    const bool in_first = (i++ % 2) == 0;
    index += std::string(i > 1 ? "," : "") + "\"" + name + "\": \"" + (in_first ? "part1" : "part2") + ".safetensors\"";
    (in_first ? first : second).push_back(std::move(t));
  }
  index += "}}";
  writeSafetensors(dir + "/part1.safetensors", first);
  writeSafetensors(dir + "/part2.safetensors", second);
  testing_support::writeRaw(dir + "/model.safetensors.index.json", index);
}

std::uint16_t elementAt(const std::vector<std::byte>& buffer, std::int64_t offset, std::int64_t index) {
  std::uint16_t v;
  std::memcpy(&v, buffer.data() + offset + index * 2, 2);
  return v;
}

class SplitEveryWay : public ::testing::TestWithParam<ModelSpec> {};

TEST_P(SplitEveryWay, LoadedShardsMatchTheSplitRules) {
  const ModelSpec spec = GetParam();
  TempDir dir;
  writeFullCheckpoint(spec, 42, dir.path());
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  for (int tp : {1, 2, 4}) {
    for (int pp : {1, 2, 3}) {
      int layers_seen = 0;
      for (int stage = 0; stage < pp; ++stage) {
        for (int rank = 0; rank < tp; ++rank) {
          SCOPED_TRACE("tp " + std::to_string(tp) + " pp " + std::to_string(pp) + " rank " + std::to_string(rank) +
                       " stage " + std::to_string(stage));
          const ShardPlan plan = planShard(spec, tp, pp, rank, stage);
          std::vector<std::byte> loaded(static_cast<std::size_t>(plan.total_bytes), std::byte{0xAB});
          loadShard(ckpt, plan, loaded);
          std::vector<std::byte> expected(loaded.size());
          fillRandomShard(plan, 42, expected);
          ASSERT_EQ(loaded, expected);
          EXPECT_EQ(plan.prefix_bytes + plan.layer_bytes * plan.num_layers + plan.suffix_bytes, plan.total_bytes);

          // Spot checks against the full tensors, independent of the loader's slicing code.
          const std::int64_t h = spec.hidden, hd = spec.headDim();
          const LayerWeights& w = plan.layers.front();
          const std::string root = hfNames(spec.arch).root;
          const std::string layer = root + "layers." + std::to_string(plan.first_layer) + ".";
          const DType dt = spec.dtype;
          auto encode = [&](float v) { return dt == DType::kF16 ? floatToHalf(v) : floatToBf16(v); };
          // First k row of this rank = row rank * local_kv_heads * hd of k_proj; column 3.
          const std::int64_t k_row = plan.local_heads * hd;  // k rows follow the local q rows
          EXPECT_EQ(elementAt(loaded, w.qkv_weight, k_row * h + 3),
                    encode(randomWeight(42, layer + "self_attn.k_proj.weight",
                                        static_cast<std::uint64_t>(rank * plan.local_kv_heads * hd * h + 3), InitKind::kMatrix)));
          // Row-parallel: row 1 of the output projection holds columns [rank * local_q, ...).
          const std::int64_t local_q = plan.local_heads * hd;
          const std::string out_name = hfNames(spec.arch).out_proj;
          EXPECT_EQ(elementAt(loaded, w.out_weight, 1 * local_q + 2),
                    encode(randomWeight(42, layer + out_name,
                                        static_cast<std::uint64_t>(1 * spec.num_heads * hd + rank * local_q + 2), InitKind::kMatrix)));
          if (plan.has_lm_head) {
            // Vocab-parallel head: local row 0 is vocab row rank * local_vocab.
            const std::string head = spec.tie_embeddings ? root + "embed_tokens.weight" : "lm_head.weight";
            EXPECT_EQ(elementAt(loaded, plan.lm_head, 5),
                      encode(randomWeight(42, head, static_cast<std::uint64_t>(plan.vocab_begin * h + 5), InitKind::kMatrix)));
            EXPECT_EQ(plan.vocab_begin, rank * (spec.vocab / tp));
          }
          if (rank == 0) layers_seen += plan.num_layers;
        }
      }
      EXPECT_EQ(layers_seen, spec.num_layers);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SplitEveryWay, ::testing::Values(tinyOpt(), tinyLlama(), tinyQwen2(), tinyMistral()),
                         [](const auto& param_info) { return archName(param_info.param.arch); });

// Qwen2's q/k/v biases are split with the heads like the weights: rank r holds the q bias of its
// heads, then the k and v biases of its kv heads, in the order of the fused q|k|v rows.
TEST(ShardPlan, Qwen2QkvBiasIsSplitWithTheHeads) {
  const ModelSpec spec = tinyQwen2();
  TempDir dir;
  writeFullCheckpoint(spec, 7, dir.path(), /*random_biases=*/true);
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  const std::int64_t hd = spec.headDim();
  for (int tp : {1, 2, 4}) {
    for (int rank = 0; rank < tp; ++rank) {
      SCOPED_TRACE("tp " + std::to_string(tp) + " rank " + std::to_string(rank));
      const ShardPlan plan = planShard(spec, tp, 1, rank, 0);
      std::vector<std::byte> loaded(static_cast<std::size_t>(plan.total_bytes));
      loadShard(ckpt, plan, loaded);
      for (std::size_t li = 0; li < plan.layers.size(); ++li) {
        const LayerWeights& w = plan.layers[li];
        ASSERT_GE(w.qkv_bias, 0);
        EXPECT_EQ(w.out_bias, -1);  // o_proj has none
        EXPECT_EQ(w.up_bias, -1);
        EXPECT_EQ(w.down_bias, -1);
        EXPECT_EQ(w.attn_norm_bias, -1);  // RMSNorm
        const std::string layer = "model.layers." + std::to_string(li) + ".self_attn.";
        const std::int64_t q = plan.local_heads * hd, kv = plan.local_kv_heads * hd;
        auto expect = [&](const std::string& name, std::int64_t local_index, std::int64_t full_index) {
          EXPECT_EQ(elementAt(loaded, w.qkv_bias, local_index),
                    floatToHalf(randomWeight(7, layer + name, static_cast<std::uint64_t>(full_index), InitKind::kMatrix)))
              << name << " " << local_index;
        };
        for (std::int64_t j : {std::int64_t{0}, q - 1}) expect("q_proj.bias", j, rank * q + j);
        for (std::int64_t j : {std::int64_t{0}, kv - 1}) {
          expect("k_proj.bias", q + j, rank * kv + j);
          expect("v_proj.bias", q + kv + j, rank * kv + j);
        }
      }
      // A tied head: the embedding itself on a single stage.
      EXPECT_EQ(plan.lm_head, plan.token_embedding);
      EXPECT_EQ(plan.position_embedding, -1);
      EXPECT_EQ(plan.final_norm_bias, -1);
    }
  }
}

TEST(ShardPlan, TensorNamesFollowTheFamily) {
  auto sources = [](const ModelSpec& spec) {
    std::set<std::string> names;
    for (const auto& t : planShard(spec, 1, 1, 0, 0).tensors)
      for (const auto& s : t.sources) names.insert(s.hf_name);
    return names;
  };
  const auto qwen2 = sources(tinyQwen2());
  EXPECT_TRUE(qwen2.count("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(qwen2.count("model.layers.3.self_attn.v_proj.bias"));
  EXPECT_FALSE(qwen2.count("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_TRUE(qwen2.count("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_TRUE(qwen2.count("model.norm.weight"));
  EXPECT_FALSE(qwen2.count("lm_head.weight"));  // tied
  // Mistral and Llama checkpoints name the same tensors.
  ModelSpec llama = tinyMistral();
  llama.arch = Arch::kLlama;
  EXPECT_EQ(sources(tinyMistral()), sources(llama));
  EXPECT_FALSE(sources(tinyMistral()).count("model.layers.0.self_attn.q_proj.bias"));
  const auto opt = sources(tinyOpt());
  EXPECT_TRUE(opt.count("model.decoder.layers.4.fc2.bias"));
  EXPECT_TRUE(opt.count("model.decoder.embed_positions.weight"));
  EXPECT_TRUE(opt.count("model.decoder.final_layer_norm.bias"));
}

TEST(ShardPlan, LayersSplitEvenlyWithEarlierStagesTakingTheRemainder) {
  ModelSpec spec = tinyOpt();
  spec.num_layers = 7;
  const int expected_counts[] = {3, 2, 2};
  const int expected_first[] = {0, 3, 5};
  for (int stage = 0; stage < 3; ++stage) {
    const ShardPlan plan = planShard(spec, 1, 3, 0, stage);
    EXPECT_EQ(plan.num_layers, expected_counts[stage]);
    EXPECT_EQ(plan.first_layer, expected_first[stage]);
    EXPECT_EQ(plan.has_embeddings, stage == 0);
    EXPECT_EQ(plan.has_lm_head, stage == 2);
  }
}

TEST(ShardPlan, TiedHeadIsSharedOnOneStageAndCopiedAcrossStages) {
  const ModelSpec spec = tinyOpt();
  const ShardPlan one = planShard(spec, 1, 1, 0, 0);
  EXPECT_EQ(one.lm_head, one.token_embedding);
  const ShardPlan last = planShard(spec, 2, 2, 1, 1);
  EXPECT_GE(last.lm_head, 0);
  EXPECT_EQ(last.token_embedding, -1);
}

TEST(ShardPlan, EveryTensorIsSixteenByteAligned) {
  for (const ModelSpec& spec : {tinyOpt(), tinyLlama(), tinyQwen2(), tinyMistral()})
    for (int tp : {1, 2, 4})
      for (const auto& t : planShard(spec, tp, 2, tp - 1, 1).tensors) EXPECT_EQ(t.offset % 16, 0) << t.name;
}

TEST(ShardPlan, ImpossibleSplitsAreRefused) {
  ModelSpec spec = tinyLlama();
  EXPECT_THROW(planShard(spec, 8, 1, 0, 0), ConfigError);  // 4 kv heads over 8 ranks
  EXPECT_THROW(planShard(spec, 3, 1, 0, 0), ConfigError);  // 8 heads over 3 ranks
  EXPECT_THROW(planShard(spec, 1, 5, 0, 0), ConfigError);  // more stages than layers
  EXPECT_THROW(planShard(spec, 2, 1, 2, 0), ConfigError);  // rank out of range
  try {
    planShard(spec, 8, 1, 0, 0);
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does not divide its 4 kv heads"), std::string::npos) << e.what();
  }
}

TEST(ShardPlan, BadCheckpointFailsBeforeWriting) {
  const ModelSpec spec = tinyLlama();
  TempDir dir;
  writeFullCheckpoint(spec, 1, dir.path());
  // Rewrite part2 with one tensor of the wrong shape.
  const Checkpoint good = Checkpoint::open(dir.path());
  const ShardPlan plan = planShard(spec, 1, 1, 0, 0);
  std::vector<std::byte> dest(static_cast<std::size_t>(plan.total_bytes), std::byte{0x11});
  ModelSpec wrong = spec;
  wrong.ffn_hidden = 128;  // expects a different shape than the file holds
  const ShardPlan wrong_plan = planShard(wrong, 1, 1, 0, 0);
  std::vector<std::byte> wrong_dest(static_cast<std::size_t>(wrong_plan.total_bytes), std::byte{0x11});
  try {
    loadShard(good, wrong_plan, wrong_dest);
    FAIL() << "expected a shape error";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("expected [128, 64]"), std::string::npos) << e.what();
  }
  for (auto b : wrong_dest) ASSERT_EQ(b, std::byte{0x11});
  EXPECT_THROW(loadShard(good, plan, std::span(dest).first(dest.size() - 2)), ConfigError);
}

}  // namespace
}  // namespace computron::model

namespace computron::model {
namespace {

// The planner's bytes must equal the spec's accounting (which the scheduler budgets with) for
// every shard of every split, prefix, layer and suffix separately.
TEST(ShardPlan, BytesMatchModelSpecShardExactly) {
  std::vector<ModelSpec> specs = {tinyOpt(), tinyLlama(), tinyQwen2(), tinyMistral()};
  for (const char* preset : {"opt-6.7b", "opt-13b", "llama-3-8b", "qwen2-7b", "mistral-7b"}) specs.push_back(modelPreset(preset));
  for (const ModelSpec& spec : specs) {
    for (int tp : {1, 2, 4}) {
      for (int pp : {1, 2, 3}) {
        if (spec.vocab % tp != 0) continue;  // the spec pads the vocabulary; the planner refuses
        for (int stage = 0; stage < pp; ++stage) {
          for (int rank = 0; rank < tp; ++rank) {
            SCOPED_TRACE(spec.name + " tp " + std::to_string(tp) + " pp " + std::to_string(pp) + " rank " +
                         std::to_string(rank) + " stage " + std::to_string(stage));
            const ShardPlan plan = planShard(spec, tp, pp, rank, stage);
            const ShardLayout layout = spec.shard(tp, pp, rank, stage);
            EXPECT_EQ(plan.total_bytes, layout.bytes);
            EXPECT_EQ(plan.prefix_bytes, layout.prefix_bytes);
            EXPECT_EQ(plan.layer_bytes, layout.layer_bytes);
            EXPECT_EQ(plan.suffix_bytes, layout.suffix_bytes);
            EXPECT_EQ(plan.first_layer, layout.first_layer);
            EXPECT_EQ(plan.num_layers, layout.num_layers);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace computron::model
