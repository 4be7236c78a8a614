// A small OPT-shaped model for runtime and server tests: a few hundred KiB per shard, so loads
// through the host-memory device are quick.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/deployment.h"
#include "common/model_spec.h"

namespace computron::fakes {

inline ModelSpec tinyOptSpec(int layers) {
  ModelSpec m = modelPreset("opt-125m");
  m.name = "tiny-opt";
  m.num_layers = layers;
  m.hidden = 64;
  m.num_heads = 4;
  m.num_kv_heads = 4;
  m.ffn_hidden = 256;
  m.vocab = 500;
  m.max_positions = 64;
  m.word_embed_proj_dim = 0;
  return m;
}

// A deployment of the tiny model split tp x pp over `gpus` (shard i on gpus[i]), batches of 4.
inline ModelDeployment tinyDeployment(const std::string& name, int tp, int pp, std::vector<GpuId> gpus, int layers = 4) {
  ModelDeployment d;
  d.name = name;
  d.spec = tinyOptSpec(layers);
  d.tp = tp;
  d.pp = pp;
  d.gpus = std::move(gpus);
  d.max_batch = 4;
  return d;
}

}  // namespace computron::fakes
