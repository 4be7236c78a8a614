#include "runtime/cuda/copy_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "runtime/model/cuda/cuda_check.h"

namespace computron::runtime {

std::vector<GpuInfo> cudaGpus() {
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  int driver = 0, runtime = 0;
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  std::vector<GpuInfo> out;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, i));
    GpuInfo g;
    g.name = p.name;
    g.ordinal = i;
    g.memory_bytes = static_cast<std::int64_t>(p.totalGlobalMem);
    char pci[32];
    CUDA_CHECK(cudaDeviceGetPCIBusId(pci, sizeof pci, i));
    g.pci = pci;
    g.driver_version = driver;
    g.runtime_version = runtime;
    out.push_back(g);
  }
  return out;
}

bool cudaPeerAccess(int from, int to) {
  int can = 0;
  CUDA_CHECK(cudaDeviceCanAccessPeer(&can, from, to));
  return can != 0;
}

CopyBench::CopyBench(const std::vector<int>& ordinals, std::int64_t bytes) : ordinals_(ordinals), bytes_(bytes) {
  for (int o : ordinals_) {
    CUDA_CHECK(cudaSetDevice(o));
    void* buf = nullptr;
    CUDA_CHECK(cudaMalloc(&buf, static_cast<std::size_t>(bytes)));
    CUDA_CHECK(cudaMemset(buf, 1, static_cast<std::size_t>(bytes)));
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    buffers_.push_back(buf);
    streams_.push_back(s);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
}

CopyBench::~CopyBench() {
  for (std::size_t i = 0; i < ordinals_.size(); ++i) {
    cudaSetDevice(ordinals_[i]);
    cudaStreamDestroy(static_cast<cudaStream_t>(streams_[i]));
    cudaFree(buffers_[i]);
  }
}

double CopyBench::hostToDevice(const std::vector<int>& gpus, const std::vector<const std::byte*>& srcs,
                               std::int64_t bytes, std::int64_t chunk_bytes, std::int64_t split_every) {
  if (bytes > bytes_) throw std::invalid_argument("copy bench: more bytes than the buffers hold");
  std::vector<std::size_t> idx;
  for (int g : gpus) {
    auto it = std::find(ordinals_.begin(), ordinals_.end(), g);
    if (it == ordinals_.end()) throw std::invalid_argument("copy bench: GPU without a buffer");
    idx.push_back(static_cast<std::size_t>(it - ordinals_.begin()));
  }
  const auto t0 = std::chrono::steady_clock::now();
  // Interleave issue across GPUs so none starts far ahead of the others.
  std::int64_t off = 0;
  while (off < bytes) {
    std::int64_t n = std::min(chunk_bytes, bytes - off);
    if (split_every > 0) n = std::min(n, (off / split_every + 1) * split_every - off);
    for (std::size_t i = 0; i < idx.size(); ++i) {
      CUDA_CHECK(cudaSetDevice(ordinals_[idx[i]]));
      CUDA_CHECK(cudaMemcpyAsync(static_cast<std::byte*>(buffers_[idx[i]]) + off, srcs[i] + off,
                                 static_cast<std::size_t>(n), cudaMemcpyHostToDevice,
                                 static_cast<cudaStream_t>(streams_[idx[i]])));
    }
    off += n;
  }
  for (std::size_t i : idx) CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(streams_[i])));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double CopyBench::peer(int from, int to, std::int64_t bytes) {
  auto a = std::find(ordinals_.begin(), ordinals_.end(), from);
  auto b = std::find(ordinals_.begin(), ordinals_.end(), to);
  if (a == ordinals_.end() || b == ordinals_.end()) throw std::invalid_argument("copy bench: GPU without a buffer");
  const auto ia = static_cast<std::size_t>(a - ordinals_.begin());
  const auto ib = static_cast<std::size_t>(b - ordinals_.begin());
  CUDA_CHECK(cudaSetDevice(from));
  if (cudaPeerAccess(from, to)) {
    const cudaError_t e = cudaDeviceEnablePeerAccess(to, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) {
      (void)cudaGetLastError();
    } else {
      CUDA_CHECK(e);
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  CUDA_CHECK(cudaMemcpyPeerAsync(buffers_[ib], to, buffers_[ia], from, static_cast<std::size_t>(bytes),
                                 static_cast<cudaStream_t>(streams_[ia])));
  CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(streams_[ia])));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace computron::runtime
