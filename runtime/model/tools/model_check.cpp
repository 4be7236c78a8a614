// computron_model_check: runs the CUDA decoders outside the serving runtime, for the device
// check script (scripts/model-check.sh).
//
//   generate --model DIR --requests FILE --out FILE [--logits FILE] [--tp N --pp N]
//            [--temperature T --top-k K --top-p P --seed S --eos ID] [--budget-gib G] [--prefill-pass N]
//       Loads a Hugging Face safetensors folder split for tp x pp, generates for the requests
//       ({"prompts": [[ids...], ...], "max_new_tokens": N}) and writes the tokens as JSON; with
//       --logits, the fp32 logits of every pass ([rows, vocab] per pass, back to back).
//   bench --preset NAME --batch B [--prompt 512 --new 128] [--tp N --pp N]
//       Random weights of a preset's shapes on GPUs 0..tp*pp-1: prefill and decode speed against
//       the bandwidth bound (one GPU's weights + KV cache bytes over the measured device-to-device
//       copy rate), and against cuBLAS's GEMM rate at the prefill's MLP shape on GPU 0, timed
//       alone and sustained (the power limit's ceiling).
//   collectives [--tp 2]
//       The TP group's peer all-reduce and all-gather checked against a host sum (odd sizes,
//       repeated calls), then timed against NCCL's all-reduce (lines CCHECK, COLL).
//   d2d
//       Device-to-device copy bandwidth (bytes read + bytes written per second).
//   overlap [--preset llama-3-8b --gib 8 --chunk-mib 64 --repeats 3]
//       A load's host-to-device copy rate while GPU 0 is idle, runs products, device copies, the
//       preset's prefill or its decode, from three kinds of pinned host memory; and how much each
//       background slows while the copy runs. Lines OVERLAP.
//   kernels
//       The decode kernels alone on GPU 0: kernels::skinnyGemm against cuBLAS (accuracy on odd
//       shapes in F16 and BF16, then time and bandwidth on the OPT-6.7B / Llama-3-8B products at
//       1-32 rows) and decode attention's cache bandwidth, and prefill attention's
//       FLOP rate. Lines KCHECK, KGEMM, KATTN, KPATTN.
// Exit codes: 0 ok, 2 bad input, 3 capacity refused, 4 device error.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <functional>

#include <nlohmann/json.hpp>

#include "common/json_reader.h"
#include "common/model_spec.h"
#include "runtime/model/cuda/cuda_check.h"
#include "runtime/model/cuda/generation.h"
#include "runtime/model/cuda/kernels.h"

using namespace computron;
using namespace computron::model;

namespace {

std::map<std::string, std::string> parseFlags(int argc, char** argv, int first) {
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; ++i) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) throw ConfigError("expected --flag value, got '" + key + "'");
    flags[key.substr(2)] = argv[++i];
  }
  return flags;
}

std::string flag(const std::map<std::string, std::string>& f, const std::string& k, const std::string& fallback) {
  auto it = f.find(k);
  return it == f.end() ? fallback : it->second;
}

std::vector<int> devicesFor(int n) {
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count < n) throw CapacityError("needs " + std::to_string(n) + " GPUs, this machine has " + std::to_string(count));
  std::vector<int> d(static_cast<std::size_t>(n));
  std::iota(d.begin(), d.end(), 0);
  return d;
}

int runGenerate(const std::map<std::string, std::string>& f) {
  const std::string model = flag(f, "model", "");
  const int tp = std::stoi(flag(f, "tp", "1")), pp = std::stoi(flag(f, "pp", "1"));
  ModelSpec spec = modelFromHfConfig(model + "/config.json");
  const ArchExtras extras = archExtrasFromConfig(model, spec);

  const nlohmann::json requests_json = readJsonFile(flag(f, "requests", ""));
  std::vector<GenerationRequest> requests;
  int longest = 0, total_prompt = 0;
  const int max_new = requests_json.at("max_new_tokens").get<int>();
  for (const auto& p : requests_json.at("prompts")) {
    GenerationRequest r;
    r.prompt = p.get<std::vector<int>>();
    r.max_new_tokens = max_new;
    longest = std::max<int>(longest, static_cast<int>(r.prompt.size()));
    total_prompt += static_cast<int>(r.prompt.size());
    requests.push_back(std::move(r));
  }
  ExecutorLimits limits;
  limits.max_batch = static_cast<int>(requests.size());
  limits.max_context = std::stoi(flag(f, "max-context", std::to_string(longest + max_new)));
  limits.max_prefill_tokens = std::max(total_prompt, limits.max_batch);
  // --prefill-pass N: at most N tokens a prefill pass, so a batch's prefill runs as several passes.
  if (const int pass = std::stoi(flag(f, "prefill-pass", "0")); pass > 0) limits.max_prefill_tokens = pass;
  limits.kv_and_activation_budget = static_cast<std::int64_t>(std::stod(flag(f, "budget-gib", "0")) * (1LL << 30));
  SamplingOptions sampling;
  sampling.temperature = std::stof(flag(f, "temperature", "0"));
  sampling.top_k = std::stoi(flag(f, "top-k", "0"));
  sampling.top_p = std::stof(flag(f, "top-p", "1"));
  sampling.seed = std::stoull(flag(f, "seed", "0"));
  sampling.eos_token = std::stoi(flag(f, "eos", "-1"));

  ModelGroup group(spec, extras, tp, pp, devicesFor(tp * pp), limits, WeightSource{model, 0});
  std::ofstream logits_out;
  const std::string logits_path = flag(f, "logits", "");
  if (!logits_path.empty()) logits_out.open(logits_path, std::ios::binary);
  LogitsObserver observer = nullptr;
  if (logits_out) {
    observer = [&](int, const std::vector<int>&, const std::vector<float>& logits) {
      logits_out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
    };
  }
  const GenerationResult result = group.generate(requests, sampling, observer);
  nlohmann::json out;
  out["tokens"] = result.tokens;
  out["prefill_seconds"] = result.prefill_seconds;
  out["tp"] = tp;
  out["pp"] = pp;
  std::ofstream(flag(f, "out", "tokens.json")) << out.dump() << "\n";
  std::cout << "generated " << requests.size() << " sequences with tp " << tp << " pp " << pp << "\n";
  return 0;
}

double measureD2dBandwidth() {
  const std::size_t bytes = 4ull << 30;
  void *a = nullptr, *b = nullptr;
  CUDA_CHECK(cudaSetDevice(0));
  CUDA_CHECK(cudaMalloc(&a, bytes));
  CUDA_CHECK(cudaMalloc(&b, bytes));
  CUDA_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));  // warm-up
  std::vector<float> ms;
  for (int i = 0; i < 10; ++i) {
    CUDA_CHECK(cudaEventRecord(start));
    CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CUDA_CHECK(cudaFree(a));
  CUDA_CHECK(cudaFree(b));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3);  // read + write
}

// A ceiling for the prefill's products, measured in the same run: cuBLAS's fp16/bf16 GemmEx
// (fp32 accumulate, default algorithm heuristic) at one large product of a prefill, rows x (ffn /
// tp) x hidden (one MLP input matrix; Llama's executors fuse gate and up into one product twice as
// wide, and OPT's fc1 runs through cuBLASLt with its epilogue), timed alone after 200 ms idle
// (`first`, the boost clock) and back to back for 2 s (`sustained`: the median of the last
// second, under the card's power limit). FLOP/s. A tool that exits on error: its buffers are not
// released on that path.
struct GemmCeiling {
  double first = 0;
  double sustained = 0;
};

GemmCeiling measureGemmCeiling(DType dt, int rows, int out, int in) {
  CUDA_CHECK(cudaSetDevice(0));
  const std::size_t elem = 2;
  void *x = nullptr, *w = nullptr, *y = nullptr;
  CUDA_CHECK(cudaMalloc(&x, static_cast<std::size_t>(rows) * in * elem));
  CUDA_CHECK(cudaMalloc(&w, static_cast<std::size_t>(out) * in * elem));
  CUDA_CHECK(cudaMalloc(&y, static_cast<std::size_t>(rows) * out * elem));
  CUDA_CHECK(cudaMemset(x, 0x3c, static_cast<std::size_t>(rows) * in * elem));  // small, finite values
  CUDA_CHECK(cudaMemset(w, 0x1c, static_cast<std::size_t>(out) * in * elem));
  cublasHandle_t handle;
  CUBLAS_CHECK(cublasCreate(&handle));
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType t = dt == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  auto timed = [&] {
    CUDA_CHECK(cudaEventRecord(start));
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, t, in, x, t, in, &beta, y, t, out,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return static_cast<double>(ms);
  };
  const double flop = 2.0 * rows * static_cast<double>(out) * in;
  for (int i = 0; i < 3; ++i) timed();  // kernel selection and loading
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  GemmCeiling c;
  c.first = flop / (timed() * 1e-3);
  std::vector<double> late;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2)) {
    const double ms = timed();
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(1)) late.push_back(ms);
  }
  std::sort(late.begin(), late.end());
  c.sustained = late.empty() ? 0 : flop / (late[late.size() / 2] * 1e-3);
  CUBLAS_CHECK(cublasDestroy(handle));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  CUDA_CHECK(cudaFree(x));
  CUDA_CHECK(cudaFree(w));
  CUDA_CHECK(cudaFree(y));
  return c;
}

constexpr int kBenchWarmUpTokens = 4;

int runBench(const std::map<std::string, std::string>& f) {
  const std::string preset = flag(f, "preset", "opt-6.7b");
  ModelSpec spec = modelPreset(preset);
  spec.dtype = flag(f, "dtype", "f16") == "bf16" ? DType::kBF16 : DType::kF16;
  const ArchExtras extras = presetArchExtras(preset);
  const int prompt = std::stoi(flag(f, "prompt", "512")), new_tokens = std::stoi(flag(f, "new", "128"));
  std::vector<int> batches;
  for (const std::string& b : {flag(f, "batch", "1,8,32")}) {
    std::size_t start = 0;
    while (start < b.size()) {
      std::size_t comma = b.find(',', start);
      if (comma == std::string::npos) comma = b.size();
      batches.push_back(std::stoi(b.substr(start, comma - start)));
      start = comma + 1;
    }
  }
  const int tp = std::stoi(flag(f, "tp", "1")), pp = std::stoi(flag(f, "pp", "1"));
  if (tp < 1 || pp < 1) throw ConfigError("--tp and --pp must be at least 1");
  const double bandwidth = measureD2dBandwidth();
  // One MLP input matrix's product (this rank's share of ffn) at the largest batch's prefill rows.
  const GemmCeiling ceiling = flag(f, "gemm-ceiling", "1") == "0"
                                  ? GemmCeiling{}
                                  : measureGemmCeiling(spec.dtype, std::max(1, prompt * [&] {
                                      int m = 1;
                                      for (int b : batches) m = std::max(m, b);
                                      return m;
                                    }()), std::max(1, spec.ffn_hidden / tp), spec.hidden);
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  ExecutorLimits limits;
  limits.max_batch = max_batch;
  limits.max_context = prompt + std::max(new_tokens, kBenchWarmUpTokens);  // the warm-up makes 4 tokens
  limits.max_prefill_tokens = max_batch * prompt;
  ModelGroup group(spec, extras, tp, pp, devicesFor(tp * pp), limits, WeightSource{"", 1234});
  // The bound is set by the GPU that holds the most bytes.
  std::int64_t weight_bytes = 0;
  for (int i = 0; i < tp * pp; ++i) weight_bytes = std::max(weight_bytes, group.weightBytesPerGpu(i));
  std::mt19937 rng(5);
  auto makeRequests = [&](int batch, int new_count) {
    std::vector<GenerationRequest> requests(static_cast<std::size_t>(batch));
    for (auto& r : requests) {
      r.max_new_tokens = new_count;
      for (int i = 0; i < prompt; ++i) r.prompt.push_back(static_cast<int>(rng() % static_cast<unsigned>(spec.vocab)));
    }
    return requests;
  };
  group.generate(makeRequests(max_batch, kBenchWarmUpTokens), SamplingOptions{});  // warm-up: cuBLAS heuristics, module load
  for (int batch : batches) {
    const GenerationResult r = group.generate(makeRequests(batch, new_tokens), SamplingOptions{});
    std::vector<double> steps = r.decode_step_seconds;
    std::sort(steps.begin(), steps.end());
    const double median = steps[steps.size() / 2];
    const int mid_context = prompt + new_tokens / 2;
    // Per GPU: its stage's layers and 1/tp of the kv heads.
    const double kv_bytes = static_cast<double>(spec.num_layers) * batch * mid_context * spec.num_kv_heads * spec.headDim() * 2 *
                            elementBytes(spec.dtype) / (tp * pp);
    const double bound = (static_cast<double>(weight_bytes) + kv_bytes) / bandwidth;
    nlohmann::json out;
    out["preset"] = preset;
    out["tp"] = tp;
    out["pp"] = pp;
    out["batch"] = batch;
    out["prompt"] = prompt;
    out["new_tokens"] = new_tokens;
    out["prefill_seconds"] = r.prefill_seconds;
    out["prefill_tokens_per_s"] = batch * prompt / r.prefill_seconds;
    // Repeated prefill: median of 5 prefill-only passes (a first token each).
    std::vector<double> prefills;
    for (int rep = 0; rep < 5; ++rep) prefills.push_back(group.generate(makeRequests(batch, 1), SamplingOptions{}).prefill_seconds);
    std::sort(prefills.begin(), prefills.end());
    out["prefill_median5_tokens_per_s"] = batch * prompt / prefills[prefills.size() / 2];
    out["decode_step_ms_median"] = median * 1e3;
    out["decode_tokens_per_s"] = batch / median;
    out["decode_bound_ms"] = bound * 1e3;
    out["decode_vs_bound"] = median / bound;
    out["weight_bytes"] = weight_bytes;
    out["kv_bytes_mid"] = kv_bytes;
    out["d2d_bytes_per_s"] = bandwidth;
    // The ceiling measured above (0 with --gemm-ceiling 0): compare prefill FLOP/s against it.
    out["gemm_ceiling_first_tflops"] = ceiling.first / 1e12;
    out["gemm_ceiling_sustained_tflops"] = ceiling.sustained / 1e12;
    const char* graph_env = std::getenv("COMPUTRON_DECODE_GRAPH");
    const char* skinny_env = std::getenv("COMPUTRON_SKINNY_ROWS");
    out["decode_graph"] = graph_env && *graph_env ? std::string(graph_env) : std::string("default");
    out["skinny_rows"] = skinny_env && *skinny_env ? std::string(skinny_env) : std::string("default");
    const char* peer_env = std::getenv("COMPUTRON_PEER_COLLECTIVES");
    out["peer_collectives"] = tp == 1 ? std::string("n/a") : peer_env && *peer_env ? std::string(peer_env) : std::string("default");
    const char* fuse_env = std::getenv("COMPUTRON_DECODE_FUSE");
    out["decode_fuse"] = fuse_env && *fuse_env ? std::string(fuse_env) : std::string("default");
    std::cout << "BENCH " << out.dump() << std::endl;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// overlap: how fast a weight load (host-to-device copies of 64 MiB chunks on a stream of their
// own, as the runtime's loads) runs while the same GPU computes, and how much the compute slows
// in turn. Host memory is taken three ways: cudaHostAlloc, anonymous mmap pinned with
// cudaHostRegister in 1 GiB pieces (the host weight store's way, 4 KiB pages), and the same with
// transparent huge pages asked for (madvise) before the pages are touched. Lines OVERLAP.

struct Background {
  std::string name;
  // One unit of work (a product, a copy, a prefill, a batch of decode steps), run back to back
  // on a thread of its own until stopped; each unit's [start, end) is kept.
  std::function<void()> unit;
};

struct Span {
  double start = 0, end = 0;
};

double nowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median duration of the units that lie wholly inside [from, to).
double medianUnitInside(const std::vector<Span>& units, double from, double to) {
  std::vector<double> d;
  for (const Span& u : units)
    if (u.start >= from && u.end <= to) d.push_back(u.end - u.start);
  if (d.empty()) return 0;
  std::sort(d.begin(), d.end());
  return d[d.size() / 2];
}

int runOverlap(const std::map<std::string, std::string>& f) {
  const std::string preset = flag(f, "preset", "llama-3-8b");
  const std::int64_t copy_bytes = static_cast<std::int64_t>(std::stod(flag(f, "gib", "8")) * (1LL << 30));
  const std::int64_t chunk = std::stoll(flag(f, "chunk-mib", "64")) << 20;
  const int repeats = std::max(1, std::stoi(flag(f, "repeats", "3")));
  const int prefill_batch = std::stoi(flag(f, "prefill-batch", "8")), prefill_prompt = std::stoi(flag(f, "prefill-prompt", "1024"));
  const int decode_batch = std::stoi(flag(f, "decode-batch", "32"));
  if (copy_bytes < chunk || chunk <= 0) throw ConfigError("--gib must hold at least one chunk of --chunk-mib");
  CUDA_CHECK(cudaSetDevice(0));
  {
    std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string mode;
    std::getline(thp, mode);
    std::printf("OVERLAP {\"transparent_hugepage\": \"%s\"}\n", mode.c_str());
  }

  // Host memory, three ways.
  struct Host {
    std::string kind;
    std::byte* data = nullptr;
    bool registered = false;
  };
  std::vector<Host> hosts;
  {
    void* p = nullptr;
    CUDA_CHECK(cudaHostAlloc(&p, static_cast<std::size_t>(copy_bytes), cudaHostAllocPortable));
    std::memset(p, 1, static_cast<std::size_t>(copy_bytes));
    hosts.push_back({"cudaHostAlloc", static_cast<std::byte*>(p), false});
  }
  for (const bool huge : {false, true}) {
    void* p = ::mmap(nullptr, static_cast<std::size_t>(copy_bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw CapacityError("mmap of the host buffer failed");
    if (huge) ::madvise(p, static_cast<std::size_t>(copy_bytes), MADV_HUGEPAGE);
    std::memset(p, 1, static_cast<std::size_t>(copy_bytes));
    for (std::int64_t off = 0; off < copy_bytes; off += 1LL << 30)
      CUDA_CHECK(cudaHostRegister(static_cast<std::byte*>(p) + off, static_cast<std::size_t>(std::min<std::int64_t>(1LL << 30, copy_bytes - off)),
                                  cudaHostRegisterPortable));
    hosts.push_back({huge ? "mmap+register, huge pages" : "mmap+register, 4 KiB pages", static_cast<std::byte*>(p), true});
  }
  std::byte* device_buffer = nullptr;
  CUDA_CHECK(cudaMalloc(&device_buffer, static_cast<std::size_t>(copy_bytes)));
  cudaStream_t copy_stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
  cudaEvent_t c0, c1;
  CUDA_CHECK(cudaEventCreate(&c0));
  CUDA_CHECK(cudaEventCreate(&c1));
  auto copyOnce = [&](const Host& h) {
    CUDA_CHECK(cudaEventRecord(c0, copy_stream));
    for (std::int64_t off = 0; off < copy_bytes; off += chunk)
      CUDA_CHECK(cudaMemcpyAsync(device_buffer + off, h.data + off, static_cast<std::size_t>(std::min(chunk, copy_bytes - off)),
                                 cudaMemcpyHostToDevice, copy_stream));
    CUDA_CHECK(cudaEventRecord(c1, copy_stream));
    CUDA_CHECK(cudaEventSynchronize(c1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, c0, c1));
    return static_cast<double>(copy_bytes) / (ms * 1e-3);
  };
  for (const Host& h : hosts) copyOnce(h);  // warm-up

  // The backgrounds: a product, a device copy, the model's prefill and its decode.
  const ModelSpec spec = modelPreset(preset);
  const ArchExtras extras = presetArchExtras(preset);
  ExecutorLimits limits;
  limits.max_batch = std::max(prefill_batch, decode_batch);
  limits.max_context = std::max(prefill_prompt, 256) + 64;
  limits.max_prefill_tokens = std::max(prefill_batch * prefill_prompt, decode_batch * 256);
  ModelGroup group(spec, extras, 1, 1, devicesFor(1), limits, WeightSource{"", 99});
  std::mt19937 rng(11);
  auto requests = [&](int batch, int prompt, int new_tokens) {
    std::vector<GenerationRequest> r(static_cast<std::size_t>(batch));
    for (auto& q : r) {
      q.max_new_tokens = new_tokens;
      for (int i = 0; i < prompt; ++i) q.prompt.push_back(static_cast<int>(rng() % static_cast<unsigned>(spec.vocab)));
    }
    return r;
  };
  const auto prefill_requests = requests(prefill_batch, prefill_prompt, 1);
  const auto decode_requests = requests(decode_batch, 256, 48);
  const int rows = 8192, in = spec.hidden, out = spec.ffn_hidden;
  void *gx = nullptr, *gw = nullptr, *gy = nullptr;
  CUDA_CHECK(cudaMalloc(&gx, static_cast<std::size_t>(rows) * in * 2));
  CUDA_CHECK(cudaMalloc(&gw, static_cast<std::size_t>(out) * in * 2));
  CUDA_CHECK(cudaMalloc(&gy, static_cast<std::size_t>(rows) * out * 2));
  CUDA_CHECK(cudaMemset(gx, 0x3c, static_cast<std::size_t>(rows) * in * 2));
  CUDA_CHECK(cudaMemset(gw, 0x1c, static_cast<std::size_t>(out) * in * 2));
  const std::size_t d2d_bytes = 2ull << 30;
  void *da = nullptr, *db = nullptr;
  CUDA_CHECK(cudaMalloc(&da, d2d_bytes));
  CUDA_CHECK(cudaMalloc(&db, d2d_bytes));
  cudaStream_t work_stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&work_stream, cudaStreamNonBlocking));
  cublasHandle_t handle;
  CUBLAS_CHECK(cublasCreate(&handle));
  CUBLAS_CHECK(cublasSetStream(handle, work_stream));
  std::vector<Background> backgrounds = {
      {"idle", nullptr},
      {"gemm", [&] {
         const float alpha = 1.f, beta = 0.f;
         for (int i = 0; i < 4; ++i)
           CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, gw, CUDA_R_16F, in, gx, CUDA_R_16F, in,
                                     &beta, gy, CUDA_R_16F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
         CUDA_CHECK(cudaStreamSynchronize(work_stream));
       }},
      {"d2d", [&] {
         CUDA_CHECK(cudaMemcpyAsync(db, da, d2d_bytes, cudaMemcpyDeviceToDevice, work_stream));
         CUDA_CHECK(cudaStreamSynchronize(work_stream));
       }},
      {"prefill", [&] { group.generate(prefill_requests, SamplingOptions{}); }},
      {"decode", [&] { group.generate(decode_requests, SamplingOptions{}); }},
  };
  for (const Background& b : backgrounds)
    if (b.unit) b.unit();  // warm-up: kernel choice, graphs
  for (const Background& b : backgrounds) {
    std::atomic<bool> stop{false};
    std::vector<Span> units;
    std::thread worker;
    if (b.unit) {
      worker = std::thread([&] {
        CUDA_CHECK(cudaSetDevice(0));
        while (!stop.load()) {
          Span s;
          s.start = nowSeconds();
          b.unit();
          s.end = nowSeconds();
          units.push_back(s);
        }
      });
    }
    // The background alone for 1.5 s (its last second measured), then the copies.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    const double alone_to = nowSeconds();
    std::vector<std::pair<double, double>> copy_windows;
    nlohmann::json line;
    line["background"] = b.name;
    for (const Host& h : hosts) {
      std::vector<double> rates;
      for (int r = 0; r < repeats; ++r) {
        const double t0 = nowSeconds();
        rates.push_back(copyOnce(h));
        copy_windows.push_back({t0, nowSeconds()});
      }
      std::sort(rates.begin(), rates.end());
      line["copy_GB_per_s"][h.kind] = rates[rates.size() / 2] / 1e9;
    }
    stop = true;
    if (worker.joinable()) worker.join();
    if (b.unit) {
      line["unit_ms_alone"] = medianUnitInside(units, alone_to - 1.0, alone_to) * 1e3;
      // Units wholly inside one copy.
      std::vector<Span> inside;
      for (const Span& u : units)
        for (const auto& [from, to] : copy_windows)
          if (u.start >= from && u.end <= to) inside.push_back(u);
      line["unit_ms_during_copies"] = medianUnitInside(inside, 0, 1e300) * 1e3;
      line["units_inside_copies"] = inside.size();
    }
    std::printf("OVERLAP %s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  CUBLAS_CHECK(cublasDestroy(handle));
  for (Host& h : hosts) {
    if (h.registered) {
      for (std::int64_t off = 0; off < copy_bytes; off += 1LL << 30) CUDA_CHECK(cudaHostUnregister(h.data + off));
      ::munmap(h.data, static_cast<std::size_t>(copy_bytes));
    } else {
      CUDA_CHECK(cudaFreeHost(h.data));
    }
  }
  for (void* p : {static_cast<void*>(device_buffer), gx, gw, gy, da, db}) CUDA_CHECK(cudaFree(p));
  return 0;
}

// ---------------------------------------------------------------------------------------------
// collectives: the TP group's peer all-reduce and all-gather against a host reference, then
// their time against NCCL's for the same sizes.

int runCollectives(const std::map<std::string, std::string>& f) {
#if !COMPUTRON_HAVE_NCCL
  (void)f;
  throw CapacityError("this build has no NCCL");
#else
  const int tp = std::stoi(flag(f, "tp", "2"));
  const std::vector<int> devs = devicesFor(tp);
  const std::int64_t max_bytes = 16LL << 20;
  const std::shared_ptr<PeerGroup> group = PeerGroup::create(devs, max_bytes);
  if (!group) throw CapacityError("the GPUs cannot all reach each other by peer access");
  std::vector<ncclComm_t> comms(static_cast<std::size_t>(tp));
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  NCCL_CHECK(ncclCommInitAll(comms.data(), tp, devs.data()));
  std::vector<cudaStream_t> streams(static_cast<std::size_t>(tp));
  std::vector<float*> data(static_cast<std::size_t>(tp)), out(static_cast<std::size_t>(tp));
  for (int r = 0; r < tp; ++r) {
    CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
    CUDA_CHECK(cudaStreamCreateWithFlags(&streams[static_cast<std::size_t>(r)], cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&data[static_cast<std::size_t>(r)], static_cast<std::size_t>(max_bytes)));
    CUDA_CHECK(cudaMalloc(&out[static_cast<std::size_t>(r)], static_cast<std::size_t>(max_bytes) * static_cast<std::size_t>(tp)));
  }
  // Values whose sums round: the ranks must still agree bit for bit (each sums in rank order).
  auto value = [](int r, std::int64_t i) {
    return static_cast<float>(((i * 7919 + r * 104729) % 2001) - 1000) / 7.f + 1e-3f * static_cast<float>(r + 1);
  };
  bool all_ok = true;
  // Odd and even sizes (vector and scalar kernels), several calls in a row (both staging halves).
  for (std::int64_t count : std::vector<std::int64_t>{1, 3, 4, 1023, 1025, 5120, 20481, 163840, 1048579}) {
    for (int rep = 0; rep < 3; ++rep) {
      for (bool gather : {false, true}) {
        std::vector<std::vector<float>> host(static_cast<std::size_t>(tp), std::vector<float>(static_cast<std::size_t>(count)));
        for (int r = 0; r < tp; ++r) {
          for (std::int64_t i = 0; i < count; ++i) host[static_cast<std::size_t>(r)][static_cast<std::size_t>(i)] = value(r + rep, i);
          CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
          CUDA_CHECK(cudaMemcpy(data[static_cast<std::size_t>(r)], host[static_cast<std::size_t>(r)].data(), static_cast<std::size_t>(count) * 4,
                                cudaMemcpyHostToDevice));
          CUDA_CHECK(cudaDeviceSynchronize());  // a pageable copy may return before its last bytes land
        }
        for (int r = 0; r < tp; ++r) {
          CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
          if (gather) group->allGather(r, data[static_cast<std::size_t>(r)], out[static_cast<std::size_t>(r)], count, streams[static_cast<std::size_t>(r)]);
          else group->allReduceSum(r, data[static_cast<std::size_t>(r)], count, streams[static_cast<std::size_t>(r)]);
        }
        bool ok = true;
        for (int r = 0; r < tp; ++r) {
          CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
          CUDA_CHECK(cudaStreamSynchronize(streams[static_cast<std::size_t>(r)]));
          const std::int64_t n = gather ? count * tp : count;
          std::vector<float> got(static_cast<std::size_t>(n));
          CUDA_CHECK(cudaMemcpy(got.data(), gather ? out[static_cast<std::size_t>(r)] : data[static_cast<std::size_t>(r)],
                                static_cast<std::size_t>(n) * 4, cudaMemcpyDeviceToHost));
          for (std::int64_t i = 0; i < n && ok; ++i) {
            float want = 0.f;
            if (gather) {
              want = host[static_cast<std::size_t>(i / count)][static_cast<std::size_t>(i % count)];
            } else {
              for (int q = 0; q < tp; ++q) want += host[static_cast<std::size_t>(q)][static_cast<std::size_t>(i)];  // rank order
            }
            if (got[static_cast<std::size_t>(i)] != want) {
              ok = false;
              std::printf("CCHECK %s count %lld rank %d element %lld: got %g want %g FAIL\n", gather ? "all-gather" : "all-reduce",
                          static_cast<long long>(count), r, static_cast<long long>(i), got[static_cast<std::size_t>(i)], want);
            }
          }
        }
        if (rep == 0) std::printf("CCHECK %s count %lld %s\n", gather ? "all-gather" : "all-reduce", static_cast<long long>(count), ok ? "ok" : "FAIL");
        all_ok = all_ok && ok;
      }
    }
  }
  if (group->failed()) all_ok = false;
  std::printf("CCHECK peer collectives overall %s%s\n", all_ok ? "ok" : "FAIL", group->failed() ? " (a call gave up)" : "");
  // Time: back-to-back all-reduces on every rank, events on rank 0, median of 5 rounds.
  std::vector<cudaEvent_t> start(static_cast<std::size_t>(tp)), stop(static_cast<std::size_t>(tp));
  for (int r = 0; r < tp; ++r) {
    CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
    CUDA_CHECK(cudaEventCreate(&start[static_cast<std::size_t>(r)]));
    CUDA_CHECK(cudaEventCreate(&stop[static_cast<std::size_t>(r)]));
  }
  for (std::int64_t bytes : std::vector<std::int64_t>{4096, 10240, 20480, 81920, 163840, 327680, 655360, 1048576, 2097152, 4194304, 8388608}) {
    const std::int64_t count = bytes / 4;
    double us[2] = {0, 0};
    for (int which = 0; which < 2; ++which) {
      auto round = [&](int calls) {
        if (which == 0) {
          for (int c = 0; c < calls; ++c)
            for (int r = 0; r < tp; ++r) {
              CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
              group->allReduceSum(r, data[static_cast<std::size_t>(r)], count, streams[static_cast<std::size_t>(r)]);
            }
        } else {
          for (int c = 0; c < calls; ++c) {
            NCCL_CHECK(ncclGroupStart());
            for (int r = 0; r < tp; ++r)
              NCCL_CHECK(ncclAllReduce(data[static_cast<std::size_t>(r)], data[static_cast<std::size_t>(r)], static_cast<std::size_t>(count), ncclFloat,
                                       ncclSum, comms[static_cast<std::size_t>(r)], streams[static_cast<std::size_t>(r)]));
            NCCL_CHECK(ncclGroupEnd());
          }
        }
      };
      round(20);
      std::vector<double> samples;
      for (int rep = 0; rep < 5; ++rep) {
        const int calls = 100;
        CUDA_CHECK(cudaSetDevice(devs[0]));
        CUDA_CHECK(cudaEventRecord(start[0], streams[0]));
        round(calls);
        CUDA_CHECK(cudaSetDevice(devs[0]));
        CUDA_CHECK(cudaEventRecord(stop[0], streams[0]));
        CUDA_CHECK(cudaEventSynchronize(stop[0]));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start[0], stop[0]));
        samples.push_back(ms * 1e3 / calls);
      }
      for (int r = 0; r < tp; ++r) {
        CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
        CUDA_CHECK(cudaStreamSynchronize(streams[static_cast<std::size_t>(r)]));
      }
      std::sort(samples.begin(), samples.end());
      us[which] = samples[2];
      if (group->failed()) all_ok = false;
    }
    nlohmann::json line;
    line["tp"] = tp;
    line["bytes"] = bytes;
    line["peer_us"] = us[0];
    line["nccl_us"] = us[1];
    line["peer_vs_nccl"] = us[0] / us[1];
    std::cout << "COLL " << line.dump() << std::endl;
  }
  // A rank that never arrives: the others give up at the timeout (1 s here), or at once on
  // abort(), instead of hanging; the group then reports failed().
  for (bool use_abort : {false, true}) {
    const std::shared_ptr<PeerGroup> lone = PeerGroup::create(devs, 1 << 20, 1.0);
    CUDA_CHECK(cudaSetDevice(devs[0]));
    const auto t0 = std::chrono::steady_clock::now();
    lone->allReduceSum(0, data[0], 5120, streams[0]);  // rank 0 only, three calls of a pass:
    lone->allReduceSum(0, data[0], 5120, streams[0]);  // after the first gives up, the others
    lone->allReduceSum(0, data[0], 5120, streams[0]);  // return at once
    if (use_abort) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      lone->abort();
    }
    CUDA_CHECK(cudaStreamSynchronize(streams[0]));
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool ok = lone->failed() && !lone->usable() && (use_abort ? waited < 0.9 : waited > 0.9 && waited < 5.0);
    all_ok = all_ok && ok;
    std::printf("CCHECK a missing rank, three calls, %s: rank 0 gave up after %.3f s, failed() %d %s\n", use_abort ? "abort() after 0.1 s" : "timeout 1 s",
                waited, lone->failed() ? 1 : 0, ok ? "ok" : "FAIL");
  }
  std::printf("CCHECK failure paths overall %s\n", all_ok ? "ok" : "FAIL");
  for (int r = 0; r < tp; ++r) {
    CUDA_CHECK(cudaSetDevice(devs[static_cast<std::size_t>(r)]));
    CUDA_CHECK(cudaFree(data[static_cast<std::size_t>(r)]));
    CUDA_CHECK(cudaFree(out[static_cast<std::size_t>(r)]));
    cudaEventDestroy(start[static_cast<std::size_t>(r)]);
    cudaEventDestroy(stop[static_cast<std::size_t>(r)]);
    cudaStreamDestroy(streams[static_cast<std::size_t>(r)]);
    ncclCommDestroy(comms[static_cast<std::size_t>(r)]);
  }
  return all_ok ? 0 : 4;
#endif
}

// ---------------------------------------------------------------------------------------------
// kernels: skinny products against cuBLAS, decode attention bandwidth.

float hostFloat(DType d, std::uint16_t bits) {
  if (d == DType::kF16) {
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
  }
  __nv_bfloat16_raw r;
  r.x = bits;
  return __bfloat162float(__nv_bfloat16(r));
}

void cublasProduct(cublasHandle_t handle, DType dt, const void* x, const void* w, void* y, bool y_f32, int rows, int out, int in) {
  const float alpha = 1.f, beta = 0.f;
  const cudaDataType t = dt == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
  CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, t, in, x, t, in, &beta, y,
                            y_f32 ? CUDA_R_32F : t, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// An attention kernel's output (model dtype, as read back) against a host reference in double:
// the relative L2 error, whether every value is finite, and whether both pass the dtype's bound.
struct AttentionError {
  double rel = 0;
  bool finite = true;
  bool ok = false;
};
AttentionError attentionError(DType d, const std::vector<std::uint16_t>& got, const std::vector<double>& ref) {
  AttentionError e;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double a = hostFloat(d, got[i]);
    if (!std::isfinite(a)) e.finite = false;
    num += (a - ref[i]) * (a - ref[i]);
    den += ref[i] * ref[i];
  }
  e.rel = std::sqrt(num / std::max(den, 1e-30));
  e.ok = e.finite && e.rel < (d == DType::kF16 ? 2e-3 : 1e-2) && den > 0;
  return e;
}

int runKernels() {
  CUDA_CHECK(cudaSetDevice(0));
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreate(&stream));
  cublasHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasCreate(&handle));
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const std::size_t pool_bytes = 1ull << 30;
  std::byte* pool = nullptr;
  void *x = nullptr, *y = nullptr, *yr = nullptr;
  CUDA_CHECK(cudaMalloc(&pool, pool_bytes));
  CUDA_CHECK(cudaMalloc(&x, 32 * 16384 * 2));
  CUDA_CHECK(cudaMalloc(&y, 32ull * 131072 * 4));
  CUDA_CHECK(cudaMalloc(&yr, 32ull * 131072 * 4));
  bool all_ok = true;
  // Accuracy: odd shapes (inner not a multiple of 32 or 256, features not a multiple of 16).
  for (DType dt : {DType::kF16, DType::kBF16}) {
    for (auto [out, in] : std::vector<std::pair<int, int>>{{4112, 1400}, {1046, 1408}, {4096, 4096}, {250, 8}}) {
      for (int rows : {1, 3, 8, 13, 16, 27, 32}) {
        kernels::fillUniform(dt, pool, static_cast<std::int64_t>(out) * in, 11 + rows + out, 0.05f, 0.f, stream);
        kernels::fillUniform(dt, x, static_cast<std::int64_t>(rows) * in, 97 + rows + in, 1.f, 0.f, stream);
        for (bool f32 : {true, false}) {
          CUDA_CHECK(cudaMemsetAsync(y, 0xff, static_cast<std::size_t>(rows) * out * 4, stream));  // poison
          kernels::skinnyGemm(dt, x, pool, y, f32, rows, out, in, stream);
          cublasProduct(handle, dt, x, pool, yr, f32, rows, out, in);
          const std::size_t count = static_cast<std::size_t>(rows) * out;
          std::vector<float> a(count), b(count);
          if (f32) {
            CUDA_CHECK(cudaMemcpyAsync(a.data(), y, count * 4, cudaMemcpyDeviceToHost, stream));
            CUDA_CHECK(cudaMemcpyAsync(b.data(), yr, count * 4, cudaMemcpyDeviceToHost, stream));
            CUDA_CHECK(cudaStreamSynchronize(stream));
          } else {
            std::vector<std::uint16_t> ah(count), bh(count);
            CUDA_CHECK(cudaMemcpyAsync(ah.data(), y, count * 2, cudaMemcpyDeviceToHost, stream));
            CUDA_CHECK(cudaMemcpyAsync(bh.data(), yr, count * 2, cudaMemcpyDeviceToHost, stream));
            CUDA_CHECK(cudaStreamSynchronize(stream));
            for (std::size_t i = 0; i < count; ++i) { a[i] = hostFloat(dt, ah[i]); b[i] = hostFloat(dt, bh[i]); }
          }
          double num = 0, den = 0;
          bool finite = true;
          for (std::size_t i = 0; i < count; ++i) {
            if (!std::isfinite(a[i])) finite = false;
            num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
            den += static_cast<double>(b[i]) * b[i];
          }
          const double rel = std::sqrt(num / std::max(den, 1e-30));
          const bool ok = finite && rel < (f32 ? 1e-4 : (dt == DType::kF16 ? 2e-3 : 1e-2));
          all_ok = all_ok && ok;
          if (!ok || (rows == 13 && out == 4112))
            std::printf("KCHECK %s %s out %d in %d rows %d rel %.2e %s\n", dt == DType::kF16 ? "f16" : "bf16",
                        f32 ? "y_f32" : "y_model", out, in, rows, rel, ok ? "ok" : "FAIL");
        }
      }
    }
  }
  std::printf("KCHECK skinny vs cuBLAS overall %s\n", all_ok ? "ok" : "FAIL");

  // Fused epilogues against the product followed by the separate kernel (model-dtype buffers).
  auto compareHalves = [&](DType d, const void* a_dev, const void* b_dev, std::size_t count, const char* label) {
    std::vector<std::uint16_t> ah(count), bh(count);
    CUDA_CHECK(cudaMemcpyAsync(ah.data(), a_dev, count * 2, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaMemcpyAsync(bh.data(), b_dev, count * 2, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    double num = 0, den = 0;
    bool finite = true;
    for (std::size_t i = 0; i < count; ++i) {
      const double av = hostFloat(d, ah[i]), bv = hostFloat(d, bh[i]);
      if (!std::isfinite(av)) finite = false;
      num += (av - bv) * (av - bv);
      den += bv * bv;
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    const bool ok = finite && rel < 1e-3 && den > 0;
    all_ok = all_ok && ok;
    std::printf("KCHECK %s %s rel %.2e %s\n", d == DType::kF16 ? "f16" : "bf16", label, rel, ok ? "ok" : "FAIL");
  };
  for (DType d : {DType::kF16, DType::kBF16}) {
    for (int rows : {1, 5, 16, 32}) {
      const int width = 1408, in = 1024;
      std::byte* wgu = pool;
      std::byte* tmp = pool + (64ull << 20);
      std::byte* ref = pool + (128ull << 20);
      std::byte* got = pool + (192ull << 20);
      kernels::fillUniform(d, wgu, 2LL * width * in, 21 + rows, 0.06f, 0.f, stream);
      kernels::fillUniform(d, x, static_cast<std::int64_t>(rows) * in, 22 + rows, 1.f, 0.f, stream);
      CUDA_CHECK(cudaMemsetAsync(got, 0xff, static_cast<std::size_t>(rows) * width * 2, stream));
      kernels::skinnyGemm(d, x, wgu, tmp, false, rows, 2 * width, in, stream);
      kernels::swiGlu(d, tmp, ref, rows, width, stream);
      kernels::skinnyGemmSwiGlu(d, x, wgu, got, rows, width, in, stream);
      char label[64];
      std::snprintf(label, sizeof label, "swiglu epilogue rows %d", rows);
      compareHalves(d, got, ref, static_cast<std::size_t>(rows) * width, label);
    }
    for (int hd : {64, 128}) {
      for (int rows : {1, 7, 16, 32}) {
        kernels::QkvLayout layout;
        layout.heads = 8;
        layout.kv_heads = 2;
        layout.head_dim = hd;
        layout.max_seq = 64;
        layout.rotary = hd == 128;
        layout.rope_theta = 500000.f;
        const int in = 1024, width = (layout.heads + 2 * layout.kv_heads) * hd;
        const std::size_t q_bytes = static_cast<std::size_t>(rows) * layout.heads * hd * 2;
        const std::size_t cache_bytes = static_cast<std::size_t>(rows) * layout.max_seq * layout.kv_heads * hd * 2;
        std::byte* wq = pool;
        std::byte* bias = pool + (32ull << 20);
        std::byte* tmp = pool + (64ull << 20);
        std::byte* q_ref = pool + (96ull << 20);
        std::byte* q_got = pool + (128ull << 20);
        std::byte* kv_ref = pool + (160ull << 20);  // k then v
        std::byte* kv_got = pool + (224ull << 20);
        kernels::fillUniform(d, wq, static_cast<std::int64_t>(width) * in, 31 + rows + hd, 0.06f, 0.f, stream);
        kernels::fillUniform(d, bias, width, 32 + rows, 0.5f, 0.f, stream);
        kernels::fillUniform(d, x, static_cast<std::int64_t>(rows) * in, 33 + rows, 1.f, 0.f, stream);
        int* meta = reinterpret_cast<int*>(pool + (300ull << 20));
        std::vector<int> host(2 * static_cast<std::size_t>(rows));
        for (int n = 0; n < rows; ++n) { host[static_cast<std::size_t>(n)] = n; host[static_cast<std::size_t>(rows + n)] = (n * 7 + 3) % 64; }
        CUDA_CHECK(cudaMemcpyAsync(meta, host.data(), host.size() * sizeof(int), cudaMemcpyHostToDevice, stream));
        for (std::byte* b : {q_ref, q_got, kv_ref, kv_got}) CUDA_CHECK(cudaMemsetAsync(b, 0, 2 * cache_bytes + q_bytes, stream));
        kernels::skinnyGemm(d, x, wq, tmp, false, rows, width, in, stream);
        kernels::splitQkv(d, tmp, bias, meta, meta + rows, rows, layout, q_ref, kv_ref, kv_ref + cache_bytes, stream);
        kernels::skinnyGemmQkv(d, x, wq, bias, meta, meta + rows, rows, in, layout, q_got, kv_got, kv_got + cache_bytes, stream);
        char label[64];
        std::snprintf(label, sizeof label, "qkv epilogue hd %d rows %d: q", hd, rows);
        compareHalves(d, q_got, q_ref, q_bytes / 2, label);
        std::snprintf(label, sizeof label, "qkv epilogue hd %d rows %d: k+v cache", hd, rows);
        compareHalves(d, kv_got, kv_ref, cache_bytes, label);
      }
    }
  }
  // The prefill q/k/v split (four pairs per thread) against the one-pair-per-thread kernel, at
  // prefill sizes: bit-identical q and cache rows.
  for (DType d : {DType::kF16, DType::kBF16}) {
    for (int hd : {64, 128}) {
      kernels::QkvLayout layout;
      layout.heads = 16;
      layout.kv_heads = hd == 128 ? 4 : 16;
      layout.head_dim = hd;
      layout.max_seq = 4104;
      layout.rotary = hd == 128;
      layout.rope_theta = 500000.f;
      const int tokens = 4099, width = (layout.heads + 2 * layout.kv_heads) * hd;
      const std::size_t q_elems = static_cast<std::size_t>(tokens) * layout.heads * hd;
      const std::size_t cache_elems = static_cast<std::size_t>(layout.max_seq) * layout.kv_heads * hd;  // one slot
      std::byte* qkv = pool;
      std::byte* bias = pool + (64ull << 20);
      std::byte* a = pool + (96ull << 20);
      std::byte* b = pool + (416ull << 20);
      int* meta = reinterpret_cast<int*>(pool + (1000ull << 20));
      kernels::fillUniform(d, qkv, static_cast<std::int64_t>(tokens) * width, 51 + hd, 1.f, 0.f, stream);
      kernels::fillUniform(d, bias, width, 52 + hd, 0.5f, 0.f, stream);
      std::vector<int> host(2 * static_cast<std::size_t>(tokens));
      for (int n = 0; n < tokens; ++n) { host[static_cast<std::size_t>(n)] = 0; host[static_cast<std::size_t>(tokens + n)] = n; }
      CUDA_CHECK(cudaMemcpyAsync(meta, host.data(), host.size() * sizeof(int), cudaMemcpyHostToDevice, stream));
      const std::size_t bytes = (q_elems + 2 * cache_elems) * 2;
      for (std::byte* out : {a, b}) {
        CUDA_CHECK(cudaMemsetAsync(out, 0, bytes, stream));
        kernels::splitQkv(d, qkv, hd == 64 ? bias : nullptr, meta, meta + tokens, tokens, layout, out, out + q_elems * 2,
                          out + (q_elems + cache_elems) * 2, stream, /*per_pair=*/out == b);
      }
      std::vector<std::uint16_t> ha(bytes / 2), hb(bytes / 2);
      CUDA_CHECK(cudaMemcpyAsync(ha.data(), a, bytes, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaMemcpyAsync(hb.data(), b, bytes, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      const bool ok = ha == hb;
      all_ok = all_ok && ok;
      std::printf("KCHECK %s prefill q/k/v split (4 pairs per thread vs 1) hd %d tokens %d rotary %d bias %d: %s\n",
                  d == DType::kF16 ? "f16" : "bf16", hd, tokens, layout.rotary ? 1 : 0, hd == 64 ? 1 : 0,
                  ok ? "bit-identical ok" : "FAIL");
    }
  }
  // Decode attention against a host reference in double: uneven contexts (1, a chunk's edge,
  // the whole cache), shuffled slots, GQA groups 1..8, both kernel shapes, chunks of one round and
  // of several; each case launched twice.
  struct AttnCase { int heads, kv_heads, hd, tokens, max_seq; };
  for (DType d : {DType::kF16, DType::kBF16}) {
    // With the default thresholds: one-round shape for {32,32,128,1}, {32,8,128,1}, {32,16,128,1}
    // and {16,2,64,3}; one chunk (direct output) for {32,32,128,33,512}; the rest streaming.
    for (const AttnCase& c : std::vector<AttnCase>{{32, 32, 128, 1, 640}, {32, 8, 128, 1, 640}, {32, 16, 128, 1, 640},
                                                   {32, 32, 128, 8, 640}, {32, 8, 128, 32, 640}, {16, 2, 64, 3, 300},
                                                   {16, 16, 64, 32, 640}, {64, 8, 128, 4, 2048}, {32, 32, 128, 32, 1024},
                                                   {32, 32, 128, 33, 512}}) {
      kernels::QkvLayout layout;
      layout.heads = c.heads;
      layout.kv_heads = c.kv_heads;
      layout.head_dim = c.hd;
      layout.max_seq = c.max_seq;
      const std::size_t cache = static_cast<std::size_t>(c.tokens) * c.max_seq * c.kv_heads * c.hd;
      const std::size_t qn = static_cast<std::size_t>(c.tokens) * c.heads * c.hd;
      const std::int64_t partial_floats = kernels::decodeAttentionPartialFloats(c.heads, c.kv_heads, c.hd, c.tokens, c.max_seq);
      std::byte* k = pool;
      std::byte* v = k + cache * 2;
      std::byte* q = v + cache * 2;
      std::byte* o = q + qn * 2;
      float* partial = reinterpret_cast<float*>(o + qn * 2);
      int* meta = reinterpret_cast<int*>(partial + partial_floats);
      std::vector<int> host_meta(2 * static_cast<std::size_t>(c.tokens));
      for (int n = 0; n < c.tokens; ++n) {
        host_meta[static_cast<std::size_t>(n)] = c.tokens - 1 - n;  // slot
        int ctx = 1 + (n * 397 + 113) % c.max_seq;
        if (n == 0) ctx = c.tokens == 1 ? 576 % c.max_seq + 1 : c.max_seq;
        if (n == 1) ctx = 1;
        if (n == 2) ctx = 128;
        host_meta[static_cast<std::size_t>(c.tokens + n)] = ctx;
      }
      CUDA_CHECK(cudaMemcpyAsync(meta, host_meta.data(), host_meta.size() * sizeof(int), cudaMemcpyHostToDevice, stream));
      kernels::fillUniform(d, k, static_cast<std::int64_t>(cache), 41 + c.tokens, 1.f, 0.f, stream);
      kernels::fillUniform(d, v, static_cast<std::int64_t>(cache), 42 + c.tokens, 1.f, 0.f, stream);
      kernels::fillUniform(d, q, static_cast<std::int64_t>(qn), 43 + c.tokens, 1.f, 0.f, stream);
      const float scale = 1.f / std::sqrt(static_cast<float>(c.hd));
      std::vector<std::uint16_t> hk(cache), hv(cache), hq(qn), ho(qn);
      CUDA_CHECK(cudaMemcpyAsync(hk.data(), k, cache * 2, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaMemcpyAsync(hv.data(), v, cache * 2, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaMemcpyAsync(hq.data(), q, qn * 2, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      std::vector<double> ref(qn);
      const int group = c.heads / c.kv_heads;
      for (int n = 0; n < c.tokens; ++n) {
        const int slot = host_meta[static_cast<std::size_t>(n)], ctx = host_meta[static_cast<std::size_t>(c.tokens + n)];
        for (int h = 0; h < c.heads; ++h) {
          const std::size_t qo = (static_cast<std::size_t>(n) * c.heads + h) * c.hd;
          auto row = [&](int t) { return ((static_cast<std::size_t>(slot) * c.max_seq + t) * c.kv_heads + h / group) * c.hd; };
          std::vector<double> s(static_cast<std::size_t>(ctx));
          double m = -1e300;
          for (int t = 0; t < ctx; ++t) {
            double dot = 0;
            for (int e = 0; e < c.hd; ++e) dot += hostFloat(d, hq[qo + e]) * hostFloat(d, hk[row(t) + e]);
            s[static_cast<std::size_t>(t)] = dot * scale;
            m = std::max(m, dot * scale);
          }
          double den = 0;
          for (double& sv : s) den += (sv = std::exp(sv - m));
          for (int e = 0; e < c.hd; ++e) {
            double num = 0;
            for (int t = 0; t < ctx; ++t) num += s[static_cast<std::size_t>(t)] * hostFloat(d, hv[row(t) + e]);
            ref[qo + e] = num / den;
          }
        }
      }
      for (int launch = 0; launch < 2; ++launch) {
        CUDA_CHECK(cudaMemsetAsync(o, 0xff, qn * 2, stream));  // poison: the output, and the partials (NaN) the
        if (partial_floats > 0)                                // merge must read only where chunks wrote
          CUDA_CHECK(cudaMemsetAsync(partial, 0xff, static_cast<std::size_t>(partial_floats) * 4, stream));
        kernels::decodeAttention(d, q, k, v, meta, meta + c.tokens, c.tokens, layout, scale, o, partial, stream);
        CUDA_CHECK(cudaMemcpyAsync(ho.data(), o, qn * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        const AttentionError err = attentionError(d, ho, ref);
        const double rel = err.rel;
        const bool ok = err.ok;
        all_ok = all_ok && ok;
        std::printf("KCHECK %s decode attention heads %d kv %d hd %d tokens %d max_seq %d splits %d launch %d rel %.2e %s\n",
                    d == DType::kF16 ? "f16" : "bf16", c.heads, c.kv_heads, c.hd, c.tokens, c.max_seq,
                    kernels::decodeAttentionSplits(c.kv_heads, c.tokens, c.max_seq), launch, rel, ok ? "ok" : "FAIL");
      }
    }
  }
  // Prefill attention (fused, causal) against a host reference in double: sequences of uneven
  // lengths (1, tile edges, several tiles) in shuffled cache slots, GQA groups 1, 4 and 8, head
  // dims 64 and 128. Cache rows past each sequence's length and the output are poisoned (NaN):
  // the kernel must neither read the former into a result nor leave rows of the latter unwritten.
  struct PrefillCase { int heads, kv_heads, hd; std::vector<int> lens; };
  for (DType d : {DType::kF16, DType::kBF16}) {
    for (const PrefillCase& c : std::vector<PrefillCase>{{32, 32, 128, {1, 63, 64, 65, 200}},
                                                         {32, 8, 128, {130, 7, 512}},
                                                         {16, 2, 64, {96, 1, 257}},
                                                         {8, 8, 64, {33}}}) {
      const int sequences = static_cast<int>(c.lens.size());
      const int max_seq = 520;
      std::vector<int> begin(static_cast<std::size_t>(sequences)), slot(static_cast<std::size_t>(sequences));
      int tokens = 0;
      for (int s = 0; s < sequences; ++s) {
        begin[static_cast<std::size_t>(s)] = tokens;
        slot[static_cast<std::size_t>(s)] = (s * 2 + 1) % (sequences + 1);  // shuffled, one slot left empty
        tokens += c.lens[static_cast<std::size_t>(s)];
      }
      const int slots = sequences + 1;
      const std::size_t kv_row = static_cast<std::size_t>(c.kv_heads) * c.hd;
      const std::size_t cache = static_cast<std::size_t>(slots) * max_seq * kv_row;
      const std::size_t qn = static_cast<std::size_t>(tokens) * c.heads * c.hd;
      std::byte* k = pool;
      std::byte* v = k + cache * 2;
      std::byte* q = v + cache * 2;
      std::byte* o = q + qn * 2;
      int* tiles = reinterpret_cast<int*>(o + qn * 2);
      CUDA_CHECK(cudaMemsetAsync(k, 0xff, cache * 2, stream));
      CUDA_CHECK(cudaMemsetAsync(v, 0xff, cache * 2, stream));
      for (int s = 0; s < sequences; ++s) {
        const std::size_t at = static_cast<std::size_t>(slot[static_cast<std::size_t>(s)]) * max_seq * kv_row * 2;
        const std::int64_t n = static_cast<std::int64_t>(c.lens[static_cast<std::size_t>(s)]) * static_cast<std::int64_t>(kv_row);
        kernels::fillUniform(d, k + at, n, 51 + s, 1.f, 0.f, stream);
        kernels::fillUniform(d, v + at, n, 61 + s, 1.f, 0.f, stream);
      }
      kernels::fillUniform(d, q, static_cast<std::int64_t>(qn), 71, 1.f, 0.f, stream);
      std::vector<int> host_tiles(4 * static_cast<std::size_t>(kernels::prefillAttentionMaxTiles(tokens, sequences)));
      const int num_tiles = kernels::prefillAttentionTiles(begin.data(), c.lens.data(), slot.data(), sequences, host_tiles.data());
      CUDA_CHECK(cudaMemcpyAsync(tiles, host_tiles.data(), static_cast<std::size_t>(num_tiles) * 16, cudaMemcpyHostToDevice, stream));
      std::vector<std::uint16_t> hk(cache), hv(cache), hq(qn), ho(qn);
      CUDA_CHECK(cudaMemcpyAsync(hk.data(), k, cache * 2, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaMemcpyAsync(hv.data(), v, cache * 2, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaMemcpyAsync(hq.data(), q, qn * 2, cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      kernels::QkvLayout layout;
      layout.heads = c.heads;
      layout.kv_heads = c.kv_heads;
      layout.head_dim = c.hd;
      layout.max_seq = max_seq;
      const float scale = 1.f / std::sqrt(static_cast<float>(c.hd));
      std::vector<double> ref(qn);
      const int group = c.heads / c.kv_heads;
      for (int s = 0; s < sequences; ++s) {
        for (int r = 0; r < c.lens[static_cast<std::size_t>(s)]; ++r) {
          for (int h = 0; h < c.heads; ++h) {
            const std::size_t qo = (static_cast<std::size_t>(begin[static_cast<std::size_t>(s)] + r) * c.heads + h) * c.hd;
            auto row = [&](int t) {
              return (static_cast<std::size_t>(slot[static_cast<std::size_t>(s)]) * max_seq + t) * kv_row + static_cast<std::size_t>(h / group) * c.hd;
            };
            std::vector<double> w(static_cast<std::size_t>(r + 1));
            double m = -1e300;
            for (int t = 0; t <= r; ++t) {
              double dot = 0;
              for (int e = 0; e < c.hd; ++e) dot += hostFloat(d, hq[qo + e]) * hostFloat(d, hk[row(t) + e]);
              w[static_cast<std::size_t>(t)] = dot * scale;
              m = std::max(m, dot * scale);
            }
            double den = 0;
            for (double& wt : w) den += (wt = std::exp(wt - m));
            for (int e = 0; e < c.hd; ++e) {
              double num = 0;
              for (int t = 0; t <= r; ++t) num += w[static_cast<std::size_t>(t)] * hostFloat(d, hv[row(t) + e]);
              ref[qo + e] = num / den;
            }
          }
        }
      }
      for (int launch = 0; launch < 2; ++launch) {
        CUDA_CHECK(cudaMemsetAsync(o, 0xff, qn * 2, stream));
        kernels::prefillAttention(d, q, k, v, tiles, num_tiles, layout, scale, o, stream);
        CUDA_CHECK(cudaMemcpyAsync(ho.data(), o, qn * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        const AttentionError err = attentionError(d, ho, ref);
        const double rel = err.rel;
        const bool finite = err.finite;
        const bool ok = err.ok;
        all_ok = all_ok && ok;
        std::string lens;
        for (int len : c.lens) {
          if (!lens.empty()) lens.push_back(',');
          lens.append(std::to_string(len));
        }
        std::printf("KCHECK %s prefill attention heads %d kv %d hd %d lens %s tiles %d launch %d rel %.2e %s\n",
                    d == DType::kF16 ? "f16" : "bf16", c.heads, c.kv_heads, c.hd, lens.c_str(), num_tiles, launch, rel,
                    finite ? (ok ? "ok" : "FAIL") : "FAIL (not finite)");
      }
    }
  }
  // Prefill's residual add + norm (40 rows: the register-resident kernel) against a host
  // reference in double, LayerNorm with biases and RMSNorm, hidden 4096 and 5120.
  for (DType d : {DType::kF16, DType::kBF16}) {
    for (int hidden : {4096, 5120}) {
      for (bool layer_norm : {true, false}) {
        const int rows = 40;
        const std::size_t n = static_cast<std::size_t>(rows) * hidden;
        float* residual = reinterpret_cast<float*>(pool);
        float* projection = residual + n;
        std::byte* params = reinterpret_cast<std::byte*>(projection + n);
        std::byte* pbias = params;
        std::byte* weight = pbias + hidden * 2;
        std::byte* bias = weight + hidden * 2;
        std::byte* out = bias + hidden * 2;
        std::vector<float> hres(n), hproj(n);
        for (std::size_t i = 0; i < n; ++i) {
          hres[i] = static_cast<float>((i * 7919) % 1000) / 250.f - 2.f;
          hproj[i] = static_cast<float>((i * 104729) % 1000) / 500.f - 1.f;
        }
        CUDA_CHECK(cudaMemcpyAsync(residual, hres.data(), n * 4, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaMemcpyAsync(projection, hproj.data(), n * 4, cudaMemcpyHostToDevice, stream));
        kernels::fillUniform(d, pbias, hidden, 81, 0.5f, 0.f, stream);
        kernels::fillUniform(d, weight, hidden, 82, 1.f, 0.f, stream);
        kernels::fillUniform(d, bias, hidden, 83, 0.5f, 0.f, stream);
        std::vector<std::uint16_t> hpb(static_cast<std::size_t>(hidden)), hw(static_cast<std::size_t>(hidden)),
            hb(static_cast<std::size_t>(hidden)), ho(n);
        CUDA_CHECK(cudaMemcpyAsync(hpb.data(), pbias, static_cast<std::size_t>(hidden) * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaMemcpyAsync(hw.data(), weight, static_cast<std::size_t>(hidden) * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaMemcpyAsync(hb.data(), bias, static_cast<std::size_t>(hidden) * 2, cudaMemcpyDeviceToHost, stream));
        kernels::addResidualNorm(d, layer_norm, residual, projection, pbias, rows, hidden, weight, layer_norm ? bias : nullptr, 1e-5f,
                                 out, stream);
        std::vector<float> gres(n);
        CUDA_CHECK(cudaMemcpyAsync(gres.data(), residual, n * 4, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaMemcpyAsync(ho.data(), out, n * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        double num = 0, den = 0, res_err = 0;
        for (int r = 0; r < rows; ++r) {
          std::vector<double> row_sum(static_cast<std::size_t>(hidden));
          double mean = 0, sq = 0;
          for (int i = 0; i < hidden; ++i) {
            const std::size_t at = static_cast<std::size_t>(r) * hidden + i;
            row_sum[static_cast<std::size_t>(i)] = static_cast<double>(hres[at]) + hproj[at] + hostFloat(d, hpb[static_cast<std::size_t>(i)]);
            res_err = std::max(res_err, std::abs(row_sum[static_cast<std::size_t>(i)] - gres[at]));
            mean += row_sum[static_cast<std::size_t>(i)];
          }
          mean = layer_norm ? mean / hidden : 0.0;
          for (double xv : row_sum) sq += (xv - mean) * (xv - mean);
          const double inv = 1.0 / std::sqrt(sq / hidden + 1e-5);
          for (int i = 0; i < hidden; ++i) {
            const auto ui = static_cast<std::size_t>(i);
            const double ref = (row_sum[ui] - mean) * inv * hostFloat(d, hw[ui]) + (layer_norm ? hostFloat(d, hb[ui]) : 0.0);
            const double got = hostFloat(d, ho[static_cast<std::size_t>(r) * hidden + i]);
            num += (got - ref) * (got - ref);
            den += ref * ref;
          }
        }
        const double rel = std::sqrt(num / std::max(den, 1e-30));
        const bool ok = rel < (d == DType::kF16 ? 2e-3 : 1e-2) && res_err < 1e-5 && den > 0;
        all_ok = all_ok && ok;
        std::printf("KCHECK %s prefill residual add + %s hidden %d rows %d rel %.2e residual err %.1e %s\n",
                    d == DType::kF16 ? "f16" : "bf16", layer_norm ? "LayerNorm" : "RMSNorm", hidden, rows, rel, res_err,
                    ok ? "ok" : "FAIL");
      }
    }
  }
  std::printf("KCHECK fused epilogues and products overall %s\n", all_ok ? "ok" : "FAIL");

  // Speed on the decode products (f16, fp32 or model-dtype output as the executor uses them).
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  struct Product { const char* name; int out, in; bool f32; };
  const std::vector<Product> products = {
      {"opt qkv", 12288, 4096, false}, {"opt out", 4096, 4096, true}, {"opt fc1", 16384, 4096, false},
      {"opt fc2", 4096, 16384, true},  {"opt head", 50272, 4096, true}, {"llama qkv", 6144, 4096, false},
      {"llama gate_up", 28672, 4096, false}, {"llama down", 4096, 14336, true}, {"llama head", 128256, 4096, true}};
  const DType dt = DType::kF16;
  kernels::fillUniform(dt, pool, static_cast<std::int64_t>(pool_bytes / 2), 5, 0.05f, 0.f, stream);
  kernels::fillUniform(dt, x, 32 * 16384, 6, 1.f, 0.f, stream);
  for (const Product& p : products) {
    const std::size_t bytes = static_cast<std::size_t>(p.out) * p.in * 2;
    const int copies = static_cast<int>(std::max<std::size_t>(1, pool_bytes / bytes));
    for (int rows : {1, 8, 16, 32}) {
      double us[2] = {0, 0};
      for (int which = 0; which < 2; ++which) {
        auto run = [&](int rep) {
          const std::byte* w = pool + static_cast<std::size_t>(rep % copies) * bytes;
          if (which == 0) kernels::skinnyGemm(dt, x, w, y, p.f32, rows, p.out, p.in, stream);
          else cublasProduct(handle, dt, x, w, y, p.f32, rows, p.out, p.in);
        };
        for (int rep = 0; rep < 3; ++rep) run(rep);
        const int reps = 30;
        CUDA_CHECK(cudaEventRecord(start, stream));
        for (int rep = 0; rep < reps; ++rep) run(rep);
        CUDA_CHECK(cudaEventRecord(stop, stream));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        us[which] = ms * 1e3 / reps;
      }
      std::printf("KGEMM %-13s rows %2d  skinny %8.1f us %6.0f GB/s  cublas %8.1f us %6.0f GB/s\n", p.name, rows, us[0],
                  bytes / us[0] / 1e3, us[1], bytes / us[1] / 1e3);
    }
  }

  // Decode attention: cache bytes read per launch over its time (launches back to back).
  for (auto [heads, kv_heads] : std::vector<std::pair<int, int>>{{32, 32}, {32, 8}}) {
    for (int tokens : {1, 8, 32}) {
      const int max_seq = 640, ctx = 576, hd = 128;
      kernels::QkvLayout layout;
      layout.heads = heads;
      layout.kv_heads = kv_heads;
      layout.head_dim = hd;
      layout.max_seq = max_seq;
      const std::size_t cache = static_cast<std::size_t>(tokens) * max_seq * kv_heads * hd * 2;
      void *k = nullptr, *v = nullptr, *q = nullptr, *o = nullptr;
      int* meta = nullptr;
      float* partial = nullptr;
      const std::int64_t partial_floats = kernels::decodeAttentionPartialFloats(heads, kv_heads, hd, tokens, max_seq);
      CUDA_CHECK(cudaMalloc(&k, cache));
      CUDA_CHECK(cudaMalloc(&v, cache));
      CUDA_CHECK(cudaMalloc(&q, static_cast<std::size_t>(tokens) * heads * hd * 2));
      CUDA_CHECK(cudaMalloc(&o, static_cast<std::size_t>(tokens) * heads * hd * 2));
      CUDA_CHECK(cudaMalloc(&meta, 2 * tokens * sizeof(int)));
      if (partial_floats > 0) CUDA_CHECK(cudaMalloc(&partial, static_cast<std::size_t>(partial_floats) * 4));
      std::vector<int> host_meta(2 * static_cast<std::size_t>(tokens));
      for (int n = 0; n < tokens; ++n) { host_meta[static_cast<std::size_t>(n)] = n; host_meta[static_cast<std::size_t>(tokens + n)] = ctx; }
      CUDA_CHECK(cudaMemcpy(meta, host_meta.data(), host_meta.size() * sizeof(int), cudaMemcpyHostToDevice));
      kernels::fillUniform(dt, k, static_cast<std::int64_t>(cache / 2), 8, 1.f, 0.f, stream);
      kernels::fillUniform(dt, v, static_cast<std::int64_t>(cache / 2), 9, 1.f, 0.f, stream);
      kernels::fillUniform(dt, q, static_cast<std::int64_t>(tokens) * heads * hd, 10, 1.f, 0.f, stream);
      auto run = [&] { kernels::decodeAttention(dt, q, k, v, meta, meta + tokens, tokens, layout, 0.088f, o, partial, stream); };
      for (int rep = 0; rep < 3; ++rep) run();
      const int reps = 50;
      CUDA_CHECK(cudaEventRecord(start, stream));
      for (int rep = 0; rep < reps; ++rep) run();
      CUDA_CHECK(cudaEventRecord(stop, stream));
      CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      const double us = ms * 1e3 / reps;
      const double read = 2.0 * tokens * ctx * kv_heads * hd * 2;
      std::printf("KATTN heads %d kv %d tokens %2d ctx %d splits %d  %7.1f us  %6.0f GB/s%s\n", heads, kv_heads, tokens, ctx,
                  kernels::decodeAttentionSplits(kv_heads, tokens, max_seq), us, read / us / 1e3,
                  read < 40e6 ? " (fits in L2)" : "");
      CUDA_CHECK(cudaFree(k));
      CUDA_CHECK(cudaFree(v));
      CUDA_CHECK(cudaFree(q));
      CUDA_CHECK(cudaFree(o));
      CUDA_CHECK(cudaFree(meta));
      if (partial) CUDA_CHECK(cudaFree(partial));
    }
  }
  // Speed of the fused prefill attention: batches of 512-token prompts (f16), causal FLOPs only.
  for (auto [heads, kv_heads] : std::vector<std::pair<int, int>>{{32, 32}, {32, 8}}) {
    for (int batch : {1, 8, 32}) {
      const int len = 512, hd = 128, tokens = batch * len;
      kernels::QkvLayout layout;
      layout.heads = heads;
      layout.kv_heads = kv_heads;
      layout.head_dim = hd;
      layout.max_seq = len;
      const std::size_t cache = static_cast<std::size_t>(batch) * len * kv_heads * hd * 2;
      const std::size_t qbytes = static_cast<std::size_t>(tokens) * heads * hd * 2;
      std::byte* k = pool;
      std::byte* v = k + cache;
      std::byte* q = v + cache;
      std::byte* o = q + qbytes;
      int* tiles = reinterpret_cast<int*>(o + qbytes);
      kernels::fillUniform(DType::kF16, k, static_cast<std::int64_t>(cache / 2), 8, 1.f, 0.f, stream);
      kernels::fillUniform(DType::kF16, v, static_cast<std::int64_t>(cache / 2), 9, 1.f, 0.f, stream);
      kernels::fillUniform(DType::kF16, q, static_cast<std::int64_t>(qbytes / 2), 10, 1.f, 0.f, stream);
      std::vector<int> seq_begin, seq_len, seq_slot;
      for (int s = 0; s < batch; ++s) {
        seq_begin.push_back(s * len);
        seq_len.push_back(len);
        seq_slot.push_back(s);
      }
      std::vector<int> host_tiles(4 * static_cast<std::size_t>(kernels::prefillAttentionMaxTiles(tokens, batch)));
      const int num_tiles = kernels::prefillAttentionTiles(seq_begin.data(), seq_len.data(), seq_slot.data(), batch, host_tiles.data());
      CUDA_CHECK(cudaMemcpy(tiles, host_tiles.data(), static_cast<std::size_t>(num_tiles) * 16, cudaMemcpyHostToDevice));
      auto run = [&] { kernels::prefillAttention(DType::kF16, q, k, v, tiles, num_tiles, layout, 0.088f, o, stream); };
      for (int rep = 0; rep < 3; ++rep) run();
      const int reps = 20;
      CUDA_CHECK(cudaEventRecord(start, stream));
      for (int rep = 0; rep < reps; ++rep) run();
      CUDA_CHECK(cudaEventRecord(stop, stream));
      CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      const double us = ms * 1e3 / reps;
      const double flops = 4.0 * batch * heads * hd * (static_cast<double>(len) * (len + 1) / 2);
      std::printf("KPATTN heads %d kv %d batch %2d prompt %d  %8.1f us  %6.1f TFLOP/s\n", heads, kv_heads, batch, len, us,
                  flops / us / 1e6);
    }
  }
  CUDA_CHECK(cudaFree(pool));
  CUDA_CHECK(cudaFree(x));
  CUDA_CHECK(cudaFree(y));
  CUDA_CHECK(cudaFree(yr));
  cublasDestroy(handle);
  CUDA_CHECK(cudaStreamDestroy(stream));
  return all_ok ? 0 : 4;
}

}  // namespace

constexpr const char* kUsage =
    "usage: computron_model_check <command> [--flag value ...]\n"
    "\n"
    "Runs the CUDA decoders outside the serving runtime (scripts/model-check.sh drives it).\n"
    "\n"
    "commands:\n"
    "  generate --model DIR --requests FILE --out FILE [--logits FILE] [--tp N --pp N]\n"
    "           [--temperature T --top-k K --top-p P --seed S --eos ID] [--budget-gib G] [--max-context N]\n"
    "           [--prefill-pass N]  (at most N tokens a prefill pass: the prompts' prefill in several passes)\n"
    "      generate for the requests ({\"prompts\": [[ids...]], \"max_new_tokens\": N}) from a Hugging Face\n"
    "      safetensors folder split TP x PP; tokens as JSON, with --logits the fp32 logits of every pass\n"
    "  bench --preset NAME --batch B[,B...] [--prompt 512 --new 128] [--tp N --pp N] [--gemm-ceiling 0]\n"
    "      prefill and decode speed of a preset's shapes with random weights on GPUs 0..tp*pp-1,\n"
    "      against the bandwidth bound (the bytes of the GPU holding most over the copy rate) and\n"
    "      cuBLAS's GEMM rate at one MLP product of the prefill (rows x ffn/tp x hidden), alone and\n"
    "      sustained for 2 s\n"
    "  collectives [--tp 2]\n"
    "      the TP group's peer all-reduce and all-gather against a host reference (CCHECK lines),\n"
    "      then their time against NCCL's (COLL lines)\n"
    "  d2d       device-to-device copy bandwidth\n"
    "  overlap [--preset llama-3-8b --gib 8 --chunk-mib 64 --repeats 3 --prefill-batch 8 --prefill-prompt 1024\n"
    "           --decode-batch 32]\n"
    "      a load's copy rate (64 MiB chunks, host to GPU 0) while the GPU idles, runs products, device copies,\n"
    "      prefill or decode, from cudaHostAlloc and mmap + cudaHostRegister memory (4 KiB and huge pages),\n"
    "      and each background's unit time alone and during the copies (OVERLAP lines)\n"
    "  kernels   the decode and attention kernels against cuBLAS and a host reference (lines KCHECK, KGEMM,\n"
    "            KATTN, KPATTN)\n"
    "\n"
    "exit codes: 0 ok, 2 bad input, 3 capacity refused, 4 device error\n";

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << kUsage;
    return 0;
  }
  try {
    const auto flags = parseFlags(argc, argv, 2);
    if (command == "generate") return runGenerate(flags);
    if (command == "bench") return runBench(flags);
    if (command == "kernels") return runKernels();
    if (command == "collectives") return runCollectives(flags);
    if (command == "overlap") return runOverlap(flags);
    if (command == "d2d") {
      std::printf("d2d %.1f GB/s (read + write)\n", measureD2dBandwidth() / 1e9);
      return 0;
    }
    std::cerr << "computron_model_check: unknown command '" << command << "'\n\n" << kUsage;
    return 2;
  } catch (const CapacityError& e) {
    std::cerr << "refused: " << e.what() << "\n";
    return 3;
  } catch (const ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const DeviceError& e) {
    std::cerr << "device error: " << e.what() << "\n";
    return 4;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
