#include "runtime/model/cuda/peer_collectives.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "runtime/model/cuda/cuda_check.h"

namespace computron::model {

namespace {

constexpr int kThreads = 512;

struct PeerArgs {
  float* staging[PeerGroup::kMaxRanks];               // each rank's staging base
  unsigned long long* flags[PeerGroup::kMaxRanks];    // each rank's flags base
  unsigned long long* counter;                        // this rank's
  unsigned int* ticket;                               // this rank's
  int* words;                                         // [0] error, [1] abort (host memory)
  long long half_floats;                              // floats in one half of the staging
  long long timeout_ns;
  int rank;
  int size;
};

__device__ __forceinline__ void storeRelease(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ unsigned long long loadAcquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ long long globalTimer() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One call: copy in -> own staging, barrier with the same block of every peer, then reduce (sum
// in rank order) or gather from every rank's staging.
template <bool kGather, bool kVector>
__global__ void __launch_bounds__(kThreads) peerKernel(PeerArgs a, const float* in, float* out, long long count) {
  __shared__ unsigned long long epoch;
  __shared__ int give_up;
  if (threadIdx.x == 0) {
    epoch = *reinterpret_cast<volatile unsigned long long*>(a.counter);
    give_up = 0;
  }
  __syncthreads();
  const long long parity_offset = (epoch & 1ull) ? a.half_floats : 0;
  const long long units = kVector ? count / 4 : count;
  const long long per = (units + gridDim.x - 1) / gridDim.x;
  const long long begin = min(units, per * blockIdx.x), end = min(units, begin + per);
  float* mine = a.staging[a.rank] + parity_offset;
  if (kVector) {
    const float4* src = reinterpret_cast<const float4*>(in);
    float4* dst = reinterpret_cast<float4*>(mine);
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) dst[i] = src[i];
  } else {
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) mine[i] = in[i];
  }
  __syncthreads();
  const unsigned long long arrived = epoch + 1;
  const int peer = static_cast<int>(threadIdx.x);
  if (peer < a.size && peer != a.rank) {
    __threadfence_system();
    storeRelease(a.flags[peer] + blockIdx.x * PeerGroup::kMaxRanks + a.rank, arrived);
    const unsigned long long* flag = a.flags[a.rank] + blockIdx.x * PeerGroup::kMaxRanks + peer;
    const long long start = globalTimer();
    volatile int* words = a.words;
    // A group that has already given up (error) or was aborted waits for nobody: every later
    // call of a failed pass returns at once instead of waiting out its own timeout.
    unsigned spins = 0;
    bool stop = words[0] != 0 || words[1] != 0;
    while (!stop && loadAcquire(flag) < arrived) {
      if ((++spins & 255u) == 0) stop = words[0] != 0 || words[1] != 0 || globalTimer() - start > a.timeout_ns;
    }
    if (stop) {
      give_up = 1;
      words[0] = 1;
    }
  }
  __syncthreads();
  if (!give_up) {
    if (kVector) {
      for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        if (kGather) {
          for (int r = 0; r < a.size; ++r)
            reinterpret_cast<float4*>(out)[r * units + i] = __ldcg(reinterpret_cast<const float4*>(a.staging[r] + parity_offset) + i);
        } else {
          float4 s = __ldcg(reinterpret_cast<const float4*>(a.staging[0] + parity_offset) + i);
          for (int r = 1; r < a.size; ++r) {
            const float4 v = __ldcg(reinterpret_cast<const float4*>(a.staging[r] + parity_offset) + i);
            s.x += v.x;
            s.y += v.y;
            s.z += v.z;
            s.w += v.w;
          }
          reinterpret_cast<float4*>(out)[i] = s;
        }
      }
    } else {
      for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        if (kGather) {
          for (int r = 0; r < a.size; ++r) out[r * units + i] = __ldcg(a.staging[r] + parity_offset + i);
        } else {
          float s = __ldcg(a.staging[0] + parity_offset + i);
          for (int r = 1; r < a.size; ++r) s += __ldcg(a.staging[r] + parity_offset + i);
          out[i] = s;
        }
      }
    }
  }
  // The last block to finish advances the counter: every block read it before this point.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(a.ticket, 1u) == gridDim.x - 1) {
      *a.ticket = 0;
      *reinterpret_cast<volatile unsigned long long*>(a.counter) = epoch + 1;
      __threadfence();
    }
  }
}

}  // namespace

bool peerCollectivesEnabled(bool by_default) {
  const char* v = std::getenv("COMPUTRON_PEER_COLLECTIVES");
  if (v == nullptr || *v == '\0') return by_default;
  return std::strcmp(v, "0") != 0;
}

std::int64_t peerAllReduceLimit() {
  const char* v = std::getenv("COMPUTRON_PEER_MAX_BYTES");
  if (v == nullptr || *v == '\0') return kDefaultPeerAllReduceBytes;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  return end != v && n >= 0 ? n : kDefaultPeerAllReduceBytes;
}

double peerTimeoutSeconds() {
  const char* v = std::getenv("COMPUTRON_PEER_TIMEOUT_S");
  if (v == nullptr || *v == '\0') return kDefaultPeerTimeoutSeconds;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  return end != v && s > 0 ? s : kDefaultPeerTimeoutSeconds;
}

std::shared_ptr<PeerGroup> PeerGroup::create(const std::vector<int>& devices, std::int64_t max_bytes, double timeout_seconds) {
  if (timeout_seconds <= 0) timeout_seconds = peerTimeoutSeconds();
  const int n = static_cast<int>(devices.size());
  if (n < 2 || n > kMaxRanks || max_bytes <= 0) return nullptr;
  for (int a : devices)
    for (int b : devices) {
      if (a == b) continue;
      int can = 0;
      if (cudaDeviceCanAccessPeer(&can, a, b) != cudaSuccess || !can) {
        (void)cudaGetLastError();
        return nullptr;
      }
    }
  int previous = 0;
  CUDA_CHECK(cudaGetDevice(&previous));
  std::shared_ptr<PeerGroup> g(new PeerGroup());
  g->devices_ = devices;
  g->max_bytes_ = (max_bytes + 255) / 256 * 256;
  g->timeout_ns_ = static_cast<std::int64_t>(timeout_seconds * 1e9);
  try {
    void* words = nullptr;
    CUDA_CHECK(cudaHostAlloc(&words, 2 * sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
    std::memset(words, 0, 2 * sizeof(int));
    g->host_words_ = static_cast<volatile int*>(words);
    CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&g->device_words_), words, 0));
    const std::size_t flag_bytes = static_cast<std::size_t>(kMaxBlocks) * kMaxRanks * sizeof(unsigned long long);
    const std::size_t total = 2 * static_cast<std::size_t>(g->max_bytes_) + flag_bytes + 256;
    for (int r = 0; r < n; ++r) {
      CUDA_CHECK(cudaSetDevice(devices[static_cast<std::size_t>(r)]));
      for (int peer : devices) {
        if (peer == devices[static_cast<std::size_t>(r)]) continue;
        const cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
        if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) CUDA_CHECK(e);
        (void)cudaGetLastError();
      }
      void* p = nullptr;
      CUDA_CHECK(cudaMalloc(&p, total));
      CUDA_CHECK(cudaMemset(p, 0, total));
      auto* base = static_cast<std::byte*>(p);
      g->memory_.push_back(base);
      g->staging_.push_back(reinterpret_cast<float*>(base));
      g->flags_.push_back(reinterpret_cast<unsigned long long*>(base + 2 * g->max_bytes_));
      g->counter_.push_back(reinterpret_cast<unsigned long long*>(base + 2 * g->max_bytes_ + flag_bytes));
      g->ticket_.push_back(reinterpret_cast<unsigned int*>(base + 2 * g->max_bytes_ + flag_bytes + 64));
      CUDA_CHECK(cudaDeviceSynchronize());
    }
  } catch (const DeviceError& e) {
    // Out of memory, say: the group's users fall back to NCCL.
    std::fprintf(stderr, "peer collectives: not available (%s); NCCL does the work\n", e.what());
    cudaSetDevice(previous);
    return nullptr;  // g's destructor frees what was allocated
  }
  CUDA_CHECK(cudaSetDevice(previous));
  return g;
}

PeerGroup::~PeerGroup() {
  int previous = 0;
  cudaGetDevice(&previous);
  for (std::size_t r = 0; r < memory_.size(); ++r) {
    cudaSetDevice(devices_[r]);
    cudaDeviceSynchronize();
    cudaFree(memory_[r]);
  }
  if (host_words_) cudaFreeHost(const_cast<int*>(host_words_));
  cudaSetDevice(previous);
}

void PeerGroup::launch(int rank, const float* in, float* out, std::int64_t count, bool gather, cudaStream_t stream) {
  if (rank < 0 || rank >= size()) throw std::logic_error("peer collective: no rank " + std::to_string(rank));
  if (count * static_cast<std::int64_t>(sizeof(float)) > max_bytes_)
    throw std::logic_error("peer collective: " + std::to_string(count * 4) + " bytes exceed the group's " + std::to_string(max_bytes_));
  if (count <= 0) return;
  PeerArgs a{};
  for (int r = 0; r < size(); ++r) {
    a.staging[r] = staging_[static_cast<std::size_t>(r)];
    a.flags[r] = flags_[static_cast<std::size_t>(r)];
  }
  a.counter = counter_[static_cast<std::size_t>(rank)];
  a.ticket = ticket_[static_cast<std::size_t>(rank)];
  a.words = device_words_;
  a.half_floats = max_bytes_ / static_cast<std::int64_t>(sizeof(float));
  a.timeout_ns = timeout_ns_;
  a.rank = rank;
  a.size = size();
  // Every rank must take the same kernel and block count, so the choice depends on `count` only;
  // whole vectors need 16-byte aligned buffers (the executors' are).
  const bool vector = count % 4 == 0;
  if (vector && (reinterpret_cast<std::uintptr_t>(in) % 16 != 0 || reinterpret_cast<std::uintptr_t>(out) % 16 != 0))
    throw std::logic_error("peer collective: buffers of a multiple of 4 floats must be 16-byte aligned");
  const std::int64_t units = vector ? count / 4 : count;
  // About 2,048 elements per block (so a decode step's message uses a few blocks), at most kMaxBlocks.
  const int blocks = static_cast<int>(std::clamp<std::int64_t>((units + 2047) / 2048, 1, kMaxBlocks));
  if (gather) {
    if (vector) peerKernel<true, true><<<blocks, kThreads, 0, stream>>>(a, in, out, count);
    else peerKernel<true, false><<<blocks, kThreads, 0, stream>>>(a, in, out, count);
  } else {
    if (vector) peerKernel<false, true><<<blocks, kThreads, 0, stream>>>(a, in, out, count);
    else peerKernel<false, false><<<blocks, kThreads, 0, stream>>>(a, in, out, count);
  }
  CUDA_CHECK(cudaGetLastError());
}

void PeerGroup::allReduceSum(int rank, float* data, std::int64_t count, cudaStream_t stream) {
  launch(rank, data, data, count, false, stream);
}

void PeerGroup::allGather(int rank, const float* in, float* out, std::int64_t count, cudaStream_t stream) {
  launch(rank, in, out, count, true, stream);
}

bool PeerGroup::failed() const { return host_words_ != nullptr && host_words_[0] != 0; }

void PeerGroup::abort() {
  broken_ = true;
  if (host_words_) const_cast<volatile int*>(host_words_)[1] = 1;
}

bool PeerGroup::usable() {
  if (failed()) broken_ = true;
  return !broken_;
}

void PeerGroup::reset() {
  int previous = 0;
  CUDA_CHECK(cudaGetDevice(&previous));
  const std::size_t flag_bytes = static_cast<std::size_t>(kMaxBlocks) * kMaxRanks * sizeof(unsigned long long);
  for (std::size_t r = 0; r < memory_.size(); ++r) {
    CUDA_CHECK(cudaSetDevice(devices_[r]));
    CUDA_CHECK(cudaDeviceSynchronize());  // calls that gave up have returned
    CUDA_CHECK(cudaMemset(flags_[r], 0, flag_bytes + 256));  // flags, counter and ticket
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  CUDA_CHECK(cudaSetDevice(previous));
  const_cast<volatile int*>(host_words_)[0] = 0;
  const_cast<volatile int*>(host_words_)[1] = 0;
  broken_ = false;
}

}  // namespace computron::model
