// SplitMix64's finaliser: the one 64-bit mixing function of the project, for seeds derived from
// other seeds (per shard, per tensor, per step) on the host and in CUDA kernels alike.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define COMPUTRON_SPLITMIX_HD __host__ __device__ __forceinline__
#else
#define COMPUTRON_SPLITMIX_HD inline
#endif

namespace computron {

COMPUTRON_SPLITMIX_HD constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace computron

#undef COMPUTRON_SPLITMIX_HD
