// Real model execution's host-side parts, which run without a GPU: the random-weight filler
// (deterministic, the executor's layout and scales) and the registration checks.
#include <gtest/gtest.h>

#ifdef COMPUTRON_HAVE_CUDA
#include <cmath>
#include <cstring>
#include <vector>

#include "common/core/engine.h"
#include "runtime/cuda/model_execution.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/shard_plan.h"

namespace computron::runtime {
namespace {

ModelDeployment tinyOpt(int tp = 1) {
  ModelDeployment d;
  d.name = "tiny";
  d.spec = modelPreset("opt-125m");
  d.spec.num_layers = 2;
  d.spec.hidden = 128;
  d.spec.num_heads = 2;
  d.spec.num_kv_heads = 2;
  d.spec.ffn_hidden = 256;
  d.spec.vocab = 512;
  d.spec.max_positions = 64;
  d.spec.word_embed_proj_dim = 0;
  d.tp = tp;
  d.gpus.assign(static_cast<std::size_t>(tp), 0);
  for (int i = 0; i < tp; ++i) d.gpus[static_cast<std::size_t>(i)] = i;
  return d;
}

float halfToFloat(std::uint16_t h) {
  const std::uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 31, man = h & 1023;
  if (exp == 0) return (sign ? -1.f : 1.f) * std::ldexp(static_cast<float>(man), -24);
  return (sign ? -1.f : 1.f) * std::ldexp(static_cast<float>(man + 1024), static_cast<int>(exp) - 25);
}

TEST(CudaModelExecutionHost, RandomWeightsAreDeterministicAndScaledPerTensorKind) {
  const ModelDeployment d = tinyOpt();
  const model::ShardPlan plan = model::planShard(d.spec, 1, 1, 0, 0);
  CudaModelExecution exec(RealExecutionOptions{});
  std::vector<std::byte> a(static_cast<std::size_t>(plan.total_bytes)), b(a.size()), other(a.size());
  exec.fillShard(d, 0, 0, a);
  exec.fillShard(d, 0, 0, b);
  exec.fillShard(d, 1, 0, other);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0);
  EXPECT_NE(std::memcmp(a.data(), other.data(), a.size()), 0);  // another model, other weights
  for (const auto& t : plan.tensors) {
    double sum = 0, sq = 0;
    const std::int64_t n = t.bytes / 2;
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint16_t bits = 0;
      std::memcpy(&bits, a.data() + t.offset + 2 * i, 2);
      const float v = halfToFloat(bits);
      if (t.init == model::InitKind::kNormWeight) {
        ASSERT_EQ(v, 1.f) << t.name;
      }
      if (t.init == model::InitKind::kZero) {
        ASSERT_EQ(v, 0.f) << t.name;
      }
      if (t.init == model::InitKind::kMatrix) {
        ASSERT_LE(std::fabs(v), 0.0347f) << t.name;
      }
      sum += v;
      sq += static_cast<double>(v) * v;
    }
    if (t.init == model::InitKind::kMatrix && n > 10000) {
      EXPECT_NEAR(sum / n, 0.0, 0.002) << t.name;
      EXPECT_NEAR(std::sqrt(sq / n), 0.02, 0.001) << t.name;  // uniform +-0.0346: std 0.02
    }
  }
}

TEST(CudaModelExecutionHost, RegistrationRefusesWhatCannotRun) {
  CudaModelExecution exec(RealExecutionOptions{});
  EngineConfig config;
  config.models = {tinyOpt()};
  EXPECT_NO_THROW(exec.validate(config));
  config.models[0].spec.dtype = DType::kF32;
  EXPECT_THROW(exec.validate(config), ConfigError);
  config.models = {tinyOpt()};
  RealExecutionOptions named;
  named.checkpoints["nobody"] = "/nonexistent";
  CudaModelExecution with_checkpoint(named);
  try {
    with_checkpoint.validate(config);
    FAIL() << "accepted a checkpoint for an unknown model";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("nobody"), std::string::npos) << e.what();
  }
  RealExecutionOptions missing;
  missing.checkpoints["tiny"] = "/nonexistent/folder";
  CudaModelExecution with_missing(missing);
  EXPECT_THROW(with_missing.validate(config), ConfigError);
}

}  // namespace
}  // namespace computron::runtime
#endif
