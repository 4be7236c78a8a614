// Runtime options for tests on the host-memory device: small copy chunks, granules and pin
// pieces, so the tiny model's loads still cut into several chunks and extents.
#pragma once

#include "common/types.h"
#include "runtime/real_backend.h"

namespace computron::fakes {

inline runtime::RuntimeOptions smallRuntimeOptions(int threads, Nanos placeholder_step) {
  runtime::RuntimeOptions o;
  o.chunk_bytes = 16 * 1024;
  o.granule = 64 * 1024;
  o.host.pin_piece_bytes = 64 * 1024;
  o.host.threads = threads;
  o.placeholder_step = placeholder_step;
  return o;
}

}  // namespace computron::fakes
