// Raw copy measurements for `computron bench swap`: pinned host -> device with plain
// cudaMemcpyAsync in chunks, one GPU alone or several at once, timed by the host clock from the
// first issue until every stream is synchronized (the same way the runtime's loads are timed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace computron::runtime {

struct GpuInfo {
  std::string name;
  int ordinal = 0;
  std::int64_t memory_bytes = 0;
  std::string pci;
  int driver_version = 0;
  int runtime_version = 0;
};
std::vector<GpuInfo> cudaGpus();
bool cudaPeerAccess(int from, int to);

class CopyBench {
 public:
  // A destination buffer of `bytes` on each listed GPU.
  CopyBench(const std::vector<int>& ordinals, std::int64_t bytes);
  ~CopyBench();
  CopyBench(const CopyBench&) = delete;
  CopyBench& operator=(const CopyBench&) = delete;

  // Copies `bytes` from srcs[i] to GPU ordinals[i]'s buffer, all at once; chunks never cross a
  // multiple of `split_every` in the source offsets. Returns seconds.
  double hostToDevice(const std::vector<int>& gpus, const std::vector<const std::byte*>& srcs, std::int64_t bytes,
                      std::int64_t chunk_bytes, std::int64_t split_every);
  // Device-to-device over NVLink: GPU `from`'s buffer into GPU `to`'s. Returns seconds.
  double peer(int from, int to, std::int64_t bytes);

 private:
  std::vector<int> ordinals_;
  std::vector<void*> buffers_;
  std::vector<void*> streams_;
  std::int64_t bytes_;
};

}  // namespace computron::runtime
