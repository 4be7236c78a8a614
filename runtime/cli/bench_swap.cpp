// computron bench swap: how fast the runtime swaps OPT-shaped models in, against the pinned
// cudaMemcpyAsync peak measured in the same run (each GPU alone and all at once) and against the
// seed's method (PyTorch per-tensor copies, measured by scripts/torch_swap_baseline.py and read
// back with --baseline). Prints a table and writes JSON.
#include <boost/program_options.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/model_spec.h"
#include "common/scenario/cli_args.h"
#include "runtime/cli/cli.h"
#include "runtime/device_factory.h"
#include "runtime/real_backend.h"
#ifdef COMPUTRON_HAVE_CUDA
#include "runtime/cuda/copy_bench.h"
#include "runtime/cuda/cuda_device.h"
#endif

namespace po = boost::program_options;

namespace computron::runtime {
namespace {

struct BenchOptions {
  std::vector<std::string> models{"opt-13b", "opt-6.7b"};
  int reps = 5;
  int warmup = 1;
  std::int64_t chunk_bytes = 64 * kMiB;
  std::vector<std::int64_t> sweep_mib{4, 16, 64, 256};
  std::int64_t peak_bytes = 8 * kGiB;
  std::int64_t pin_piece_bytes = kGiB;
  std::int64_t host_memory_limit = 0;
  int threads = 0;
  std::string baseline;
  std::string json_out;
};


#ifdef COMPUTRON_HAVE_CUDA

struct Collector : BackendListener {
  void loadDone(OpId op, bool ok, const std::string& error) override {
    done[op] = ok;
    if (!ok) errors.push_back(error);
  }
  void evictDone(OpId op) override { evicted.push_back(op); }
  void batchDone(const BatchResult&) override {}
  std::map<OpId, bool> done;
  std::vector<OpId> evicted;
  std::vector<std::string> errors;
};

struct LoadSample {
  double copy_gbps = 0;      // bytes / (last copy done - first issue): what layer readiness sees
  double verified_gbps = 0;  // including the device checksum that follows each load
  bool verified = true;
};

// Loads `cmds` at once, waits, then evicts them again. Every load is checksum-verified.
LoadSample loadOnce(RealBackend& backend, const std::vector<LoadCommand>& cmds, OpId& next_op) {
  Collector c;
  std::vector<LoadCommand> issued = cmds;
  for (auto& cmd : issued) cmd.op = next_op++;
  for (const auto& cmd : issued) backend.load(cmd);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (c.done.size() < issued.size()) {
    if (std::chrono::steady_clock::now() > give_up) throw std::runtime_error("bench: load did not finish in 120 s");
    backend.dispatch(std::chrono::steady_clock::now() + std::chrono::seconds(1), c);
  }
  if (!c.errors.empty()) throw std::runtime_error("bench: load failed: " + c.errors.front());
  LoadSample s;
  Nanos first = INT64_MAX, copy_end = 0, end = 0;
  double bytes = 0;
  for (const LoadRecord& r : backend.takeLoadRecords()) {
    first = std::min(first, r.issued);
    copy_end = std::max(copy_end, r.copy_done);
    end = std::max(end, r.done);
    bytes += static_cast<double>(r.cmd.bytes);
    s.verified = s.verified && r.verified;
  }
  s.copy_gbps = bytes / toSeconds(copy_end - first) / kGB;
  s.verified_gbps = bytes / toSeconds(end - first) / kGB;
  for (const auto& cmd : issued) backend.evict({next_op++, cmd.model, cmd.shard, cmd.gpu, cmd.bytes});
  while (c.evicted.size() < issued.size()) backend.dispatch(std::chrono::steady_clock::now() + std::chrono::seconds(1), c);
  return s;
}

LoadCommand commandFor(const RealBackend& backend, ModelId model, int shard, GpuId gpu, std::vector<RoutePart> route) {
  LoadCommand c;
  c.model = model;
  c.shard = shard;
  c.gpu = gpu;
  c.bytes = backend.store().at(model, shard).bytes;
  c.layout = backend.store().at(model, shard).layout;
  c.route = route.empty() ? std::vector<RoutePart>{{gpu, c.bytes, false}} : std::move(route);
  return c;
}

nlohmann::json measureLoads(RealBackend& backend, const std::vector<LoadCommand>& cmds, const BenchOptions& o,
                            OpId& next_op) {
  for (int i = 0; i < o.warmup; ++i) loadOnce(backend, cmds, next_op);
  std::vector<double> copy, verified;
  bool all_verified = true;
  for (int i = 0; i < o.reps; ++i) {
    LoadSample s = loadOnce(backend, cmds, next_op);
    copy.push_back(s.copy_gbps);
    verified.push_back(s.verified_gbps);
    all_verified = all_verified && s.verified;
  }
  return {{"gbps", median(copy)}, {"samples", copy}, {"with_checksum_gbps", median(verified)},
          {"all_loads_checksum_verified", all_verified}};
}

RuntimeOptions runtimeOptions(const BenchOptions& o) {
  RuntimeOptions r;
  r.chunk_bytes = o.chunk_bytes;
  r.verify_loads = true;
  r.host.pin_piece_bytes = o.pin_piece_bytes;
  r.host.host_memory_limit = o.host_memory_limit;
  r.host.threads = o.threads;
  return r;
}

EngineConfig singleModel(const ModelSpec& spec, int tp, int pp, std::vector<GpuId> gpus, int num_gpus) {
  EngineConfig cfg;
  ModelDeployment d;
  d.name = spec.name + "-tp" + std::to_string(tp) + "pp" + std::to_string(pp);
  d.spec = spec;
  d.tp = tp;
  d.pp = pp;
  d.gpus = std::move(gpus);
  cfg.models.push_back(d);
  // Room for the whole model on every GPU: the one-shard rows load the TP=1 shard on each GPU.
  cfg.gpu_weight_budget.assign(static_cast<std::size_t>(num_gpus), spec.maxShardBytes(1, 1) + 256 * kMiB);
  return cfg;
}

nlohmann::json storeStats(const RealBackend& b) {
  const HostStoreStats& s = b.store().stats();
  return {{"bytes", s.bytes}, {"fill_s", s.fill_seconds}, {"pin_and_checksum_s", s.pin_seconds},
          {"pin_thread_s", s.pin_cpu_seconds}, {"threads", s.threads}};
}

nlohmann::json benchModel(const std::string& name, const BenchOptions& o, int num_gpus) {
  const ModelSpec spec = modelPreset(name);
  nlohmann::json out;
  out["model"] = name;
  out["model_bytes"] = spec.totalBytes();
  out["chunk_bytes"] = o.chunk_bytes;
  OpId next_op = 1;
  CudaDeviceFactory factory;
  std::cerr << "bench swap: " << name << " TP=1 (" << static_cast<double>(spec.totalBytes()) / kGB << " GB)\n";
  {
    std::vector<GpuId> one{0};
    RealBackend backend(singleModel(spec, 1, 1, one, num_gpus), factory, runtimeOptions(o));
    out["host_store_tp1"] = storeStats(backend);
    const HostShard& hs = backend.store().at(0, 0);
    out["tp1_shard_bytes"] = hs.bytes;

    // Peaks: plain chunked cudaMemcpyAsync from the same pinned store into a separate buffer.
    // Each GPU copies its own slice of the pinned shard; slices start on pin-piece boundaries so
    // no copy spans two registrations.
    const std::int64_t unit = std::max<std::int64_t>(256 * kMiB, o.pin_piece_bytes);
    std::int64_t peak_bytes = std::min(o.peak_bytes, hs.bytes / std::max(1, num_gpus)) / unit * unit;
    std::vector<int> ordinals;
    for (int g = 0; g < num_gpus; ++g) ordinals.push_back(g);
    nlohmann::json sweep = nlohmann::json::array();
    std::vector<double> peak_alone(static_cast<std::size_t>(num_gpus), 0);
    double peak_all = 0;
    {
      CopyBench cb(ordinals, peak_bytes);
      std::vector<std::vector<int>> configs;
      for (int g = 0; g < num_gpus; ++g) configs.push_back({g});
      if (num_gpus > 1) configs.push_back(ordinals);
      for (std::int64_t mib : o.sweep_mib) {
        nlohmann::json row{{"chunk_mib", mib}};
        for (const auto& gpus : configs) {
          std::vector<const std::byte*> srcs;
          for (int g : gpus) srcs.push_back(hs.data + static_cast<std::int64_t>(g) * peak_bytes);
          std::vector<double> rates;
          for (int i = 0; i < o.warmup + o.reps; ++i) {
            const double t = cb.hostToDevice(gpus, srcs, peak_bytes, mib * kMiB, o.pin_piece_bytes);
            if (i >= o.warmup) rates.push_back(static_cast<double>(peak_bytes) * static_cast<double>(gpus.size()) / t / kGB);
          }
          const double m = median(rates);
          std::string key = gpus.size() == 1 ? "gpu" + std::to_string(gpus[0]) : "all";
          row[key] = m;
          if (gpus.size() == 1) {
            peak_alone[static_cast<std::size_t>(gpus[0])] = std::max(peak_alone[static_cast<std::size_t>(gpus[0])], m);
          } else {
            peak_all = std::max(peak_all, m);
          }
        }
        sweep.push_back(row);
      }
      out["peak_copy_bytes"] = peak_bytes;
      if (num_gpus > 1) {
        std::vector<double> nv;
        for (int i = 0; i < 3; ++i) nv.push_back(static_cast<double>(peak_bytes) / cb.peer(0, 1, peak_bytes) / kGB);
        out["nvlink_peer_gbps"] = median(nv);
      }
    }
    out["chunk_sweep"] = sweep;
    out["peak_alone_gbps"] = peak_alone;
    out["peak_all_gbps"] = peak_all;

    for (int g = 0; g < num_gpus; ++g) {
      out["runtime_one_shard"]["gpu" + std::to_string(g)] =
          measureLoads(backend, {commandFor(backend, 0, 0, g, {})}, o, next_op);
    }
    if (num_gpus > 1) {
      // Split in proportion to the two links' measured peaks.
      const double share = peak_alone[0] / (peak_alone[0] + peak_alone[1]);
      const std::int64_t direct = static_cast<std::int64_t>(static_cast<double>(hs.bytes) * share);
      auto route = std::vector<RoutePart>{{0, direct, false}, {1, hs.bytes - direct, false}};
      nlohmann::json mp = measureLoads(backend, {commandFor(backend, 0, 0, 0, route)}, o, next_op);
      mp["direct_bytes"] = direct;
      mp["relay_bytes"] = hs.bytes - direct;
      out["runtime_multipath"] = mp;
    }
  }
  if (num_gpus > 1) {
    for (auto [tp, pp] : {std::pair{2, 1}, std::pair{1, 2}}) {
      std::cerr << "bench swap: " << name << " TP=" << tp << " PP=" << pp << "\n";
      RealBackend backend(singleModel(spec, tp, pp, {0, 1}, num_gpus), factory, runtimeOptions(o));
      std::vector<LoadCommand> cmds{commandFor(backend, 0, 0, 0, {}), commandFor(backend, 0, 1, 1, {})};
      nlohmann::json r = measureLoads(backend, cmds, o, next_op);
      r["shard_bytes"] = {cmds[0].bytes, cmds[1].bytes};
      r["host_store"] = storeStats(backend);
      out[tp == 2 ? "runtime_tp2" : "runtime_pp2"] = r;
    }
  }
  return out;
}

#endif  // COMPUTRON_HAVE_CUDA

std::string fmt(double v, int prec = 1) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(prec) << v;
  return s.str();
}

double baselineRate(const nlohmann::json& baseline, const std::string& model, const std::string& key) {
  if (!baseline.is_object() || !baseline.contains("models") || !baseline["models"].contains(model)) return 0.0;
  return baseline["models"][model].value(key, 0.0);
}

[[maybe_unused]] void printTable(const nlohmann::json& report, const nlohmann::json& baseline, std::ostream& out) {
  out << "\ncomputron bench swap — " << report["card"].get<std::string>() << " x" << report["gpus"].size() << ", "
      << report["date"].get<std::string>() << "\n";
  for (const auto& m : report["models"]) {
    const std::string name = m["model"];
    const std::vector<double> alone = m["peak_alone_gbps"];
    const double all = m.value("peak_all_gbps", 0.0);
    const double torch1 = baselineRate(baseline, name, "one_gpu_gbps");
    const double torch2 = baselineRate(baseline, name, "two_gpu_gbps");
    out << "\n" << name << " shapes: " << fmt(m["model_bytes"].get<double>() / kGB, 2) << " GB, chunk "
        << m["chunk_bytes"].get<std::int64_t>() / kMiB << " MiB, GB/s = 1e9 bytes/s, medians\n";
    out << std::left << std::setw(48) << "row" << std::right << std::setw(9) << "GB/s" << "  " << std::left
        << std::setw(22) << "vs" << std::right << std::setw(9) << "ratio" << std::setw(8) << "goal" << std::setw(6)
        << "met" << std::setw(12) << ">PyTorch" << "\n";
    auto row = [&](const std::string& label, double v, const std::string& vs, double ref, double goal, bool pct,
                   double torch) {
      out << std::left << std::setw(48) << label << std::right << std::setw(9) << fmt(v) << "  " << std::left
          << std::setw(22) << vs << std::right;
      if (ref > 0) {
        const double r = v / ref;
        out << std::setw(9) << (pct ? fmt(100 * r) + "%" : fmt(r, 2) + "x") << std::setw(8)
            << (pct ? ">=" + fmt(100 * goal, 0) + "%" : ">=" + fmt(goal, 1) + "x") << std::setw(6)
            << (r >= goal ? "yes" : "NO");
      } else {
        out << std::setw(9) << "" << std::setw(8) << "" << std::setw(6) << "";
      }
      if (torch > 0) out << std::setw(12) << (v > torch ? "yes" : "NO");
      out << "\n";
    };
    for (std::size_t g = 0; g < alone.size(); ++g) {
      row("pinned cudaMemcpyAsync peak, GPU" + std::to_string(g) + " alone", alone[g], "", 0, 0, true, 0);
    }
    if (alone.size() > 1) row("pinned cudaMemcpyAsync peak, both at once", all, "", 0, 0, true, 0);
    for (std::size_t g = 0; g < alone.size(); ++g) {
      const std::string key = "gpu" + std::to_string(g);
      row("runtime one shard (TP=1) on GPU" + std::to_string(g), m["runtime_one_shard"][key]["gbps"],
          "GPU" + std::to_string(g) + " peak", alone[g], 0.97, true, torch1);
    }
    if (m.contains("runtime_tp2")) {
      row("runtime TP=2 over both GPUs", m["runtime_tp2"]["gbps"], "both-at-once peak", all, 0.95, true, torch2);
      row("runtime PP=2 over both GPUs", m["runtime_pp2"]["gbps"], "both-at-once peak", all, 0.95, true, torch2);
      row("runtime TP=1 multi-path (2 links + NVLink)", m["runtime_multipath"]["gbps"], "GPU0 peak (one link)",
          alone[0], 1.7, false, torch2);
    }
    if (torch1 > 0) row("PyTorch per-tensor .to(cuda), one GPU", torch1, "GPU0 peak", alone[0], 0, true, 0);
    if (torch2 > 0) row("PyTorch per-tensor, two threads, both GPUs", torch2, "both-at-once peak", all, 0, true, 0);
    out << "chunk sweep (plain cudaMemcpyAsync GB/s):";
    for (const auto& s : m["chunk_sweep"]) {
      out << "  " << s["chunk_mib"].get<int>() << " MiB: " << fmt(s.value("gpu0", 0.0));
      if (s.contains("all")) out << " (all " << fmt(s["all"].get<double>()) << ")";
    }
    out << "\n";
    if (m.contains("nvlink_peer_gbps")) out << "NVLink peer copy GPU0->GPU1: " << fmt(m["nvlink_peer_gbps"]) << " GB/s\n";
    out << "every runtime load above was checked: device checksum == host checksum ("
        << (m["runtime_one_shard"]["gpu0"]["all_loads_checksum_verified"].get<bool>() ? "all matched" : "MISMATCH")
        << "); host store TP=1: filled " << fmt(m["host_store_tp1"]["fill_s"], 2) << " s, pinned+checksummed "
        << fmt(m["host_store_tp1"]["pin_and_checksum_s"], 2) << " s on " << m["host_store_tp1"]["threads"] << " threads\n";
  }
}

}  // namespace

int benchMain(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "swap") return benchSwapMain(argc - 1, argv + 1);
  if (argc >= 2 && std::string(argv[1]) == "serve") return benchServeMain(argc - 1, argv + 1);
  std::ostream& out = (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) ? std::cout : std::cerr;
  out << "usage: computron bench swap [options]   (computron bench swap --help)\n"
         "       computron bench serve --url URL SCENARIO.json [options]   (computron bench serve --help)\n";
  return argc >= 2 && &out == &std::cout ? 0 : kExitUsage;
}

int benchSwapMain(int argc, char** argv) {
  BenchOptions o;
  std::string models = "opt-13b,opt-6.7b", sweep = "4,16,64,256";
  std::int64_t chunk_mib = 64, pin_piece_mib = 1024;
  double peak_gib = 8, host_memory_gib = 0;
  po::options_description opts("computron bench swap [options]");
  opts.add_options()("help,h", "show this help")(
      "models", po::value<std::string>(&models)->default_value(models), "model presets, comma separated")(
      "reps", po::value<int>(&o.reps)->default_value(o.reps), "timed repetitions per row (the median is reported)")(
      "warmup", po::value<int>(&o.warmup)->default_value(o.warmup), "untimed repetitions first")(
      "chunk-mib", po::value<std::int64_t>(&chunk_mib)->default_value(chunk_mib), "runtime copy chunk in MiB")(
      "sweep-mib", po::value<std::string>(&sweep)->default_value(sweep), "chunk sizes for the plain-copy peak")(
      "peak-gib", po::value<double>(&peak_gib)->default_value(peak_gib), "bytes per plain-copy peak measurement")(
      "pin-piece-mib", po::value<std::int64_t>(&pin_piece_mib)->default_value(pin_piece_mib),
      "host store pinned in pieces of this size")(
      "threads", po::value<int>(&o.threads)->default_value(0), "host store threads (0: all cores)")(
      "host-memory-gib", po::value<double>(&host_memory_gib)->default_value(0),
      "host memory the store may assume (0: detect)")(
      "baseline", po::value<std::string>(&o.baseline), "JSON from scripts/torch_swap_baseline.py, shown as rows")(
      "json", po::value<std::string>(&o.json_out), "also write the full report here");
  po::variables_map vm;
  if (auto done = parseCommandArgs(
          argc, argv, opts, "computron bench swap",
          "\nRows: plain pinned cudaMemcpyAsync peak per GPU alone and all at once (best of the chunk sweep);\n"
          "the runtime's load rate for one shard per GPU, TP=2 and PP=2 over two GPUs, and TP=1 over two host\n"
          "links with NVLink; goals 97% / 95% / 1.7x. Every load is checksum-verified on the device.\n",
          {}, vm))
    return *done;
  o.chunk_bytes = chunk_mib * kMiB;
  o.pin_piece_bytes = pin_piece_mib * kMiB;
  o.peak_bytes = static_cast<std::int64_t>(peak_gib * static_cast<double>(kGiB));
  o.host_memory_limit = static_cast<std::int64_t>(host_memory_gib * static_cast<double>(kGiB));
  o.models.clear();
  {
    std::stringstream ss(models);
    for (std::string m; std::getline(ss, m, ',');) {
      if (!isModelPreset(m)) throw ConfigError("--models: unknown preset '" + m + "'");
      o.models.push_back(m);
    }
    std::stringstream sw(sweep);
    o.sweep_mib.clear();
    for (std::string m; std::getline(sw, m, ',');) o.sweep_mib.push_back(std::stoll(m));
  }
#ifndef COMPUTRON_HAVE_CUDA
  std::cerr << "computron bench swap: CUDA is not built into this binary, and the swap benchmark needs GPUs.\n"
               "(Build where nvcc is available, or with -DCOMPUTRON_CUDA=ON. `computron replay --device host`\n"
               "runs the runtime on the host-memory device without a GPU.)\n";
  return 1;
#else
  nlohmann::json baseline;
  if (!o.baseline.empty()) {
    std::ifstream in(o.baseline);
    if (!in) throw ConfigError("--baseline: cannot read " + o.baseline);
    baseline = nlohmann::json::parse(in);
  }
  const std::vector<GpuInfo> gpus = cudaGpus();
  if (gpus.empty()) {
    std::cerr << "computron bench swap: no CUDA device\n";
    return 1;
  }
  const int num_gpus = std::min<int>(2, static_cast<int>(gpus.size()));
  nlohmann::json report;
  report["card"] = gpus[0].name;
  report["date"] = utcNow("%Y-%m-%d %H:%M UTC");
  report["driver_version"] = gpus[0].driver_version;
  report["runtime_version"] = gpus[0].runtime_version;
  for (int g = 0; g < num_gpus; ++g) {
    report["gpus"].push_back({{"name", gpus[static_cast<std::size_t>(g)].name}, {"pci", gpus[static_cast<std::size_t>(g)].pci},
                              {"memory_bytes", gpus[static_cast<std::size_t>(g)].memory_bytes}});
  }
  report["peer_access"] = num_gpus > 1 && cudaPeerAccess(0, 1);
  report["options"] = {{"reps", o.reps}, {"warmup", o.warmup}, {"chunk_bytes", o.chunk_bytes},
                       {"pin_piece_bytes", o.pin_piece_bytes}, {"peak_bytes", o.peak_bytes}};
  for (const auto& m : o.models) report["models"].push_back(benchModel(m, o, num_gpus));
  if (baseline.is_object()) report["pytorch_baseline"] = baseline;
  printTable(report, baseline, std::cout);
  std::cout << "\n" << report.dump() << "\n";
  if (!o.json_out.empty()) std::ofstream(o.json_out) << report.dump(2) << "\n";
  return 0;
#endif
}

}  // namespace computron::runtime
