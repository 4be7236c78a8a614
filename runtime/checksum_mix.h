// The checksum's per-word mix, shared by host code and the CUDA checksum kernel.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define COMPUTRON_HOST_DEVICE __host__ __device__
#else
#define COMPUTRON_HOST_DEVICE
#endif

namespace computron::runtime {

// One 64-bit word's contribution at word index `index` of a shard image: position dependent, so a
// chunk written at the wrong offset changes the sum; summed with wrap-around, so any order works.
COMPUTRON_HOST_DEVICE inline std::uint64_t checksumMix(std::uint64_t word, std::uint64_t index) {
  std::uint64_t x = word ^ (index * 0x9E3779B97F4A7C15ULL);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 32;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 29;
  return x;
}

}  // namespace computron::runtime
