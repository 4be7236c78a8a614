#include "runtime/model/cuda/kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <array>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common/splitmix.h"
#include "runtime/model/cuda/cuda_check.h"

namespace computron::model::kernels {
namespace {

__device__ __forceinline__ float toFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float toFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T fromFloat(float x);
template <> __device__ __forceinline__ __half fromFloat<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Calls fn.template operator()<T>() with T the CUDA type of `dtype`.
template <typename Fn>
void dispatch(DType dtype, Fn&& fn) {
  if (dtype == DType::kF16) fn.template operator()<__half>();
  else if (dtype == DType::kBF16) fn.template operator()<__nv_bfloat16>();
  else throw DeviceError("model kernels: F32 weights are not supported on the GPU path");
}

__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ float blockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  return warpSum(v);
}

// Programmatic dependent launch (Hopper and later). A kernel launched with launchPdl may start
// while the kernel before it on the stream is still running: it first announces that its own
// dependents may launch (pdlTrigger), may read what no earlier kernel writes (the weights), and
// then waits for the earlier kernel to finish and its writes to be visible (pdlWait) before it
// reads or writes anything else. Every such kernel waits in every block, so completion stays
// ordered along the stream. Launched without the attribute both are no-ops.
__device__ __forceinline__ void pdlTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Embeddings

template <typename T>
__global__ void embedTokensKernel(const T* table, const int* tokens, int hidden, int vocab_begin, int local_vocab,
                                  float* residual) {
  pdlTrigger();
  pdlWait();
  const int n = blockIdx.x;
  const int row = tokens[n] - vocab_begin;
  const bool mine = row >= 0 && row < local_vocab;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    residual[static_cast<std::int64_t>(n) * hidden + i] = mine ? toFloat(table[static_cast<std::int64_t>(row) * hidden + i]) : 0.f;
}

template <typename T>
__global__ void addPositionsKernel(const T* table, const int* positions, int position_offset, int hidden, float* residual) {
  pdlTrigger();
  pdlWait();
  const int n = blockIdx.x;
  const std::int64_t row = positions[n] + position_offset;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    residual[static_cast<std::int64_t>(n) * hidden + i] += toFloat(table[row * hidden + i]);
}

// ---------------------------------------------------------------------------------------------
// Norms: one block per row; statistics in fp32 like the reference.

template <typename T>
__global__ void layerNormKernel(const float* residual, const int* rows, int hidden, const T* weight, const T* bias,
                                float eps, T* out) {
  pdlTrigger();
  pdlWait();
  __shared__ float scratch[32];
  const int row = rows ? rows[blockIdx.x] : blockIdx.x;
  const float* x = residual + static_cast<std::int64_t>(row) * hidden;
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) sum += x[i];
  const float mean = blockSum(sum, scratch) / hidden;
  float sq = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float d = x[i] - mean;
    sq += d * d;
  }
  const float inv = rsqrtf(blockSum(sq, scratch) / hidden + eps);
  T* y = out + static_cast<std::int64_t>(blockIdx.x) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    y[i] = fromFloat<T>((x[i] - mean) * inv * toFloat(weight[i]) + toFloat(bias[i]));
}

template <typename T>
__global__ void rmsNormKernel(const float* residual, const int* rows, int hidden, const T* weight, float eps, T* out) {
  pdlTrigger();
  pdlWait();
  __shared__ float scratch[32];
  const int row = rows ? rows[blockIdx.x] : blockIdx.x;
  const float* x = residual + static_cast<std::int64_t>(row) * hidden;
  float sq = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) sq += x[i] * x[i];
  const float inv = rsqrtf(blockSum(sq, scratch) / hidden + eps);
  T* y = out + static_cast<std::int64_t>(blockIdx.x) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) y[i] = fromFloat<T>(x[i] * inv * toFloat(weight[i]));
}

// ---------------------------------------------------------------------------------------------
// Elementwise

template <typename T>
__global__ void addResidualKernel(float* residual, const float* projection, const T* bias, std::int64_t total, int hidden) {
  pdlTrigger();
  pdlWait();
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    residual[i] += projection[i] + (bias ? toFloat(bias[i % hidden]) : 0.f);
}

// residual += projection (+ bias), then out = norm(residual): one block per row, the residual
// add of one sublayer fused with the norm of the next.
template <typename T, bool kLayerNorm>
__global__ void addResidualNormKernel(float* residual, const float* projection, const T* proj_bias, int hidden,
                                      const T* weight, const T* bias, float eps, T* out) {
  pdlTrigger();
  pdlWait();
  __shared__ float scratch[32];
  const std::int64_t off = static_cast<std::int64_t>(blockIdx.x) * hidden;
  float* x = residual + off;
  const float* pr = projection + off;
  float sum = 0.f, sq = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = x[i] + (pr[i] + (proj_bias ? toFloat(proj_bias[i]) : 0.f));
    x[i] = v;
    sum += v;
    sq += v * v;
  }
  T* y = out + off;
  if constexpr (kLayerNorm) {
    const float mean = blockSum(sum, scratch) / hidden;
    float dev = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float d = x[i] - mean;
      dev += d * d;
    }
    const float inv = rsqrtf(blockSum(dev, scratch) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
      y[i] = fromFloat<T>((x[i] - mean) * inv * toFloat(weight[i]) + toFloat(bias[i]));
  } else {
    const float inv = rsqrtf(blockSum(sq, scratch) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) y[i] = fromFloat<T>(x[i] * inv * toFloat(weight[i]));
  }
}

template <typename T>
__global__ void biasReluKernel(T* x, const T* bias, std::int64_t total, int width) {
  pdlTrigger();
  pdlWait();
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    // The reference adds the bias in the model dtype before the ReLU; round the same way.
    const float biased = toFloat(fromFloat<T>(toFloat(x[i]) + (bias ? toFloat(bias[i % width]) : 0.f)));
    x[i] = fromFloat<T>(fmaxf(biased, 0.f));
  }
}

template <typename T>
__global__ void swiGluKernel(const T* gate_up, T* out, std::int64_t total, int width) {
  pdlTrigger();
  pdlWait();
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t n = i / width, j = i % width;
    const float g = toFloat(gate_up[n * 2 * width + j]);
    const float u = toFloat(gate_up[n * 2 * width + width + j]);
    out[i] = fromFloat<T>(g / (1.f + expf(-g)) * u);
  }
}

int gridFor(std::int64_t total, int threads) {
  const std::int64_t blocks = (total + threads - 1) / threads;
  return static_cast<int>(blocks < 132 * 32 ? (blocks < 1 ? 1 : blocks) : 132 * 32);
}

// ---------------------------------------------------------------------------------------------
// q/k/v split, bias and rotary

// One rotate-half pair (i, i + hd/2) of one head of token n: x1, x2 are the product's values
// already rounded to the model dtype. Adds the bias, rotates q and k (Llama), stores q or the
// cache row. Shared by splitQkvKernel and the fused skinny q/k/v product.
template <typename T>
__device__ __forceinline__ void storeQkvPair(float x1, float x2, const T* bias, int n, int head, int i, const int* slots,
                                             const int* positions, const QkvLayout& layout, T* q, T* k_cache, T* v_cache) {
  const int hd = layout.head_dim, half = hd / 2;
  const int c1 = head * hd + i, c2 = c1 + half;
  const int pos = positions[n];
  if (bias) {
    // Reference: the projection's output (bias included) is rounded to the model dtype.
    x1 = toFloat(fromFloat<T>(x1 + toFloat(bias[c1])));
    x2 = toFloat(fromFloat<T>(x2 + toFloat(bias[c2])));
  }
  const bool is_q = head < layout.heads;
  const bool is_k = !is_q && head < layout.heads + layout.kv_heads;
  if (layout.rotary && (is_q || is_k)) {
    // HF: inv_freq = 1 / theta^(2i/d) in fp32; angle = pos * inv_freq; rotate-half pairs (i, i + d/2).
    const float inv_freq = 1.0f / powf(layout.rope_theta, static_cast<float>(2 * i) / static_cast<float>(hd));
    const float angle = static_cast<float>(pos) * inv_freq;
    const float c = cosf(angle), s = sinf(angle);
    const float r1 = x1 * c - x2 * s, r2 = x2 * c + x1 * s;
    x1 = r1;
    x2 = r2;
  }
  if (is_q) {
    T* dst = q + (static_cast<std::int64_t>(n) * layout.heads + head) * hd;
    dst[i] = fromFloat<T>(x1);
    dst[i + half] = fromFloat<T>(x2);
  } else {
    const std::int64_t cache_row = (static_cast<std::int64_t>(slots[n]) * layout.max_seq + pos) * layout.kv_heads * hd;
    const int kv_head = is_k ? head - layout.heads : head - layout.heads - layout.kv_heads;
    T* dst = (is_k ? k_cache : v_cache) + cache_row + static_cast<std::int64_t>(kv_head) * hd;
    dst[i] = fromFloat<T>(x1);
    dst[i + half] = fromFloat<T>(x2);
  }
}

template <typename T>
__global__ void splitQkvKernel(const T* qkv, const T* bias, const int* slots, const int* positions, QkvLayout layout,
                               T* q, T* k_cache, T* v_cache) {
  pdlTrigger();
  pdlWait();
  // Block = (token, head); thread = one rotate-half pair (i, i + hd/2).
  const int n = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
  const int hd = layout.head_dim, half = hd / 2;
  const int total_heads = layout.heads + 2 * layout.kv_heads;
  const T* row = qkv + static_cast<std::int64_t>(n) * total_heads * hd;
  storeQkvPair<T>(toFloat(row[head * hd + i]), toFloat(row[head * hd + i + half]), bias, n, head, i, slots, positions, layout, q,
                  k_cache, v_cache);
}

// The same split, four consecutive rotate-half pairs (i..i+3, i+hd/2..i+hd/2+3) of one head per
// thread with 8-byte loads and stores, over a flat grid of (token, head, quad): the kernel above
// runs one 64-thread block of 2-byte accesses per (token, head), which measured about 10x slower
// than its bytes in prefill (bench/results/prefill-breakdown-2026-12-01.md). Same arithmetic per
// pair as storeQkvPair.
template <typename T>
struct alignas(8) Quad {
  T v[4];
};

template <typename T>
__global__ void splitQkvQuadKernel(const T* qkv, const T* bias, const int* slots, const int* positions, QkvLayout layout,
                                   T* q, T* k_cache, T* v_cache, int num_tokens) {
  pdlTrigger();
  pdlWait();
  const int hd = layout.head_dim, half = hd / 2, quads = half / 4;
  const int total_heads = layout.heads + 2 * layout.kv_heads;
  const std::int64_t units = static_cast<std::int64_t>(total_heads) * quads;
  const std::int64_t total = units * num_tokens;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int n = static_cast<int>(idx / units);
    const int u = static_cast<int>(idx % units);
    const int head = u / quads, i = (u % quads) * 4;
    const T* row = qkv + static_cast<std::int64_t>(n) * total_heads * hd + static_cast<std::int64_t>(head) * hd;
    const Quad<T> a = *reinterpret_cast<const Quad<T>*>(row + i);
    const Quad<T> b = *reinterpret_cast<const Quad<T>*>(row + i + half);
    const int pos = positions[n];
    const bool is_q = head < layout.heads;
    const bool is_k = !is_q && head < layout.heads + layout.kv_heads;
    Quad<T> out1, out2;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float x1 = toFloat(a.v[k]), x2 = toFloat(b.v[k]);
      const int c1 = head * hd + i + k, c2 = c1 + half;
      if (bias) {
        x1 = toFloat(fromFloat<T>(x1 + toFloat(bias[c1])));
        x2 = toFloat(fromFloat<T>(x2 + toFloat(bias[c2])));
      }
      if (layout.rotary && (is_q || is_k)) {
        const float inv_freq = 1.0f / powf(layout.rope_theta, static_cast<float>(2 * (i + k)) / static_cast<float>(hd));
        const float angle = static_cast<float>(pos) * inv_freq;
        const float c = cosf(angle), sn = sinf(angle);
        const float r1 = x1 * c - x2 * sn, r2 = x2 * c + x1 * sn;
        x1 = r1;
        x2 = r2;
      }
      out1.v[k] = fromFloat<T>(x1);
      out2.v[k] = fromFloat<T>(x2);
    }
    T* dst;
    if (is_q) {
      dst = q + (static_cast<std::int64_t>(n) * layout.heads + head) * hd;
    } else {
      const std::int64_t cache_row = (static_cast<std::int64_t>(slots[n]) * layout.max_seq + pos) * layout.kv_heads * hd;
      const int kv_head = is_k ? head - layout.heads : head - layout.heads - layout.kv_heads;
      dst = (is_k ? k_cache : v_cache) + cache_row + static_cast<std::int64_t>(kv_head) * hd;
    }
    *reinterpret_cast<Quad<T>*>(dst + i) = out1;
    *reinterpret_cast<Quad<T>*>(dst + i + half) = out2;
  }
}

// Prefill's residual add + norm: one block of hidden / (4 * kVec) threads per row (a multiple of
// 32), each holding kVec float4 of the row in registers, so the row is read once with 16-byte
// accesses (the kernel above re-reads it per pass with 4-byte ones, and runs 1024-thread blocks
// whose reductions dominate at thousands of rows). Same arithmetic per element; the sums run in
// another order.
template <typename T, bool kLayerNorm, int kVec>
__global__ void addResidualNormVecKernel(float* residual, const float* projection, const T* proj_bias, int hidden,
                                         const T* weight, const T* bias, float eps, T* out) {
  pdlTrigger();
  pdlWait();
  __shared__ float scratch[32];
  const std::int64_t off = static_cast<std::int64_t>(blockIdx.x) * hidden;
  float4* x = reinterpret_cast<float4*>(residual + off);
  const float4* pr = reinterpret_cast<const float4*>(projection + off);
  float4 v[kVec];
  float sum = 0.f, sq = 0.f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    float4 a = x[i];
    const float4 p = pr[i];
    float b[4] = {0.f, 0.f, 0.f, 0.f};
    if (proj_bias) {
      const Quad<T> q = *reinterpret_cast<const Quad<T>*>(proj_bias + 4 * i);
#pragma unroll
      for (int e = 0; e < 4; ++e) b[e] = toFloat(q.v[e]);
    }
    a.x = a.x + (p.x + b[0]);
    a.y = a.y + (p.y + b[1]);
    a.z = a.z + (p.z + b[2]);
    a.w = a.w + (p.w + b[3]);
    x[i] = a;
    v[k] = a;
    sum += (a.x + a.y) + (a.z + a.w);
    sq += (a.x * a.x + a.y * a.y) + (a.z * a.z + a.w * a.w);
  }
  T* y = out + off;
  float mean = 0.f, inv = 0.f;
  if constexpr (kLayerNorm) {
    mean = blockSum(sum, scratch) / hidden;
    float dev = 0.f;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float d0 = v[k].x - mean, d1 = v[k].y - mean, d2 = v[k].z - mean, d3 = v[k].w - mean;
      dev += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
    inv = rsqrtf(blockSum(dev, scratch) / hidden + eps);
  } else {
    inv = rsqrtf(blockSum(sq, scratch) / hidden + eps);
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    const Quad<T> w = *reinterpret_cast<const Quad<T>*>(weight + 4 * i);
    const float f[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
    Quad<T> o;
    if constexpr (kLayerNorm) {
      const Quad<T> bb = *reinterpret_cast<const Quad<T>*>(bias + 4 * i);
#pragma unroll
      for (int e = 0; e < 4; ++e) o.v[e] = fromFloat<T>((f[e] - mean) * inv * toFloat(w.v[e]) + toFloat(bb.v[e]));
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) o.v[e] = fromFloat<T>(f[e] * inv * toFloat(w.v[e]));
    }
    *reinterpret_cast<Quad<T>*>(y + 4 * i) = o;
  }
}

// swiGlu with 16-byte accesses: eight features per thread (width a multiple of 8).
template <typename T>
__global__ void swiGluVecKernel(const T* gate_up, T* out, std::int64_t total8, int width8) {
  pdlTrigger();
  pdlWait();
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total8;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t n = i / width8, j = i % width8;
    const uint4 graw = reinterpret_cast<const uint4*>(gate_up)[n * 2 * width8 + j];
    const uint4 uraw = reinterpret_cast<const uint4*>(gate_up)[n * 2 * width8 + width8 + j];
    const T* g = reinterpret_cast<const T*>(&graw);
    const T* u = reinterpret_cast<const T*>(&uraw);
    uint4 oraw;
    T* o = reinterpret_cast<T*>(&oraw);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float gf = toFloat(g[e]);
      o[e] = fromFloat<T>(gf / (1.f + expf(-gf)) * toFloat(u[e]));
    }
    reinterpret_cast<uint4*>(out)[i] = oraw;
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill: causal softmax over cuBLAS-computed scores, one warp per row.

template <typename T>
__global__ void causalSoftmaxKernel(const float* scores, T* probs, std::int64_t rows, int len) {
  pdlTrigger();
  pdlWait();
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const int query = static_cast<int>(row % len);
  const float* s = scores + row * len;
  T* p = probs + row * len;
  float m = -FLT_MAX;
  for (int j = lane; j <= query; j += 32) m = fmaxf(m, s[j]);
  m = warpMax(m);
  float sum = 0.f;
  for (int j = lane; j <= query; j += 32) sum += expf(s[j] - m);
  const float inv = 1.f / warpSum(sum);
  for (int j = lane; j < len; j += 32) p[j] = fromFloat<T>(j <= query ? expf(s[j] - m) * inv : 0.f);
}

// ---------------------------------------------------------------------------------------------
// Decode attention, split over the context (flash-decoding). Block = (kv head, sequence, chunk of
// positions); its G = heads / kv_heads query heads share every K and V row it reads, so the cache
// is read once per step. A group of HD / 8 lanes holds one position's row as 16-byte vectors, so
// a warp covers 256 / HD positions per load and a round of U loads per thread covers
// W * U * 256 / HD positions. K and V of the first round are requested together. Rows before
// the newest position were written by earlier passes, and the sequence's slot and context before
// this pass's first kernel (the pass's metadata upload runs without the programmatic-launch
// attribute), so the first round is requested before waiting on the q/k/v kernel; only the newest
// row is read after the wait. With one chunk the block writes the output; otherwise each chunk
// writes (sum p v, max, sum p) per head and decodeCombineKernel merges them.
// Two shapes: one round (W 8, U 8: the usual 128-position chunk in one request, for grids of a
// few waves, where latency rules) and streaming (W 4, U 4: more blocks per SM, for large batches).
constexpr int kAttnOneRoundWarps = 8, kAttnOneRoundUnroll = 8;
constexpr int kAttnStreamWarps = 4;
constexpr int kAttnMinChunk = 128;
constexpr int kAttnMaxChunk = 512;

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int e = 0; e < 8; ++e) f[e] = toFloat(h[e]);
}

// Sums N values over the lanes of a group (xor distances O, O / 2, ..., 1) so that each lane ends
// with one full sum in v[0]: at each of the first log2(N) levels a lane keeps half of its values
// (the upper half where its bit O is set) and adds its partner's copy of them, then the last
// levels reduce the one value left. N - 1 + log2(2O / N) shuffles instead of N log2(2O).
template <int N, int O>
__device__ __forceinline__ void reduceScatter(float* v, int lane) {
  if constexpr (O > 0) {
    if constexpr (N == 1) {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
    } else {
      const bool upper = (lane & O) != 0;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        const float send = upper ? v[i] : v[i + N / 2];
        const float keep = upper ? v[i + N / 2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
      }
    }
    reduceScatter<(N > 1 ? N / 2 : 1), O / 2>(v, lane);
  }
}

template <typename T, int HD, int G, int W, int U>
__global__ void __launch_bounds__(W * 32) decodeAttentionSplitKernel(const T* q, const T* k_cache, const T* v_cache,
                                                                              const int* slots, const int* context,
                                                                              QkvLayout layout, float scale, int chunk,
                                                                              int splits, T* out, float* part) {
  pdlTrigger();
  constexpr int kLanesPerPos = HD / 8;
  constexpr int kPosPerWarp = 32 / kLanesPerPos;
  constexpr int kPosPerRound = kPosPerWarp * W;
  constexpr int kPosPerIter = kPosPerRound * U;
  static_assert(G <= kLanesPerPos, "reduceScatter leaves one head per lane group: G must not exceed HD / 8");
  extern __shared__ float shared[];
  __shared__ float stats[G][2];
  const int kv_head = blockIdx.x, n = blockIdx.y, split = blockIdx.z;
  const int heads = layout.heads;
  const int ctx = context[n];
  const int begin = split * chunk, end = min(ctx, begin + chunk);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / kLanesPerPos, dl = lane % kLanesPerPos;
  const std::int64_t head0 = static_cast<std::int64_t>(n) * heads + kv_head * G;
  if (begin >= end) {  // block-uniform: this chunk lies beyond the sequence and takes no part
    pdlWait();
    return;
  }
  const int len = end - begin;
  const int newest = ctx - 1 - begin;  // the row the q/k/v kernel writes, relative to the chunk
  float* scores = shared;              // [G][chunk]
  float* reduce = shared + G * chunk;  // [warps][G][HD]

  const std::int64_t row_stride = static_cast<std::int64_t>(layout.kv_heads) * HD;
  const std::int64_t base = (static_cast<std::int64_t>(slots[n]) * layout.max_seq + begin) * row_stride + kv_head * HD + dl * 8;
  const int t0 = warp * kPosPerWarp + sub;  // this thread's first position in the chunk

  // First round: K and V rows written by earlier passes, before the wait.
  uint4 kv[U], vkeep[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int t = t0 + u * kPosPerRound;
    const bool old = t < len && t != newest;
    kv[u] = old ? *reinterpret_cast<const uint4*>(k_cache + base + t * row_stride) : make_uint4(0, 0, 0, 0);
    vkeep[u] = old ? *reinterpret_cast<const uint4*>(v_cache + base + t * row_stride) : make_uint4(0, 0, 0, 0);
  }
  pdlWait();
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int t = t0 + u * kPosPerRound;
    if (t == newest) {
      kv[u] = *reinterpret_cast<const uint4*>(k_cache + base + t * row_stride);
      vkeep[u] = *reinterpret_cast<const uint4*>(v_cache + base + t * row_stride);
    }
  }
  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    unpack8<T>(*reinterpret_cast<const uint4*>(q + (head0 + g) * HD + dl * 8), qf[g]);
#pragma unroll
    for (int e = 0; e < 8; ++e) qf[g][e] *= scale;
  }

  auto score = [&](const uint4 (&rows)[U], int first) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = first + u * kPosPerRound;
      float kf[8];
      unpack8<T>(rows[u], kf);
      float d[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        d[g] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d[g] += qf[g][e] * kf[e];
      }
      // Lane dl ends with head dl / (kLanesPerPos / G)'s full dot product.
      reduceScatter<G, kLanesPerPos / 2>(d, dl);
      if (dl % (kLanesPerPos / G) == 0 && t < len) scores[(dl / (kLanesPerPos / G)) * chunk + t] = d[0];
    }
  };
  score(kv, t0);
  for (int first = t0 + kPosPerIter; first - t0 < len; first += kPosPerIter) {  // chunks longer than a round
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = first + u * kPosPerRound;
      kv[u] = t < len ? *reinterpret_cast<const uint4*>(k_cache + base + t * row_stride) : make_uint4(0, 0, 0, 0);
    }
    score(kv, first);
  }
  __syncthreads();
  for (int g = warp; g < G; g += W) {
    float m = -FLT_MAX;
    for (int t = lane; t < len; t += 32) m = fmaxf(m, scores[g * chunk + t]);
    m = warpMax(m);
    float sum = 0.f;
    for (int t = lane; t < len; t += 32) {
      const float e = expf(scores[g * chunk + t] - m);
      scores[g * chunk + t] = e;
      sum += e;
    }
    sum = warpSum(sum);
    if (lane == 0) { stats[g][0] = m; stats[g][1] = sum; }
  }
  __syncthreads();

  float acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  auto accumulate = [&](const uint4 (&rows)[U], int first) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = first + u * kPosPerRound;
      if (t < len) {
        float vf[8];
        unpack8<T>(rows[u], vf);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float p = scores[g * chunk + t];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[g][e] += p * vf[e];
        }
      }
    }
  };
  accumulate(vkeep, t0);
  for (int first = t0 + kPosPerIter; first - t0 < len; first += kPosPerIter) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = first + u * kPosPerRound;
      kv[u] = t < len ? *reinterpret_cast<const uint4*>(v_cache + base + t * row_stride) : make_uint4(0, 0, 0, 0);
    }
    accumulate(kv, first);
  }
  // Sum the position groups of the warp, then the warps.
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e)
#pragma unroll
      for (int o = kLanesPerPos; o < 32; o <<= 1) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) reduce[(warp * G + g) * HD + dl * 8 + e] = acc[g][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
    const int g = idx / HD, d = idx % HD;
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) sum += reduce[(w * G + g) * HD + d];
    if (splits == 1) {
      out[(head0 + g) * HD + d] = fromFloat<T>(sum / stats[g][1]);
    } else {
      float* p = part + ((head0 + g) * splits + split) * (HD + 2);
      p[d] = sum;
      if (d == 0) { p[HD] = stats[g][0]; p[HD + 1] = stats[g][1]; }
    }
  }
}

// One block per (head, sequence), one thread per dimension: merges the chunks' partial results.
// (Merging in the last chunk's block instead, counted with atomics, measured no faster on an
// H200 and slower at batch 32.)
template <typename T, int HD>
__global__ void decodeCombineKernel(const float* part, const int* context, int chunk, int heads, int splits, T* out) {
  pdlTrigger();
  pdlWait();
  const std::int64_t head = static_cast<std::int64_t>(blockIdx.y) * heads + blockIdx.x;
  const float* p = part + head * splits * (HD + 2);
  const int d = threadIdx.x;
  const int active = (context[blockIdx.y] + chunk - 1) / chunk;
  float m = -FLT_MAX;
  for (int s = 0; s < active; ++s) m = fmaxf(m, p[s * (HD + 2) + HD]);
  float num = 0.f, den = 0.f;
  for (int s = 0; s < active; ++s) {
    const float w = expf(p[s * (HD + 2) + HD] - m);
    num += w * p[s * (HD + 2) + d];
    den += w * p[s * (HD + 2) + HD + 1];
  }
  out[head * HD + d] = fromFloat<T>(num / den);
}

// ---------------------------------------------------------------------------------------------
// Skinny products for decode: y[rows, out] = x[rows, in] w[out, in]^T with rows <= 8 * NT, on the
// tensor cores (mma.sync m16n8k16, fp32 accumulation). Block = 16 output features; its 8 warps
// split the inner dimension in chunks of 32. Each thread loads 16 bytes of two weight rows and of
// NT x rows per chunk and feeds two mma steps from them: within a chunk the inner index is
// permuted identically for both operands (thread t's 8 values stand for the mma's k slots
// 2t, 2t+1, 2t+8, 2t+9 of two steps), which leaves the sum unchanged. Two rounds of 4 chunks are in
// flight per warp (the next round is requested before the current one is used); weights are read
// once, bypassing L1, so x stays cached.

constexpr int kSkinnyWarps = 8;
constexpr int kSkinnyUnroll = 4;

__device__ __forceinline__ uint4 loadStreaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], std::uint32_t a0, std::uint32_t a1, std::uint32_t a2, std::uint32_t a3,
                                         std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill: fused causal attention (flash-attention style). Block = 64 query rows of one sequence
// and one head, 4 warps of 16 rows each; it walks the sequence's keys in tiles of 64 up to its own
// last row, keeping a running maximum and sum per row (online softmax), so scores never leave the
// registers. Products run on the tensor cores (mma.sync m16n8k16, fp32 accumulation) with operands
// from shared memory through ldmatrix; K and V tiles are double-buffered with cp.async, rows
// swizzled by 16-byte chunk (chunk ^ row % 8) so ldmatrix reads are free of bank conflicts.
// Keys and queries past the sequence's end are zero-filled and masked.

__device__ __forceinline__ std::uint32_t sharedAddress(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cpAsync16(std::uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}
__device__ __forceinline__ void ldmatrixX4(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void ldmatrixX4Trans(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
template <typename T>
__device__ __forceinline__ std::uint32_t packPair(float a, float b) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<const std::uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const std::uint32_t*>(&v);
  }
}

constexpr int kPrefillTile = kPrefillAttentionTile;
constexpr int kPrefillWarps = 4;

template <int HD>
constexpr int prefillSharedBytes() {
  return 4 * kPrefillTile * HD * 2;  // K and V twice; Q passes through K's second buffer
}

// Element offset of (row, 16-byte chunk) in a swizzled [kPrefillTile, HD] tile.
template <int HD>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * HD + ((chunk ^ (row & 7)) << 3);
}

template <typename T, int HD, int kMinBlocks>
__global__ void __launch_bounds__(kPrefillWarps * 32, kMinBlocks) prefillAttentionKernel(const T* q, const T* k_cache, const T* v_cache,
                                                                              const int4* tiles, QkvLayout layout,
                                                                              float scale_log2, T* out) {
  extern __shared__ __align__(128) unsigned char prefill_shared[];
  constexpr int kChunks = HD / 8;
  constexpr int kTileElems = kPrefillTile * HD;
  T* sk = reinterpret_cast<T*>(prefill_shared);
  T* sv = sk + 2 * kTileElems;
  T* sq = sk + kTileElems;  // K's second buffer, free until the second key tile is requested
  pdlTrigger();
  pdlWait();
  const int4 tile = tiles[blockIdx.x];
  const int begin = tile.x, len = tile.y, slot = tile.z, q0 = tile.w;
  const int head = blockIdx.y;
  const int kv_head = head / (layout.heads / layout.kv_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const std::int64_t q_stride = static_cast<std::int64_t>(layout.heads) * HD;
  const std::int64_t kv_stride = static_cast<std::int64_t>(layout.kv_heads) * HD;
  const std::int64_t cache_base = static_cast<std::int64_t>(slot) * layout.max_seq * kv_stride + static_cast<std::int64_t>(kv_head) * HD;
  const T* k_base = k_cache + cache_base;
  const T* v_base = v_cache + cache_base;
  const int kv_end = min(len, q0 + kPrefillTile);
  const int kv_tiles = (kv_end + kPrefillTile - 1) / kPrefillTile;

  for (int i = threadIdx.x; i < kPrefillTile * kChunks; i += kPrefillWarps * 32) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = q0 + r < len;
    const T* src = valid ? q + (begin + q0 + r) * q_stride + static_cast<std::int64_t>(head) * HD + c * 8 : q;
    cpAsync16(sharedAddress(sq + swizzled<HD>(r, c)), src, valid);
  }
  auto load_kv = [&](int j, int buffer) {
    for (int i = threadIdx.x; i < kPrefillTile * kChunks; i += kPrefillWarps * 32) {
      const int r = i / kChunks, c = i % kChunks;
      const int t = j * kPrefillTile + r;
      const bool valid = t < kv_end;
      const std::int64_t offset = valid ? static_cast<std::int64_t>(t) * kv_stride + c * 8 : 0;
      const int at = buffer * kTileElems + swizzled<HD>(r, c);
      cpAsync16(sharedAddress(sk + at), k_base + offset, valid);
      cpAsync16(sharedAddress(sv + at), v_base + offset, valid);
    }
  };
  load_kv(0, 0);
  cpAsyncCommit();
  cpAsyncWait<0>();
  __syncthreads();

  std::uint32_t qf[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
    ldmatrixX4(qf[kk], sharedAddress(sq + swizzled<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))));
  __syncthreads();  // every warp holds its Q fragments before the second key tile overwrites them

  float o[HD / 8][4];
#pragma unroll
  for (int t = 0; t < HD / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const int row0 = q0 + warp * 16 + (lane >> 2);  // query position of c0/c1; c2/c3 are row0 + 8

  for (int j = 0; j < kv_tiles; ++j) {
    const int buffer = j & 1;
    if (j + 1 < kv_tiles) load_kv(j + 1, buffer ^ 1);
    cpAsyncCommit();
    cpAsyncWait<1>();
    __syncthreads();
    const T* kt = sk + buffer * kTileElems;
    const T* vt = sv + buffer * kTileElems;

    float s[8][4];
#pragma unroll
    for (int t = 0; t < 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        std::uint32_t b[4];
        ldmatrixX4(b, sharedAddress(kt + swizzled<HD>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
        mma16816<T>(s[2 * np], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b[0], b[1]);
        mma16816<T>(s[2 * np + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b[2], b[3]);
      }
    }

    // Scale, mask (causal, and keys past the sequence) and the online softmax of rows row0, row0 + 8.
    const bool edge = (j + 1) * kPrefillTile > q0 || (j + 1) * kPrefillTile > kv_end;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int t = 0; t < 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = j * kPrefillTile + t * 8 + ((lane & 3) << 1) + (e & 1);
        const int row = row0 + ((e >> 1) << 3);
        float v = s[t][e] * scale_log2;
        if (edge && (key > row || key >= kv_end)) v = -INFINITY;
        s[t][e] = v;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], v);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      // Every row holds at least one unmasked key in every tile it visits, so the maximum is finite.
      const float next = fmaxf(row_max[r], tile_max[r]);
      alpha[r] = exp2f(row_max[r] - next);
      row_max[r] = next;
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int t = 0; t < 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[t][e] - row_max[e >> 1]);
        s[t][e] = p;
        row_sum[e >> 1] += p;
      }
    }
#pragma unroll
    for (int t = 0; t < HD / 8; ++t) {
      o[t][0] *= alpha[0];
      o[t][1] *= alpha[0];
      o[t][2] *= alpha[1];
      o[t][3] *= alpha[1];
    }

    // o += p v: the score accumulators of two key tiles are the A operand of one 16-key step.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const std::uint32_t a0 = packPair<T>(s[2 * kk][0], s[2 * kk][1]);
      const std::uint32_t a1 = packPair<T>(s[2 * kk][2], s[2 * kk][3]);
      const std::uint32_t a2 = packPair<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      const std::uint32_t a3 = packPair<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int hp = 0; hp < HD / 16; ++hp) {
        std::uint32_t b[4];
        ldmatrixX4Trans(b, sharedAddress(vt + swizzled<HD>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), hp * 2 + (lane >> 4))));
        mma16816<T>(o[2 * hp], a0, a1, a2, a3, b[0], b[1]);
        mma16816<T>(o[2 * hp + 1], a0, a1, a2, a3, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration refills the other buffer, read here two iterations ago
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + r * 8;
    if (row >= len) continue;
    const float inv = 1.f / row_sum[r];
    T* dst = out + (begin + row) * q_stride + static_cast<std::int64_t>(head) * HD + ((lane & 3) << 1);
#pragma unroll
    for (int t = 0; t < HD / 8; ++t)
      *reinterpret_cast<std::uint32_t*>(dst + t * 8) = packPair<T>(o[t][2 * r] * inv, o[t][2 * r + 1] * inv);
  }
}

// Model-dtype outputs may take OPT's fc1 epilogue: relu(round(round(y) + bias)), rounded the way
// the separate biasRelu kernel after a cuBLAS product rounds.
template <typename T, typename Out>
__device__ __forceinline__ void storeOut(Out* y, float v, const T* bias, int feature) {
  if constexpr (std::is_same_v<Out, float>) {
    *y = v;
  } else {
    if (bias) v = fmaxf(toFloat(fromFloat<T>(toFloat(fromFloat<T>(v)) + toFloat(bias[feature]))), 0.f);
    *y = fromFloat<T>(v);
  }
}

// Epilogues: kSkinnyPlain writes y rows (features row0..row0+15 of block row0 / 16);
// kSkinnySwiGlu pairs feature f of the gate half with f + width of the up half (block = 8 gate
// features) and writes silu(gate) * up; kSkinnyQkv pairs rotate-half partners i, i + hd/2 of
// one head (block = 8 pairs) and stores q and the cache rows like splitQkv.
enum SkinnyMode { kSkinnyPlain = 0, kSkinnySwiGlu = 1, kSkinnyQkv = 2 };

template <typename T>
struct SkinnyEpilogue {
  const T* bias = nullptr;  // plain: ReLU bias (model-dtype y); qkv: the q|k|v bias
  int width = 0;            // swiglu: features per half
  const int* slots = nullptr;
  const int* positions = nullptr;
  QkvLayout layout;
  T* q = nullptr;
  T* k_cache = nullptr;
  T* v_cache = nullptr;
};

template <typename T, int NT, typename Out, int Mode>
__global__ void __launch_bounds__(kSkinnyWarps * 32) skinnyGemmKernel(const T* x, const T* w, Out* y, int rows, int out, int in,
                                                                      SkinnyEpilogue<T> epi) {
  __shared__ float reduce[kSkinnyWarps][NT][8][16];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * 16;
  // Features of mma rows g and g + 8.
  int fa = row0 + g, fb = row0 + g + 8;
  int pair_head = 0, pair_i0 = 0;
  if constexpr (Mode == kSkinnySwiGlu) {
    fa = blockIdx.x * 8 + g;
    fb = fa + epi.width;
  } else if constexpr (Mode == kSkinnyQkv) {
    const int half = epi.layout.head_dim / 2, per_head = half / 8;
    pair_head = blockIdx.x / per_head;
    pair_i0 = (blockIdx.x % per_head) * 8;
    fa = pair_head * epi.layout.head_dim + pair_i0 + g;
    fb = fa + half;
  }
  const bool va = fa < out, vb = fb < out;
  const T* wa = w + static_cast<std::int64_t>(va ? fa : 0) * in + t * 8;
  const T* wb = w + static_cast<std::int64_t>(vb ? fb : 0) * in + t * 8;
  const T* xr[NT];
  bool vx[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    vx[j] = j * 8 + g < rows;
    xr[j] = x + static_cast<std::int64_t>(vx[j] ? j * 8 + g : 0) * in + t * 8;
  }
  float c[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
  const int chunks = (in + 31) / 32;
  constexpr int kStep = kSkinnyWarps * kSkinnyUnroll;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  // Weight chunks of the round starting at c0, into a / b.
  auto loadWeights = [&](int c0, uint4 (&a)[kSkinnyUnroll], uint4 (&b)[kSkinnyUnroll]) {
#pragma unroll
    for (int u = 0; u < kSkinnyUnroll; ++u) {
      const int chunk = c0 + u * kSkinnyWarps;
      const int k = chunk * 32;
      const bool ok = chunk < chunks && k + t * 8 < in;  // in is a multiple of 8
      a[u] = ok && va ? loadStreaming(wa + k) : zero;
      b[u] = ok && vb ? loadStreaming(wb + k) : zero;
    }
  };
  uint4 av[kSkinnyUnroll], bv[kSkinnyUnroll];
  // The first round's weights are requested before waiting for the kernel that writes x: under
  // programmatic dependent launch they stream in while that kernel finishes.
  loadWeights(warp, av, bv);
  pdlTrigger();
  pdlWait();
  for (int c0 = warp; c0 < chunks; c0 += kStep) {
    // Two rounds of weights in flight: the next round is requested before this one is used.
    uint4 an[kSkinnyUnroll], bn[kSkinnyUnroll];
    const bool more = c0 + kStep < chunks;
    if (more) loadWeights(c0 + kStep, an, bn);
    uint4 xv[kSkinnyUnroll][NT];
#pragma unroll
    for (int u = 0; u < kSkinnyUnroll; ++u) {
      const int k = (c0 + u * kSkinnyWarps) * 32;
      const bool ok = c0 + u * kSkinnyWarps < chunks && k + t * 8 < in;
#pragma unroll
      for (int j = 0; j < NT; ++j) xv[u][j] = ok && vx[j] ? *reinterpret_cast<const uint4*>(xr[j] + k) : zero;
    }
#pragma unroll
    for (int u = 0; u < kSkinnyUnroll; ++u) {
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        mma16816<T>(c[j], av[u].x, bv[u].x, av[u].y, bv[u].y, xv[u][j].x, xv[u][j].y);
        mma16816<T>(c[j], av[u].z, bv[u].z, av[u].w, bv[u].w, xv[u][j].z, xv[u][j].w);
      }
    }
    if (more) {
#pragma unroll
      for (int u = 0; u < kSkinnyUnroll; ++u) {
        av[u] = an[u];
        bv[u] = bn[u];
      }
    }
  }
  // c[j]: (feature g, token j*8 + 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    reduce[warp][j][2 * t][g] = c[j][0];
    reduce[warp][j][2 * t + 1][g] = c[j][1];
    reduce[warp][j][2 * t][g + 8] = c[j][2];
    reduce[warp][j][2 * t + 1][g + 8] = c[j][3];
  }
  __syncthreads();
  if constexpr (Mode == kSkinnyPlain) {
    for (int idx = threadIdx.x; idx < NT * 128; idx += blockDim.x) {
      const int m = idx & 15, nn = (idx >> 4) & 7, j = idx >> 7;
      const int token = j * 8 + nn, feature = row0 + m;
      if (token < rows && feature < out) {
        float sum = 0.f;
#pragma unroll
        for (int ww = 0; ww < kSkinnyWarps; ++ww) sum += reduce[ww][j][nn][m];
        storeOut<T, Out>(y + static_cast<std::int64_t>(token) * out + feature, sum, epi.bias, feature);
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < NT * 64; idx += blockDim.x) {
      const int m = idx & 7, nn = (idx >> 3) & 7, j = idx >> 6;
      const int token = j * 8 + nn;
      if (token >= rows) continue;
      float s1 = 0.f, s2 = 0.f;
#pragma unroll
      for (int ww = 0; ww < kSkinnyWarps; ++ww) {
        s1 += reduce[ww][j][nn][m];
        s2 += reduce[ww][j][nn][m + 8];
      }
      // The unfused path rounds the product to the model dtype before its second kernel.
      const float x1 = toFloat(fromFloat<T>(s1)), x2 = toFloat(fromFloat<T>(s2));
      if constexpr (Mode == kSkinnySwiGlu) {
        const int feature = blockIdx.x * 8 + m;
        if (feature < epi.width)
          y[static_cast<std::int64_t>(token) * epi.width + feature] = fromFloat<T>(x1 / (1.f + expf(-x1)) * x2);
      } else {
        storeQkvPair<T>(x1, x2, epi.bias, token, pair_head, pair_i0 + m, epi.slots, epi.positions, epi.layout, epi.q,
                        epi.k_cache, epi.v_cache);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Logits and sampling

__global__ void interleaveVocabKernel(const float* gathered, float* logits, int tp, int batch, int local_vocab) {
  const std::int64_t total = static_cast<std::int64_t>(tp) * batch * local_vocab;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / (static_cast<std::int64_t>(batch) * local_vocab);
    const std::int64_t rest = i % (static_cast<std::int64_t>(batch) * local_vocab);
    const std::int64_t b = rest / local_vocab, j = rest % local_vocab;
    logits[b * tp * local_vocab + r * local_vocab + j] = gathered[i];
  }
}

constexpr int kSampleThreads = 1024;

// Block-wide reduce of (value, index) keeping the larger value, then the lower index.
__device__ void argmaxReduce(float& value, int& index, float* vals, int* idxs) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, value, o);
    const int oi = __shfl_xor_sync(0xffffffffu, index, o);
    if (ov > value || (ov == value && oi < index)) { value = ov; index = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) { vals[warp] = value; idxs[warp] = index; }
  __syncthreads();
  if (warp == 0) {
    value = vals[lane];
    index = idxs[lane];
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, value, o);
      const int oi = __shfl_xor_sync(0xffffffffu, index, o);
      if (ov > value || (ov == value && oi < index)) { value = ov; index = oi; }
    }
    if (lane == 0) { vals[0] = value; idxs[0] = index; }
  }
  __syncthreads();
  value = vals[0];
  index = idxs[0];
}

__global__ void __launch_bounds__(kSampleThreads) sampleKernel(const float* logits, int vocab, float temperature, int top_k,
                                                               float top_p, std::uint64_t seed, int step, int* tokens) {
  __shared__ float vals[32];
  __shared__ int idxs[32];
  __shared__ float scratch[32];
  __shared__ float chunk_mass[kSampleThreads];
  __shared__ int chosen;
  const int b = blockIdx.x;
  const float* row = logits + static_cast<std::int64_t>(b) * vocab;
  float best = -FLT_MAX, lowest = FLT_MAX;
  int best_index = vocab;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = row[j];
    if (v > best || (v == best && j < best_index)) { best = v; best_index = j; }
    lowest = fminf(lowest, v);
  }
  float low_value = -lowest;
  int unused = 0;
  argmaxReduce(best, best_index, vals, idxs);
  if (temperature <= 0.f || top_k == 1) {
    if (threadIdx.x == 0) tokens[b] = best_index;
    return;
  }
  argmaxReduce(low_value, unused, vals, idxs);
  lowest = -low_value;

  // Threshold on logits: every token with logit >= threshold is kept.
  float threshold = lowest;
  if (top_k > 0 && top_k < vocab) {
    float lo = lowest, hi = best;  // invariant: count(>= lo) >= top_k
    for (int it = 0; it < 40; ++it) {
      const float mid = 0.5f * (lo + hi);
      float count = 0.f;
      for (int j = threadIdx.x; j < vocab; j += blockDim.x) count += row[j] >= mid ? 1.f : 0.f;
      if (blockSum(count, scratch) >= static_cast<float>(top_k)) lo = mid; else hi = mid;
    }
    threshold = lo;
  }
  const float inv_t = 1.f / temperature;
  auto weight = [&](float v) { return v >= threshold ? expf((v - best) * inv_t) : 0.f; };
  if (top_p < 1.f) {
    float total = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) total += weight(row[j]);
    total = blockSum(total, scratch);
    float lo = threshold, hi = best;  // invariant: mass(>= lo) >= top_p * total
    for (int it = 0; it < 40; ++it) {
      const float mid = 0.5f * (lo + hi);
      float mass = 0.f;
      for (int j = threadIdx.x; j < vocab; j += blockDim.x) mass += row[j] >= mid ? weight(row[j]) : 0.f;
      if (blockSum(mass, scratch) >= top_p * total) lo = mid; else hi = mid;
    }
    threshold = lo;
  }
  // Inverse-CDF sampling in index order: each thread owns a contiguous chunk.
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int begin = threadIdx.x * chunk, end = min(vocab, begin + chunk);
  float mine = 0.f;
  for (int j = begin; j < end; ++j) mine += weight(row[j]);
  chunk_mass[threadIdx.x] = mine;
  if (threadIdx.x == 0) chosen = best_index;  // fallback for rounding at the very end
  __syncthreads();
  if (threadIdx.x == 0) {
    float run = 0.f;
    for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
      const float m = chunk_mass[t];
      chunk_mass[t] = run;
      run += m;
    }
    const std::uint64_t bits = splitmix64(splitmix64(seed ^ (0x5851f42d4c957f2dull * (static_cast<std::uint64_t>(b) + 1))) + static_cast<std::uint64_t>(step));
    const float u = static_cast<float>(static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0)) * run;
    vals[0] = u;
  }
  __syncthreads();
  const float u = vals[0];
  const float start = chunk_mass[threadIdx.x];
  if (mine > 0.f && u >= start && u < start + mine) {
    float run = start;
    for (int j = begin; j < end; ++j) {
      run += weight(row[j]);
      if (u < run) { chosen = j; break; }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) tokens[b] = chosen;
}

template <typename T>
__global__ void fillUniformKernel(T* data, std::int64_t elements, std::uint64_t seed, float amplitude, float constant) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < elements;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float v = constant;
    if (amplitude != 0.f) {
      const std::uint64_t bits = splitmix64(seed + static_cast<std::uint64_t>(i));
      v = (static_cast<float>(bits >> 40) * (1.0f / 16777216.0f) * 2.f - 1.f) * amplitude;
    }
    data[i] = fromFloat<T>(v);
  }
}

// Whether launchPdl sets the programmatic-serialization attribute: compute capability 9.0 or
// later, and COMPUTRON_PDL not 0 (read once; the A/B switch for measurements).
bool pdlEnabled() {
  static const bool env_on = [] {
    const char* v = std::getenv("COMPUTRON_PDL");
    return v == nullptr || std::atoi(v) != 0;
  }();
  if (!env_on) return false;
  static int major_of[64] = {};  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  int& major = major_of[device];
  if (major == 0 && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) major = -1;
  return major >= 9;
}

// kernel<<<grid, block, shared, stream>>>(args...), allowed to overlap the previous kernel on
// the stream (see pdlWait); the arguments must have the kernel's parameter types.
template <typename... Params, typename... Args>
void launchPdl(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared, cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = pdlEnabled() ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Launchers

void embedTokens(DType dtype, const void* table, const int* tokens, int num_tokens, int hidden, int vocab_begin,
                 int local_vocab, float* residual, cudaStream_t stream) {
  dispatch(dtype, [&]<typename T>() {
    launchPdl(embedTokensKernel<T>, dim3(num_tokens), dim3(256), 0, stream, static_cast<const T*>(table), tokens, hidden, vocab_begin, local_vocab, residual);
  });
  CUDA_CHECK_LAUNCH("embedTokens");
}

void addPositions(DType dtype, const void* table, const int* positions, int position_offset, int num_tokens, int hidden,
                  float* residual, cudaStream_t stream) {
  dispatch(dtype, [&]<typename T>() {
    launchPdl(addPositionsKernel<T>, dim3(num_tokens), dim3(256), 0, stream, static_cast<const T*>(table), positions,
              position_offset, hidden, residual);
  });
  CUDA_CHECK_LAUNCH("addPositions");
}

void layerNorm(DType dtype, const float* residual, const int* rows, int num_rows, int hidden, const void* weight,
               const void* bias, float eps, void* out, cudaStream_t stream) {
  dispatch(dtype, [&]<typename T>() {
    launchPdl(layerNormKernel<T>, dim3(num_rows), dim3(256), 0, stream, residual, rows, hidden, static_cast<const T*>(weight),
                                                     static_cast<const T*>(bias), eps, static_cast<T*>(out));
  });
  CUDA_CHECK_LAUNCH("layerNorm");
}

void rmsNorm(DType dtype, const float* residual, const int* rows, int num_rows, int hidden, const void* weight,
             float eps, void* out, cudaStream_t stream) {
  dispatch(dtype, [&]<typename T>() {
    launchPdl(rmsNormKernel<T>, dim3(num_rows), dim3(256), 0, stream, residual, rows, hidden, static_cast<const T*>(weight), eps, static_cast<T*>(out));
  });
  CUDA_CHECK_LAUNCH("rmsNorm");
}

void addResidual(DType dtype, float* residual, const float* projection, const void* bias, int num_tokens, int hidden,
                 cudaStream_t stream) {
  const std::int64_t total = static_cast<std::int64_t>(num_tokens) * hidden;
  dispatch(dtype, [&]<typename T>() {
    launchPdl(addResidualKernel<T>, dim3(gridFor(total, 256)), dim3(256), 0, stream, residual, projection, static_cast<const T*>(bias), total, hidden);
  });
  CUDA_CHECK_LAUNCH("addResidual");
}

void biasRelu(DType dtype, void* x, const void* bias, int num_tokens, int width, cudaStream_t stream) {
  const std::int64_t total = static_cast<std::int64_t>(num_tokens) * width;
  dispatch(dtype, [&]<typename T>() {
    launchPdl(biasReluKernel<T>, dim3(gridFor(total, 256)), dim3(256), 0, stream, static_cast<T*>(x), static_cast<const T*>(bias), total, width);
  });
  CUDA_CHECK_LAUNCH("biasRelu");
}

// COMPUTRON_VEC_ELEMENTWISE=0: the scalar swiGlu and prefill residual + norm kernels (for comparison).
static bool vecElementwiseEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("COMPUTRON_VEC_ELEMENTWISE");
    return v == nullptr || std::atoi(v) != 0;
  }();
  return enabled;
}

void swiGlu(DType dtype, const void* gate_up, void* out, int num_tokens, int width, cudaStream_t stream) {
  const std::int64_t total = static_cast<std::int64_t>(num_tokens) * width;
  dispatch(dtype, [&]<typename T>() {
    if (width % 8 == 0 && vecElementwiseEnabled())
      launchPdl(swiGluVecKernel<T>, dim3(gridFor(total / 8, 256)), dim3(256), 0, stream, static_cast<const T*>(gate_up),
                static_cast<T*>(out), total / 8, width / 8);
    else
      launchPdl(swiGluKernel<T>, dim3(gridFor(total, 256)), dim3(256), 0, stream, static_cast<const T*>(gate_up), static_cast<T*>(out), total, width);
  });
  CUDA_CHECK_LAUNCH("swiGlu");
}

// COMPUTRON_SPLIT_QUAD=0: the one-pair-per-thread split kernel (for comparison).
static bool quadSplitEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("COMPUTRON_SPLIT_QUAD");
    return v == nullptr || *v == '\0' || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

void splitQkv(DType dtype, const void* qkv, const void* bias, const int* slots, const int* positions, int num_tokens,
              const QkvLayout& layout, void* q, void* k_cache, void* v_cache, cudaStream_t stream, bool per_pair) {
  dispatch(dtype, [&]<typename T>() {
    const int total_heads = layout.heads + 2 * layout.kv_heads;
    if ((layout.head_dim / 2) % 4 == 0 && quadSplitEnabled() && !per_pair) {
      const std::int64_t total = static_cast<std::int64_t>(num_tokens) * total_heads * (layout.head_dim / 8);
      launchPdl(splitQkvQuadKernel<T>, dim3(gridFor(total, 256)), dim3(256), 0, stream, static_cast<const T*>(qkv),
                static_cast<const T*>(bias), slots, positions, layout, static_cast<T*>(q), static_cast<T*>(k_cache),
                static_cast<T*>(v_cache), num_tokens);
    } else {
      launchPdl(splitQkvKernel<T>, dim3(num_tokens, total_heads), dim3(layout.head_dim / 2), 0, stream, static_cast<const T*>(qkv),
                static_cast<const T*>(bias), slots, positions, layout, static_cast<T*>(q), static_cast<T*>(k_cache),
                static_cast<T*>(v_cache));
    }
  });
  CUDA_CHECK_LAUNCH("splitQkv");
}

void causalSoftmax(DType dtype, const float* scores, void* probs, int matrices, int len, cudaStream_t stream) {
  const std::int64_t rows = static_cast<std::int64_t>(matrices) * len;
  const int rows_per_block = 8;
  dispatch(dtype, [&]<typename T>() {
    launchPdl(causalSoftmaxKernel<T>, dim3(static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block)), dim3(rows_per_block * 32), 0, stream,
        scores, static_cast<T*>(probs), rows, len);
  });
  CUDA_CHECK_LAUNCH("causalSoftmax");
}

bool prefillAttentionSupports(int head_dim) { return head_dim == 64 || head_dim == 128; }

void prefillAttention(DType dtype, const void* q, const void* k_cache, const void* v_cache, const int* tiles, int num_tiles,
                      const QkvLayout& layout, float scale, void* out, cudaStream_t stream) {
  if (num_tiles == 0) return;
  if (!prefillAttentionSupports(layout.head_dim))
    throw DeviceError("prefill attention: head dimension " + std::to_string(layout.head_dim) + " is not supported (64 or 128)");
  const float scale_log2 = scale * 1.4426950408889634f;
  dispatch(dtype, [&]<typename T>() {
    // Two blocks an SM (174 registers a thread set that) unless COMPUTRON_PREFILL_ATTN_BLOCKS=3:
    // registers capped at 168 for a third block, which measured slower on an H200 (a few bytes
    // spill; bench/results/prefill-2026-12-01.md).
    static const int min_blocks = [] {
      const char* v = std::getenv("COMPUTRON_PREFILL_ATTN_BLOCKS");
      return v != nullptr && std::atoi(v) == 3 ? 3 : 2;
    }();
    auto run = [&]<int HD>() {
      auto* kernel = min_blocks == 2 ? prefillAttentionKernel<T, HD, 2> : prefillAttentionKernel<T, HD, 3>;
      constexpr int shared = prefillSharedBytes<HD>();
      // Above the 48 KiB default: opt in once per device (the attribute is per device context).
      // (Workers of several GPUs may race here: setting the attribute twice is harmless.)
      static std::atomic<bool> opted[64] = {};
      int device = 0;
      CUDA_CHECK(cudaGetDevice(&device));
      if (device < 0 || device >= 64 || !opted[device].load()) {
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared));
        if (device >= 0 && device < 64) opted[device].store(true);
      }
      launchPdl(kernel, dim3(static_cast<unsigned>(num_tiles), static_cast<unsigned>(layout.heads)), dim3(kPrefillWarps * 32),
                static_cast<std::size_t>(shared), stream, static_cast<const T*>(q), static_cast<const T*>(k_cache),
                static_cast<const T*>(v_cache), reinterpret_cast<const int4*>(tiles), layout, scale_log2, static_cast<T*>(out));
    };
    if (layout.head_dim == 64) run.template operator()<64>();
    else run.template operator()<128>();
  });
  CUDA_CHECK_LAUNCH("prefillAttention");
}

int decodeAttentionSplits(int kv_heads, int num_tokens, int max_seq) {
  // Blocks to aim for, in multiples of an H100/H200's 132 SMs (COMPUTRON_ATTN_WAVES, default 8),
  // in chunks of at least 128 positions. Measured on an H200 (context 576): OPT-6.7B shapes at
  // batch 8 took 24 us a layer in 5 chunks against 29 us in 2; Llama-3-8B (GQA) at batch 8 took
  // 12 us in 5 chunks against 17 us in 17 chunks of 38 positions.
  static const int waves = [] {
    const char* v = std::getenv("COMPUTRON_ATTN_WAVES");
    return v ? std::clamp(std::atoi(v), 1, 64) : 8;
  }();
  const int target_blocks = waves * 132;
  const int blocks = std::max(1, kv_heads * num_tokens);
  int splits = (target_blocks + blocks - 1) / blocks;
  splits = std::min(splits, (max_seq + kAttnMinChunk - 1) / kAttnMinChunk);
  splits = std::max(splits, (max_seq + kAttnMaxChunk - 1) / kAttnMaxChunk);
  return std::max(1, splits);
}

std::int64_t decodeAttentionPartialFloats(int heads, int kv_heads, int head_dim, int max_tokens, int max_seq) {
  std::int64_t most = 0;
  for (int n = 1; n <= max_tokens; ++n) {
    const int splits = decodeAttentionSplits(kv_heads, n, max_seq);
    if (splits > 1) most = std::max<std::int64_t>(most, static_cast<std::int64_t>(n) * heads * splits * (head_dim + 2));
  }
  return most;
}

int decodeAttentionMaxContext(int heads, int kv_heads) {
  (void)heads;
  (void)kv_heads;
  return 1 << 24;  // split over the context: shared memory no longer bounds it
}

void decodeAttention(DType dtype, const void* q, const void* k_cache, const void* v_cache, const int* slots,
                     const int* context, int num_tokens, const QkvLayout& layout, float scale, void* out, float* partial,
                     cudaStream_t stream) {
  // Grids of up to COMPUTRON_ATTN_ONE_ROUND_BLOCKS blocks (default 3 waves of 132 SMs) take the
  // one-round shape; COMPUTRON_ATTN_STREAM_UNROLL (4 or 8, default 4) sets the streaming shape's
  // loads per round. Both exist for measurement.
  static const int one_round_blocks = [] {
    const char* v = std::getenv("COMPUTRON_ATTN_ONE_ROUND_BLOCKS");
    return v ? std::max(0, std::atoi(v)) : 3 * 132;
  }();
  static const int stream_unroll = [] {
    const char* v = std::getenv("COMPUTRON_ATTN_STREAM_UNROLL");
    return v && std::atoi(v) == 8 ? 8 : 4;
  }();
  const int group = layout.heads / layout.kv_heads;
  if (group != 1 && group != 2 && group != 4 && group != 8)
    throw DeviceError("decodeAttention: query heads per kv head must be 1, 2, 4 or 8, got " + std::to_string(group));
  const int splits = decodeAttentionSplits(layout.kv_heads, num_tokens, layout.max_seq);
  const int chunk = (layout.max_seq + splits - 1) / splits;
  if (splits > 1 && !partial) throw DeviceError("decodeAttention: no partial buffer for a split context");
  const dim3 grid(layout.kv_heads, num_tokens, splits);
  const bool one_round = static_cast<std::int64_t>(layout.kv_heads) * num_tokens * splits <= one_round_blocks;
  const int warps = one_round ? kAttnOneRoundWarps : kAttnStreamWarps;
  const std::size_t shared = sizeof(float) * (static_cast<std::size_t>(group) * chunk +
                                              static_cast<std::size_t>(warps) * group * layout.head_dim);
  dispatch(dtype, [&]<typename T>() {
    auto launch = [&]<int HD>() {
      auto shape = [&]<int G, int W, int U>() {
        // Above 48 KiB per block (the kernel's static `stats` included) the dynamic part needs the
        // opt-in attribute.
        if (shared + sizeof(float) * 2 * G > 48 * 1024)
          CUDA_CHECK(cudaFuncSetAttribute(decodeAttentionSplitKernel<T, HD, G, W, U>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared)));
        launchPdl(decodeAttentionSplitKernel<T, HD, G, W, U>, grid, dim3(W * 32), shared, stream,
            static_cast<const T*>(q), static_cast<const T*>(k_cache), static_cast<const T*>(v_cache), slots, context, layout,
            scale, chunk, splits, static_cast<T*>(out), partial);
      };
      auto kernel = [&]<int G>() {
        if (one_round) shape.template operator()<G, kAttnOneRoundWarps, kAttnOneRoundUnroll>();
        else if (stream_unroll == 8) shape.template operator()<G, kAttnStreamWarps, 8>();
        else shape.template operator()<G, kAttnStreamWarps, 4>();
      };
      if (group == 1) kernel.template operator()<1>();
      else if (group == 2) kernel.template operator()<2>();
      else if (group == 4) kernel.template operator()<4>();
      else kernel.template operator()<8>();
      CUDA_CHECK_LAUNCH("decodeAttention");
      if (splits > 1) {
        launchPdl(decodeCombineKernel<T, HD>, dim3(layout.heads, num_tokens), dim3(HD), 0, stream, partial, context, chunk,
                  layout.heads, splits, static_cast<T*>(out));
        CUDA_CHECK_LAUNCH("decodeCombine");
      }
    };
    if (layout.head_dim == 64) launch.template operator()<64>();
    else if (layout.head_dim == 128) launch.template operator()<128>();
    else throw DeviceError("decodeAttention: head_dim must be 64 or 128, got " + std::to_string(layout.head_dim));
  });
}

void skinnyGemm(DType dtype, const void* x, const void* w, void* y, bool y_f32, int rows, int out_features, int in_features,
                cudaStream_t stream, const void* relu_bias) {
  if (relu_bias && y_f32) throw DeviceError("skinnyGemm: the bias + ReLU epilogue needs a model-dtype output");
  if (rows < 1 || rows > kSkinnyMaxRows) throw DeviceError("skinnyGemm: rows must be 1.." + std::to_string(kSkinnyMaxRows));
  if (in_features % 8 != 0) throw DeviceError("skinnyGemm: the inner dimension must be a multiple of 8");
  const unsigned blocks = static_cast<unsigned>((out_features + 15) / 16);
  dispatch(dtype, [&]<typename T>() {
    SkinnyEpilogue<T> epi;
    epi.bias = static_cast<const T*>(relu_bias);
    auto launch = [&]<int NT>() {
      if (y_f32)
        launchPdl(skinnyGemmKernel<T, NT, float, kSkinnyPlain>, dim3(blocks), dim3(kSkinnyWarps * 32), 0, stream,
            static_cast<const T*>(x), static_cast<const T*>(w), static_cast<float*>(y), rows, out_features, in_features, epi);
      else
        launchPdl(skinnyGemmKernel<T, NT, T, kSkinnyPlain>, dim3(blocks), dim3(kSkinnyWarps * 32), 0, stream,
            static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(y), rows, out_features, in_features, epi);
    };
    if (rows <= 8) launch.template operator()<1>();
    else if (rows <= 16) launch.template operator()<2>();
    else launch.template operator()<4>();
  });
  CUDA_CHECK_LAUNCH("skinnyGemm");
}

void skinnyGemmSwiGlu(DType dtype, const void* x, const void* w_gate_up, void* out, int rows, int width, int in_features,
                      cudaStream_t stream) {
  if (rows < 1 || rows > kSkinnyMaxRows || in_features % 8 != 0 || width % 8 != 0)
    throw DeviceError("skinnyGemmSwiGlu: rows 1.." + std::to_string(kSkinnyMaxRows) + ", inner and width multiples of 8");
  const unsigned blocks = static_cast<unsigned>(width / 8);
  dispatch(dtype, [&]<typename T>() {
    SkinnyEpilogue<T> epi;
    epi.width = width;
    auto launch = [&]<int NT>() {
      launchPdl(skinnyGemmKernel<T, NT, T, kSkinnySwiGlu>, dim3(blocks), dim3(kSkinnyWarps * 32), 0, stream,
          static_cast<const T*>(x), static_cast<const T*>(w_gate_up), static_cast<T*>(out), rows, 2 * width, in_features, epi);
    };
    if (rows <= 8) launch.template operator()<1>();
    else if (rows <= 16) launch.template operator()<2>();
    else launch.template operator()<4>();
  });
  CUDA_CHECK_LAUNCH("skinnyGemmSwiGlu");
}

void skinnyGemmQkv(DType dtype, const void* x, const void* w_qkv, const void* bias, const int* slots, const int* positions,
                   int rows, int in_features, const QkvLayout& layout, void* q, void* k_cache, void* v_cache,
                   cudaStream_t stream) {
  if (rows < 1 || rows > kSkinnyMaxRows || in_features % 8 != 0 || layout.head_dim % 16 != 0)
    throw DeviceError("skinnyGemmQkv: rows 1.." + std::to_string(kSkinnyMaxRows) + ", inner a multiple of 8, head_dim of 16");
  const int total_heads = layout.heads + 2 * layout.kv_heads;
  const unsigned blocks = static_cast<unsigned>(total_heads * (layout.head_dim / 16));
  dispatch(dtype, [&]<typename T>() {
    SkinnyEpilogue<T> epi;
    epi.bias = static_cast<const T*>(bias);
    epi.slots = slots;
    epi.positions = positions;
    epi.layout = layout;
    epi.q = static_cast<T*>(q);
    epi.k_cache = static_cast<T*>(k_cache);
    epi.v_cache = static_cast<T*>(v_cache);
    auto launch = [&]<int NT>() {
      launchPdl(skinnyGemmKernel<T, NT, T, kSkinnyQkv>, dim3(blocks), dim3(kSkinnyWarps * 32), 0, stream,
          static_cast<const T*>(x), static_cast<const T*>(w_qkv), static_cast<T*>(nullptr), rows, total_heads * layout.head_dim,
          in_features, epi);
    };
    if (rows <= 8) launch.template operator()<1>();
    else if (rows <= 16) launch.template operator()<2>();
    else launch.template operator()<4>();
  });
  CUDA_CHECK_LAUNCH("skinnyGemmQkv");
}

void addResidualNorm(DType dtype, bool layer_norm, float* residual, const float* projection, const void* projection_bias,
                     int num_tokens, int hidden, const void* weight, const void* bias, float eps, void* out,
                     cudaStream_t stream) {
  // Prefill rows (more than a decode pass holds): the register-resident kernel, 8 float4 a thread.
  constexpr int kVec = 8;
  if (num_tokens > kSkinnyMaxRows && hidden % (4 * kVec * 32) == 0 && hidden / (4 * kVec) <= 1024 && vecElementwiseEnabled()) {
    const int vec_threads = hidden / (4 * kVec);
    dispatch(dtype, [&]<typename T>() {
      if (layer_norm)
        launchPdl(addResidualNormVecKernel<T, true, kVec>, dim3(num_tokens), dim3(vec_threads), 0, stream, residual, projection,
                  static_cast<const T*>(projection_bias), hidden, static_cast<const T*>(weight), static_cast<const T*>(bias), eps,
                  static_cast<T*>(out));
      else
        launchPdl(addResidualNormVecKernel<T, false, kVec>, dim3(num_tokens), dim3(vec_threads), 0, stream, residual, projection,
                  static_cast<const T*>(projection_bias), hidden, static_cast<const T*>(weight), nullptr, eps, static_cast<T*>(out));
    });
    CUDA_CHECK_LAUNCH("addResidualNorm");
    return;
  }
  // A thread per 4 features (decode rows are few: latency, not bandwidth, sets the time).
  const int threads = std::clamp((hidden / 4 + 31) / 32 * 32, 32, 1024);
  dispatch(dtype, [&]<typename T>() {
    if (layer_norm)
      launchPdl(addResidualNormKernel<T, true>, dim3(num_tokens), dim3(threads), 0, stream, residual, projection, static_cast<const T*>(projection_bias),
                                                                     hidden, static_cast<const T*>(weight),
                                                                     static_cast<const T*>(bias), eps, static_cast<T*>(out));
    else
      launchPdl(addResidualNormKernel<T, false>, dim3(num_tokens), dim3(threads), 0, stream, residual, projection, static_cast<const T*>(projection_bias),
                                                                      hidden, static_cast<const T*>(weight), nullptr, eps,
                                                                      static_cast<T*>(out));
  });
  CUDA_CHECK_LAUNCH("addResidualNorm");
}

void interleaveVocab(const float* gathered, float* logits, int tp, int batch, int local_vocab, cudaStream_t stream) {
  const std::int64_t total = static_cast<std::int64_t>(tp) * batch * local_vocab;
  interleaveVocabKernel<<<gridFor(total, 256), 256, 0, stream>>>(gathered, logits, tp, batch, local_vocab);
  CUDA_CHECK_LAUNCH("interleaveVocab");
}

void sampleTokens(const float* logits, int batch, int vocab, float temperature, int top_k, float top_p,
                  std::uint64_t seed, int step, int* tokens, cudaStream_t stream) {
  sampleKernel<<<batch, kSampleThreads, 0, stream>>>(logits, vocab, temperature, top_k, top_p, seed, step, tokens);
  CUDA_CHECK_LAUNCH("sampleTokens");
}

void fillUniform(DType dtype, void* data, std::int64_t elements, std::uint64_t seed, float amplitude, float constant,
                 cudaStream_t stream) {
  dispatch(dtype, [&]<typename T>() {
    fillUniformKernel<T><<<gridFor(elements, 256), 256, 0, stream>>>(static_cast<T*>(data), elements, seed, amplitude, constant);
  });
  CUDA_CHECK_LAUNCH("fillUniform");
}

// Launched without the programmatic attribute and never calling pdlTrigger: the pass's kernels
// start only after it has finished, which decode attention relies on when it reads the slots and
// contexts before its wait.
__global__ void copyWordsKernel(unsigned int* dst, const unsigned int* src, std::int64_t words) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

// A word copy by kernel: device to device, or either side pinned, mapped host memory.
static void launchCopyWords(void* dst, const void* src, std::int64_t bytes, cudaStream_t stream, const char* what) {
  if (bytes <= 0) return;
  const std::int64_t words = (bytes + 3) / 4;
  const int blocks = static_cast<int>(std::min<std::int64_t>((words + 255) / 256, 1024));
  copyWordsKernel<<<blocks, 256, 0, stream>>>(static_cast<unsigned int*>(dst), static_cast<const unsigned int*>(src), words);
  CUDA_CHECK_LAUNCH(what);
}

void uploadMapped(void* dst, const void* mapped_host, std::int64_t bytes, cudaStream_t stream) {
  launchCopyWords(dst, mapped_host, bytes, stream, "uploadMapped");
}

void downloadMapped(void* mapped_host, const void* src, std::int64_t bytes, cudaStream_t stream) {
  launchCopyWords(mapped_host, src, bytes, stream, "downloadMapped");
}

}  // namespace computron::model::kernels
