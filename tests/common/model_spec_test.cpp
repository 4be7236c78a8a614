#include "common/model_spec.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace computron {
namespace {

std::string fixture(const std::string& name) {
  return std::string(COMPUTRON_SOURCE_DIR) + "/tests/data/hf_configs/" + name + "/config.json";
}

// Runs `body`, which must throw ConfigError, and returns its message.
template <typename Body>
std::string configErrorOf(Body body) {
  try {
    body();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError";
  return "";
}

// ---- Totals -----------------------------------------------------------------------------------

struct PublishedTotal {
  const char* name;
  std::int64_t params;
};

// Parameter counts of the Hugging Face checkpoints (sum of numel over model.parameters()).
const PublishedTotal kPublishedTotals[] = {
    {"opt-125m", 125'239'296},         {"opt-350m", 331'196'416},
    {"opt-1.3b", 1'315'758'080},       {"opt-2.7b", 2'651'596'800},
    {"opt-6.7b", 6'658'473'984},       {"opt-13b", 12'853'473'280},
    {"opt-30b", 29'974'540'288},       {"opt-66b", 65'719'701'504},
    {"llama-2-7b", 6'738'415'616},     {"llama-2-13b", 13'015'864'320},
    {"llama-2-70b", 68'976'648'192},   {"llama-3-8b", 8'030'261'248},
    {"llama-3-70b", 70'553'706'496},   {"qwen2-7b", 7'615'616'512},
    {"mistral-7b", 7'241'732'096},
};

TEST(ModelSpecTest, PresetTotalsMatchPublishedCounts) {
  ASSERT_EQ(modelPresetNames().size(), std::size(kPublishedTotals));
  for (const PublishedTotal& expected : kPublishedTotals) {
    SCOPED_TRACE(expected.name);
    ASSERT_TRUE(isModelPreset(expected.name));
    const ModelSpec m = modelPreset(expected.name);
    EXPECT_EQ(m.totalParams(), expected.params);
    EXPECT_EQ(m.totalBytes(), expected.params * 2);  // every preset is fp16 or bf16
    EXPECT_EQ(m.embeddingParams() + m.num_layers * m.layerParams() + m.headParams(), m.totalParams());
  }
}

TEST(ModelSpecTest, Opt13bBreakdown) {
  const ModelSpec m = modelPreset("opt-13b");
  EXPECT_EQ(m.num_layers, 40);
  EXPECT_EQ(m.hidden, 5120);
  EXPECT_EQ(m.num_heads, 40);
  EXPECT_EQ(m.ffn_hidden, 20480);
  EXPECT_EQ(m.vocab, 50272);
  EXPECT_EQ(m.max_positions, 2048);
  EXPECT_EQ(m.dtype, DType::kF16);
  EXPECT_TRUE(m.tie_embeddings);
  // 50272 x 5120 tokens + 2050 x 5120 positions.
  EXPECT_EQ(m.embeddingParams(), 257'392'640 + 10'496'000);
  // q/k/v/out 4 x (5120^2 + 5120), fc1 5120 x 20480 + 20480, fc2 20480 x 5120 + 5120, 2 LayerNorms.
  EXPECT_EQ(m.layerParams(), 314'639'360);
  EXPECT_EQ(m.headParams(), 10'240);  // final LayerNorm; the LM head is the tied embedding
}

TEST(ModelSpecTest, Opt350mProjectsEmbeddingsAndHasNoFinalNorm) {
  const ModelSpec m = modelPreset("opt-350m");
  EXPECT_EQ(m.embedDim(), 512);
  EXPECT_TRUE(m.hasEmbedProjection());
  EXPECT_FALSE(m.layer_norm_before);
  EXPECT_FALSE(m.final_layer_norm);
  // 50272 x 512 tokens, 2050 x 1024 positions, project_in and project_out 512 x 1024 each.
  EXPECT_EQ(m.embeddingParams(), 25'739'264 + 2'099'200 + 2 * 524'288);
  EXPECT_EQ(m.headParams(), 0);
}

TEST(ModelSpecTest, LlamaHasUntiedHeadAndRmsNorms) {
  const ModelSpec m = modelPreset("llama-2-7b");
  EXPECT_FALSE(m.tie_embeddings);
  EXPECT_EQ(m.embeddingParams(), 32000LL * 4096);
  EXPECT_EQ(m.headParams(), 32000LL * 4096 + 4096);
  EXPECT_EQ(m.layerParams(), 4LL * 4096 * 4096 + 3LL * 4096 * 11008 + 2 * 4096);
  const ModelSpec gqa = modelPreset("llama-3-70b");
  EXPECT_EQ(gqa.num_kv_heads, 8);
  EXPECT_EQ(gqa.layerParams(), 2LL * 8192 * 8192 + 2LL * 8192 * 1024 + 3LL * 8192 * 28672 + 2 * 8192);
}

TEST(ModelSpecTest, Qwen2HasQkvBiasesOnly) {
  const ModelSpec m = modelPreset("qwen2-7b");
  EXPECT_EQ(m.arch, Arch::kQwen2);
  EXPECT_FALSE(m.tie_embeddings);
  EXPECT_EQ(m.headDim(), 128);
  EXPECT_FLOAT_EQ(m.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(m.norm_eps, 1e-6f);
  EXPECT_EQ(m.sliding_window, 0);
  // q 3584^2 + 3584, k and v 3584 x 512 + 512 each, o 3584^2 (no bias), gate/up/down, 2 RMSNorms.
  EXPECT_EQ(m.layerParams(), 233'057'792);
  EXPECT_EQ(m.layerParams(),
            2LL * 3584 * 3584 + 2LL * 3584 * 512 + (3584 + 2 * 512) + 3LL * 3584 * 18944 + 2 * 3584);
  // At tp=2 the q/k/v biases split with the heads: (3584 + 1024) / 2 of them on each rank.
  const ShardLayout half = m.shard(2, 1, 1, 0);
  EXPECT_EQ(half.layer_bytes, (3584LL * 1792 * 2 + 3584LL * 256 * 2 + (1792 + 512) + 3LL * 3584 * 9472 + 2 * 3584) * 2);
  // KV cache: 28 layers x 4 kv heads x 128 x K and V x 2 bytes.
  EXPECT_EQ(m.kvBytesPerToken(), 2LL * 28 * 4 * 128 * 2);
}

TEST(ModelSpecTest, MistralIsLlamaShapedWithASlidingWindow) {
  const ModelSpec m = modelPreset("mistral-7b");
  EXPECT_EQ(m.arch, Arch::kMistral);
  EXPECT_EQ(m.sliding_window, 4096);
  EXPECT_EQ(m.max_positions, 32768);
  EXPECT_FLOAT_EQ(m.norm_eps, 1e-5f);
  EXPECT_EQ(m.layerParams(), 2LL * 4096 * 4096 + 2LL * 4096 * 1024 + 3LL * 4096 * 14336 + 2 * 4096);
  EXPECT_EQ(m.flopsPerToken(), 2.0 * (32.0 * (2.0 * 4096 * 4096 + 2.0 * 4096 * 1024 + 3.0 * 4096 * 14336) + 32000.0 * 4096));
}

// The registry: every Arch value has its family, found again by its Hugging Face names.
TEST(ModelFamilyTest, RegistryHoldsEveryFamilyOnce) {
  const std::vector<Arch> all = {Arch::kOpt, Arch::kLlama, Arch::kQwen2, Arch::kMistral};
  ASSERT_EQ(modelFamilies().size(), all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    const ModelFamily& family = modelFamily(all[i]);
    SCOPED_TRACE(std::string(family.name));
    EXPECT_EQ(family.arch, all[i]);
    EXPECT_EQ(modelFamilies()[i], &family);
    EXPECT_EQ(archName(all[i]), family.name);
    ASSERT_FALSE(family.hf_model_types.empty());
    ASSERT_FALSE(family.hf_architectures.empty());
    for (auto type : family.hf_model_types) EXPECT_EQ(familyForHfModelType(type), &family);
    for (auto arch : family.hf_architectures) EXPECT_EQ(familyForHfArchitecture(arch), &family);
  }
  EXPECT_EQ(familyForHfModelType("gpt2"), nullptr);
  EXPECT_EQ(familyForHfArchitecture("GPT2LMHeadModel"), nullptr);
  EXPECT_EQ(supportedHfModelTypes(), "opt, llama, qwen2, mistral");
  EXPECT_EQ(supportedHfArchitectures(), "OPTForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM");
}

TEST(ModelFamilyTest, TraitsOfEachFamily) {
  const ModelFamily& opt = modelFamily(Arch::kOpt);
  EXPECT_EQ(opt.norm, NormKind::kLayerNorm);
  EXPECT_EQ(opt.mlp, MlpKind::kRelu);
  EXPECT_TRUE(opt.learnedPositions());
  EXPECT_EQ(opt.position_offset, 2);
  EXPECT_TRUE(opt.qkv_bias && opt.out_bias && opt.mlp_bias);
  EXPECT_TRUE(opt.tie_embeddings_default);
  EXPECT_EQ(opt.names.root, "model.decoder.");

  const ModelFamily& qwen2 = modelFamily(Arch::kQwen2);
  EXPECT_EQ(qwen2.norm, NormKind::kRmsNorm);
  EXPECT_EQ(qwen2.mlp, MlpKind::kSwiGlu);
  EXPECT_TRUE(qwen2.rotary());
  EXPECT_TRUE(qwen2.qkv_bias);
  EXPECT_FALSE(qwen2.out_bias);
  EXPECT_FALSE(qwen2.mlp_bias);
  EXPECT_EQ(qwen2.sliding_window, SlidingWindowKey::kGatedByUseFlag);

  const ModelFamily& mistral = modelFamily(Arch::kMistral);
  EXPECT_FALSE(mistral.qkv_bias || mistral.out_bias || mistral.mlp_bias);
  EXPECT_EQ(mistral.sliding_window, SlidingWindowKey::kSlidingWindow);
  EXPECT_EQ(mistral.names.q, modelFamily(Arch::kLlama).names.q);
  EXPECT_EQ(modelFamily(Arch::kLlama).sliding_window, SlidingWindowKey::kNone);
}

TEST(ModelSpecTest, UnknownPresetListsKnownNames) {
  EXPECT_FALSE(isModelPreset("opt-175b"));
  const std::string message = configErrorOf([] { modelPreset("opt-175b"); });
  EXPECT_EQ(message.rfind("unknown model preset \"opt-175b\" (known: opt-125m, opt-350m,", 0), 0u) << message;
}

// ---- Sharding ---------------------------------------------------------------------------------

TEST(ModelSpecTest, Opt13bTp2Pp2ShardsByHand) {
  const ModelSpec m = modelPreset("opt-13b");
  // One layer on one of two TP ranks, in parameters: q/k/v 3 x (5120 x 2560 + 2560) = 39,329,280;
  // out_proj 2560 x 5120 + 5120 = 13,112,320; fc1 5120 x 10240 + 10240 = 52,439,040;
  // fc2 10240 x 5120 + 5120 = 52,433,920; LayerNorms 4 x 5120 = 20,480. Sum 157,335,040.
  const std::int64_t layer_bytes = 157'335'040LL * 2;
  // First stage: 25,136 vocab rows x 5120 + 2050 positions x 5120 = 139,192,320 params.
  const std::int64_t embedding_bytes = 139'192'320LL * 2;
  // Last stage: final LayerNorm 10,240 + its own copy of the tied head 25,136 x 5120.
  const std::int64_t head_bytes = (10'240LL + 128'696'320LL) * 2;

  for (int tp_rank = 0; tp_rank < 2; ++tp_rank) {
    SCOPED_TRACE(tp_rank);
    const ShardLayout first = m.shard(2, 2, tp_rank, 0);
    EXPECT_EQ(first.tp_rank, tp_rank);
    EXPECT_EQ(first.pp_rank, 0);
    EXPECT_EQ(first.first_layer, 0);
    EXPECT_EQ(first.num_layers, 20);
    EXPECT_TRUE(first.has_embeddings);
    EXPECT_FALSE(first.has_lm_head);
    EXPECT_EQ(first.layer_bytes, 314'670'080);
    EXPECT_EQ(first.layer_bytes, layer_bytes);
    EXPECT_EQ(first.prefix_bytes, 278'384'640);
    EXPECT_EQ(first.prefix_bytes, embedding_bytes);
    EXPECT_EQ(first.suffix_bytes, 0);
    EXPECT_EQ(first.params, 3'285'893'120);
    EXPECT_EQ(first.bytes, 6'571'786'240);

    const ShardLayout last = m.shard(2, 2, tp_rank, 1);
    EXPECT_EQ(last.first_layer, 20);
    EXPECT_EQ(last.num_layers, 20);
    EXPECT_FALSE(last.has_embeddings);
    EXPECT_TRUE(last.has_lm_head);
    EXPECT_EQ(last.prefix_bytes, 0);
    EXPECT_EQ(last.layer_bytes, layer_bytes);
    EXPECT_EQ(last.suffix_bytes, 257'413'120);
    EXPECT_EQ(last.suffix_bytes, head_bytes);
    EXPECT_EQ(last.bytes, 6'550'814'720);
  }
  EXPECT_EQ(m.maxShardBytes(2, 2), 6'571'786'240);
}

TEST(ModelSpecTest, SingleShardIsTheWholeModel) {
  for (const std::string& name : modelPresetNames()) {
    SCOPED_TRACE(name);
    const ModelSpec m = modelPreset(name);
    const ShardLayout whole = m.shard(1, 1, 0, 0);
    EXPECT_EQ(whole.bytes, m.totalBytes());
    EXPECT_EQ(whole.num_layers, m.num_layers);
    EXPECT_TRUE(whole.has_embeddings);
    EXPECT_TRUE(whole.has_lm_head);
    EXPECT_EQ(m.maxShardBytes(1, 1), m.totalBytes());
  }
}

TEST(ModelSpecTest, LayersSplitEvenlyWithEarlierStagesTakingTheRemainder) {
  const ModelSpec m = modelPreset("opt-13b");  // 40 layers
  const std::vector<std::pair<int, int>> expected = {{0, 14}, {14, 13}, {27, 13}};
  for (int stage = 0; stage < 3; ++stage) {
    const ShardLayout s = m.shard(1, 3, 0, stage);
    EXPECT_EQ(s.first_layer, expected[stage].first) << stage;
    EXPECT_EQ(s.num_layers, expected[stage].second) << stage;
  }
  const ModelSpec small = modelPreset("opt-125m");  // 12 layers over 5 stages: 3 3 2 2 2
  int next_layer = 0;
  for (int stage = 0; stage < 5; ++stage) {
    const ShardLayout s = small.shard(1, 5, 0, stage);
    EXPECT_EQ(s.first_layer, next_layer);
    EXPECT_EQ(s.num_layers, stage < 2 ? 3 : 2);
    next_layer += s.num_layers;
  }
  EXPECT_EQ(next_layer, 12);
}

// The bytes all shards hold together beyond the model's own: replicated tensors counted once per
// extra TP rank, rows that pad the vocabulary, and a tied head's copy on the last stage.
// Written from the architecture, independently of model_spec.cpp.
std::int64_t expectedSumOfShardParams(const ModelSpec& m, int tp, int pp) {
  const std::int64_t h = m.hidden;
  const std::int64_t e = m.embedDim();
  std::int64_t replicated = 0;
  switch (m.arch) {
    case Arch::kOpt:
      replicated += m.num_layers * (4 * h + 2 * h);  // LayerNorms + out_proj and fc2 biases
      replicated += (m.max_positions + 2LL) * h;     // positions
      if (e != h) replicated += 2 * e * h;           // project_in, project_out
      if (m.final_layer_norm) replicated += 2 * h;
      break;
    case Arch::kLlama:
    case Arch::kQwen2:    // its q/k/v biases are split, not replicated
    case Arch::kMistral:
      replicated += m.num_layers * 2 * h + h;  // RMSNorm weights
      break;
  }
  const std::int64_t padded_vocab = (m.vocab + tp - 1) / tp * tp;
  const std::int64_t padding = (padded_vocab - m.vocab) * e;
  const bool head_copy = m.tie_embeddings && pp > 1;
  const int vocab_matrices = (m.tie_embeddings && !head_copy) ? 1 : 2;
  return m.totalParams() + (tp - 1) * replicated + vocab_matrices * padding + (head_copy ? m.vocab * e : 0);
}

TEST(ModelSpecTest, ShardsSumToTotalPlusReplicatedExtras) {
  const std::vector<std::tuple<std::string, int, int>> splits = {
      {"opt-125m", 1, 1},    {"opt-125m", 4, 3},    {"opt-350m", 2, 2},    {"opt-350m", 4, 1},
      {"opt-1.3b", 8, 2},    {"opt-13b", 1, 2},     {"opt-13b", 2, 1},     {"opt-13b", 4, 4},
      {"opt-30b", 7, 3},     {"opt-66b", 3, 5},     {"opt-66b", 8, 8},     {"llama-2-7b", 4, 2},
      {"llama-2-13b", 8, 3}, {"llama-2-70b", 8, 4}, {"llama-3-8b", 2, 4},  {"llama-3-70b", 4, 1},
      {"qwen2-7b", 2, 2},    {"qwen2-7b", 4, 3},    {"mistral-7b", 8, 2},  {"mistral-7b", 1, 1},
  };
  for (const auto& [name, tp, pp] : splits) {
    SCOPED_TRACE(name + " tp=" + std::to_string(tp) + " pp=" + std::to_string(pp));
    const ModelSpec m = modelPreset(name);
    std::int64_t sum_params = 0;
    std::int64_t sum_bytes = 0;
    std::int64_t largest = 0;
    int layers_seen = 0;
    for (int pp_rank = 0; pp_rank < pp; ++pp_rank) {
      for (int tp_rank = 0; tp_rank < tp; ++tp_rank) {
        const ShardLayout s = m.shard(tp, pp, tp_rank, pp_rank);
        EXPECT_EQ(s.prefix_bytes + s.num_layers * s.layer_bytes + s.suffix_bytes, s.bytes);
        EXPECT_EQ(s.params * dtypeBytes(m.dtype), s.bytes);
        EXPECT_EQ(s.prefix_bytes > 0, pp_rank == 0);
        if (tp_rank == 0) layers_seen += s.num_layers;
        sum_params += s.params;
        sum_bytes += s.bytes;
        largest = std::max(largest, s.bytes);
      }
    }
    EXPECT_EQ(layers_seen, m.num_layers);
    EXPECT_EQ(sum_params, expectedSumOfShardParams(m, tp, pp));
    EXPECT_EQ(sum_bytes, expectedSumOfShardParams(m, tp, pp) * dtypeBytes(m.dtype));
    EXPECT_EQ(m.maxShardBytes(tp, pp), largest);
  }
}

TEST(ModelSpecTest, VocabIsPaddedToAMultipleOfTp) {
  const ModelSpec m = modelPreset("opt-66b");  // 50272 rows; 72 heads allow tp=3
  EXPECT_EQ(m.paddedVocab(1), 50272);
  EXPECT_EQ(m.paddedVocab(3), 50274);
  EXPECT_EQ(m.paddedVocab(8), 50272);
  // 16,758 rows of 9216 plus 2050 positions of 9216 on each first-stage rank.
  EXPECT_EQ(m.shard(3, 2, 1, 0).prefix_bytes, (16'758LL + 2'050LL) * 9216 * 2);
}

TEST(ModelSpecTest, TiedHeadOnOneStageIsShared) {
  const ModelSpec m = modelPreset("opt-6.7b");
  const ShardLayout tp2 = m.shard(2, 1, 0, 0);
  EXPECT_EQ(tp2.suffix_bytes, 8192 * 2);  // only the final LayerNorm
  const ModelSpec llama = modelPreset("llama-2-7b");
  EXPECT_EQ(llama.shard(2, 1, 1, 0).suffix_bytes, (4096LL + 16'000LL * 4096) * 2);
}

// ---- validateParallel -------------------------------------------------------------------------

TEST(ModelSpecTest, ValidateParallelNamesThePlace) {
  const ModelSpec opt = modelPreset("opt-13b");
  EXPECT_NO_THROW(opt.validateParallel(8, 40, "$.models[0]"));
  EXPECT_EQ(configErrorOf([&] { opt.validateParallel(3, 1, "$.models[0]"); }),
            "$.models[0]: tp=3 does not divide num_heads=40 of opt-13b");
  EXPECT_EQ(configErrorOf([&] { opt.validateParallel(0, 1, "$.models[0]"); }),
            "$.models[0]: tp must be at least 1, got 0");
  EXPECT_EQ(configErrorOf([&] { opt.validateParallel(1, 0, "$.models[0]"); }),
            "$.models[0]: pp must be at least 1, got 0");
  EXPECT_EQ(configErrorOf([&] { opt.validateParallel(2, 41, "$.models[1]"); }),
            "$.models[1]: pp=41 exceeds num_layers=40 of opt-13b (every stage needs at least one layer)");

  const ModelSpec gqa = modelPreset("llama-2-70b");  // 64 heads, 8 KV heads
  EXPECT_NO_THROW(gqa.validateParallel(8, 1, "$.models[2]"));
  EXPECT_EQ(configErrorOf([&] { gqa.validateParallel(16, 1, "$.models[2]"); }),
            "$.models[2]: tp=16 does not divide num_kv_heads=8 of llama-2-70b (with grouped-query attention "
            "each rank holds whole KV heads, so tp must divide the KV head count)");

  ModelSpec odd_ffn = modelPreset("opt-125m");
  odd_ffn.ffn_hidden = 3001;
  EXPECT_EQ(configErrorOf([&] { odd_ffn.validateParallel(2, 1, "here"); }),
            "here: tp=2 does not divide ffn_hidden=3001 of opt-125m");
  EXPECT_THROW(odd_ffn.shard(2, 1, 0, 0), ConfigError);
  EXPECT_THROW(opt.shard(2, 2, 2, 0), std::out_of_range);
}

// ---- Derived figures --------------------------------------------------------------------------

TEST(ModelSpecTest, KvCacheBytesPerToken) {
  EXPECT_EQ(modelPreset("opt-13b").kvBytesPerToken(), 2LL * 40 * 40 * 128 * 2);  // 819,200
  EXPECT_EQ(modelPreset("llama-3-8b").kvBytesPerToken(), 2LL * 32 * 8 * 128 * 2);
  EXPECT_EQ(modelPreset("llama-2-70b").kvBytesPerToken(), 327'680);
}

TEST(ModelSpecTest, FlopsPerTokenCountMatmulWeightsIncludingTheHead) {
  // OPT-13B: 40 x (4 x 5120^2 + 2 x 5120 x 20480) + 50272 x 5120 = 12,840,304,640 matmul weights.
  EXPECT_DOUBLE_EQ(modelPreset("opt-13b").flopsPerToken(), 2.0 * 12'840'304'640.0);
  // Llama-2-7B: 32 x (4 x 4096^2 + 3 x 4096 x 11008) + 32000 x 4096 = 6,607,077,376.
  EXPECT_DOUBLE_EQ(modelPreset("llama-2-7b").flopsPerToken(), 2.0 * 6'607'077'376.0);
}

// ---- Hugging Face config.json -----------------------------------------------------------------

TEST(ModelSpecTest, HfOptConfigMatchesThePreset) {
  const ModelSpec m = modelFromHfConfig(fixture("opt-350m"));
  const ModelSpec preset = modelPreset("opt-350m");
  EXPECT_EQ(m.name, "opt-350m");  // the folder's name
  EXPECT_EQ(m.arch, Arch::kOpt);
  EXPECT_EQ(m.num_layers, 24);
  EXPECT_EQ(m.hidden, 1024);
  EXPECT_EQ(m.num_heads, 16);
  EXPECT_EQ(m.num_kv_heads, 16);
  EXPECT_EQ(m.ffn_hidden, 4096);
  EXPECT_EQ(m.vocab, 50272);
  EXPECT_EQ(m.max_positions, 2048);
  EXPECT_EQ(m.dtype, DType::kF16);
  EXPECT_TRUE(m.tie_embeddings);
  EXPECT_EQ(m.word_embed_proj_dim, 512);
  EXPECT_FALSE(m.layer_norm_before);
  EXPECT_FALSE(m.final_layer_norm);
  EXPECT_EQ(m.totalParams(), preset.totalParams());
  EXPECT_EQ(m.totalParams(), 331'196'416);
}

TEST(ModelSpecTest, HfLlamaConfigMatchesThePreset) {
  const ModelSpec m = modelFromHfConfig(fixture("llama-3-8b"));
  EXPECT_EQ(m.name, "llama-3-8b");
  EXPECT_EQ(m.arch, Arch::kLlama);
  EXPECT_EQ(m.num_kv_heads, 8);
  EXPECT_EQ(m.ffn_hidden, 14336);
  EXPECT_EQ(m.vocab, 128256);
  EXPECT_EQ(m.max_positions, 8192);
  EXPECT_EQ(m.dtype, DType::kBF16);
  EXPECT_FALSE(m.tie_embeddings);
  EXPECT_EQ(m.totalParams(), 8'030'261'248);
  EXPECT_EQ(m.totalBytes(), modelPreset("llama-3-8b").totalBytes());
}

TEST(ModelSpecTest, HfQwen2ConfigMatchesThePreset) {
  const ModelSpec m = modelFromHfConfig(fixture("qwen2-7b"));
  const ModelSpec preset = modelPreset("qwen2-7b");
  EXPECT_EQ(m.arch, Arch::kQwen2);
  EXPECT_EQ(m.num_layers, preset.num_layers);
  EXPECT_EQ(m.num_kv_heads, 4);
  EXPECT_EQ(m.max_positions, 131072);
  EXPECT_FALSE(m.tie_embeddings);
  EXPECT_FLOAT_EQ(m.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(m.norm_eps, 1e-6f);
  EXPECT_EQ(m.sliding_window, 0);  // "sliding_window": 131072 but "use_sliding_window": false
  EXPECT_EQ(m.totalParams(), 7'615'616'512);
  EXPECT_EQ(m.totalBytes(), preset.totalBytes());
}

TEST(ModelSpecTest, HfQwen2TiedHeadWindowAndNestedRopeTheta) {
  // transformers 5 spelling (dtype, rope_parameters), use_sliding_window on, tied head.
  const ModelSpec m = modelFromHfConfig(fixture("qwen2-tied-window"));
  EXPECT_EQ(m.arch, Arch::kQwen2);
  EXPECT_TRUE(m.tie_embeddings);
  EXPECT_EQ(m.sliding_window, 1024);
  EXPECT_FLOAT_EQ(m.rope_theta, 250000.f);
  EXPECT_FLOAT_EQ(m.norm_eps, 1e-6f);  // Qwen2Config's default
  EXPECT_EQ(m.dtype, DType::kF16);
  // 3 x (q 256^2 + 256, k and v 256 x 128 + 128, o 256^2, 3 x 256 x 512, 2 x 256) + 1000 x 256 + 256.
  EXPECT_EQ(m.totalParams(), 2'028'800);
}

TEST(ModelSpecTest, HfMistralConfigMatchesThePreset) {
  const ModelSpec m = modelFromHfConfig(fixture("mistral-7b"));
  EXPECT_EQ(m.arch, Arch::kMistral);
  EXPECT_EQ(m.sliding_window, 4096);
  EXPECT_FLOAT_EQ(m.norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(m.rope_theta, 10000.f);
  EXPECT_EQ(m.totalParams(), 7'241'732'096);
  EXPECT_EQ(m.totalBytes(), modelPreset("mistral-7b").totalBytes());

  // Later Mistral configs: "sliding_window": null (full attention) and a head_dim key.
  const ModelSpec open = modelFromHfConfig(fixture("mistral-no-window"));
  EXPECT_EQ(open.arch, Arch::kMistral);
  EXPECT_EQ(open.sliding_window, 0);
  EXPECT_FALSE(open.tie_embeddings);
  EXPECT_FLOAT_EQ(open.rope_theta, 1e6f);
  EXPECT_EQ(open.totalParams(), 38'013'440);
}

TEST(ModelSpecTest, HfConfigDefaultsAndFolderPath) {
  // Only `architectures` to tell the family, `dtype` (newer transformers) instead of
  // torch_dtype, no num_key_value_heads, no tie_word_embeddings.
  const std::string folder = std::string(COMPUTRON_SOURCE_DIR) + "/tests/data/hf_configs/llama-minimal";
  const ModelSpec m = modelFromHfConfig(folder);
  EXPECT_EQ(m.name, "llama-minimal");
  EXPECT_EQ(m.arch, Arch::kLlama);
  EXPECT_EQ(m.num_kv_heads, 8);
  EXPECT_EQ(m.dtype, DType::kF32);
  EXPECT_FALSE(m.tie_embeddings);
  // 4 x (4 x 512^2 + 3 x 512 x 1376 + 2 x 512) + 2 x 1000 x 512 + 512.
  EXPECT_EQ(m.totalParams(), 13'677'056);
  EXPECT_EQ(m.totalBytes(), 13'677'056LL * 4);
}

TEST(ModelSpecTest, HfConfigErrorsNameFileAndKey) {
  const std::string missing = fixture("missing-key");
  EXPECT_EQ(configErrorOf([&] { modelFromHfConfig(missing); }),
            missing + ": num_hidden_layers: required key is missing");

  const std::string bad_dtype = fixture("bad-dtype");
  EXPECT_EQ(configErrorOf([&] { modelFromHfConfig(bad_dtype); }),
            bad_dtype + ": torch_dtype: unsupported dtype \"int8\" (supported: float16, bfloat16, float32)");

  const std::string unsupported = fixture("unsupported-type");
  EXPECT_EQ(configErrorOf([&] { modelFromHfConfig(unsupported); }),
            unsupported + ": model_type: unsupported model type \"gpt2\" (supported: opt, llama, qwen2, mistral)");

  const std::string not_json = fixture("not-json");
  const std::string message = configErrorOf([&] { modelFromHfConfig(not_json); });
  EXPECT_EQ(message.rfind(not_json + ":", 0), 0u) << message;
  EXPECT_NE(message.find("invalid JSON"), std::string::npos) << message;

  const std::string absent = fixture("no-such-model");
  EXPECT_EQ(configErrorOf([&] { modelFromHfConfig(absent); }), absent + ": cannot open file");
}

TEST(ModelSpecTest, NamesRoundTrip) {
  for (DType d : {DType::kF16, DType::kBF16, DType::kF32}) EXPECT_EQ(dtypeFromName(dtypeName(d)), d);
  EXPECT_FALSE(dtypeFromName("int8").has_value());
  EXPECT_EQ(archName(Arch::kOpt), "opt");
  EXPECT_EQ(archName(Arch::kLlama), "llama");
  EXPECT_EQ(archName(Arch::kQwen2), "qwen2");
  EXPECT_EQ(archName(Arch::kMistral), "mistral");
}

}  // namespace
}  // namespace computron
