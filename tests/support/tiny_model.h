// A small OPT-shaped model for runtime and server tests: a few hundred KiB per shard, so loads
// through the host-memory device are quick.
#pragma once

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

}  // namespace computron::fakes
