// computron replay: a scenario on real devices with the real clock, through the same engine and
// RunRecorder as `computron sim`, so the two runs' summary.json, requests.csv and timeline.json
// compare directly.
#include <boost/program_options.hpp>

#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "common/scenario/cli_args.h"
#include "common/scenario/interrupt.h"
#include "common/scenario/run_recorder.h"
#include "common/scenario/scenario.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/execution_choice.h"
#include "runtime/cli/faults.h"
#include "runtime/cli/ranks.h"
#include "runtime/device_factory.h"
#include "runtime/fault_plan.h"
#include "runtime/real_backend.h"
#include "runtime/realtime_driver.h"
#include "common/cost_model.h"

namespace po = boost::program_options;

namespace computron::runtime {
namespace {

// Layer readiness goes onto the timeline as one span per load (first to last layer).
class LayerTimeline : public BackendListener {
 public:
  void loadDone(OpId, bool, const std::string&) override {}
  void evictDone(OpId) override {}
  void batchDone(const BatchResult&) override {}
  void layerReady(const LayerReady& ready) override {
    auto& span = spans_[ready.op];
    if (span.count == 0) span.first = ready.time;
    span.last = ready.time;
    ++span.count;
  }
  struct Span {
    Nanos first = 0;
    Nanos last = 0;
    int count = 0;
  };
  std::map<OpId, Span> spans_;
};

}  // namespace

int replayMain(int argc, char** argv) {
  po::options_description opts("computron replay SCENARIO.json [options]");
  std::vector<std::string> overrides;
  std::string out_dir, device = cudaBuiltIn() ? "cuda" : "host";
  double host_memory_gib = 0, time_limit_s = 600, placeholder_ms = -1;
  std::int64_t chunk_mib = 64, pin_piece_mib = 1024;
  int threads = 0, max_context = 1024;
  std::string execution_kind = cudaBuiltIn() ? "real" : "placeholder";
  std::vector<std::string> checkpoints, injections;
  std::string command_log_path, token_log_path;
  RankOptions rank_options;
  opts.add_options()("help,h", "show this help")(
      "set", po::value<std::vector<std::string>>(&overrides)->composing(),
      "override a scenario field, as for `computron sim`: --set cluster.preset=h200x2")(
      "device", po::value<std::string>(&device)->default_value(device),
      "cuda: the machine's GPUs; host: the host-memory device (memcpy on threads, no GPU)")(
      "out,o", po::value<std::string>(&out_dir), "output folder (default: the scenario's outputs.dir, else out/<name>)")(
      "no-files", "write no output files, only the table")(
      "json", "print summary.json to stdout instead of the table")(
      "chunk-mib", po::value<std::int64_t>(&chunk_mib)->default_value(chunk_mib),
      "copy chunk size in MiB (64 measured best on H200; see bench/results/runtime-*)")(
      "pin-piece-mib", po::value<std::int64_t>(&pin_piece_mib)->default_value(pin_piece_mib),
      "the host store is pinned in pieces of this size, several threads at once")(
      "threads", po::value<int>(&threads)->default_value(0), "threads to fill and pin the host store (0: all cores)")(
      "host-memory-gib", po::value<double>(&host_memory_gib)->default_value(0),
      "host memory the weight store may assume (0: detect from cgroup limit / MemTotal)")(
      "no-verify", "skip the device checksum after each load (on by default)")(
      "execution", po::value<std::string>(&execution_kind)->default_value(execution_kind, "real on cuda, placeholder on host"),
      "real (the default on --device cuda): the models' decoders run on the GPUs (CUDA only; prompts are synthetic token ids, greedy, "
      "exactly output_tokens each); placeholder: a fixed-cost kernel stands in for each batch")(
      "max-context", po::value<int>(&max_context)->default_value(max_context),
      "real execution: prompt + output tokens per request; sizes each GPU's KV cache")(
      "checkpoint", po::value<std::vector<std::string>>(&checkpoints)->composing(),
      "real execution: NAME=FOLDER, a Hugging Face model folder (config.json + safetensors) for the model or "
      "weights label NAME; others get random weights of their shapes")(
      "placeholder-ms", po::value<double>(&placeholder_ms)->default_value(-1),
      "placeholder execution: fixed kernel time per output token; default: the simulator's cost model's times")(
      "time-limit-s", po::value<double>(&time_limit_s)->default_value(time_limit_s), "give up after this long")(
      "inject", po::value<std::vector<std::string>>(&injections)->composing(),
      "inject a fault (either device), repeatable, added to the scenario's \"faults\": fail-load=MODEL[@N], "
      "corrupt-load=MODEL[@N], fail-batch=MODEL[@N], stall=GPU:MS[@N] (the Nth occurrence, 1-based; without @N every "
      "one, a stall the first)")(
      "token-log", po::value<std::string>(&token_log_path),
      "--execution real: append every request's generated tokens to this file, one line per request (request-level "
      "batches); under mpirun each GPU rank writes FILE.rankN. Two runs' outputs compare after sorting")(
      "command-log", po::value<std::string>(&command_log_path),
      "write every command the engine gives the backend (load, evict, execute, step), one line each in issue order, "
      "to this file: two runs of one scenario compare line by line")(
      "quiet,q", "no notes on stderr (the table or --json still goes to stdout; warnings and errors still show)");
  addRankOptions(opts, rank_options);
  std::string scenario_path;
  po::variables_map vm;
  if (auto done = parseScenarioArgs(argc, argv, opts, "computron replay",
                                    "\nRuns the scenario's workload in real time: weights swap between the pinned host store and the\n"
                                    "GPUs for real, and batches run the models' real decoders (tensor parallel over NCCL, pipeline\n"
                                    "stages by send/recv) reading their weights from the swapped-in shards. With\n"
                                    "policy.layer_pipelined a batch starts while its model is still loading and runs each layer as\n"
                                    "soon as that layer's bytes have arrived. --execution placeholder (the only choice on the host\n"
                                    "device) times batches with a fixed-cost kernel instead. Writes the same files as `computron sim`\n"
                                    "(summary.json has a \"runtime\" member).\n",
                                    scenario_path, vm))
    return *done;
  if (scenario_path.empty()) return usageError("computron replay", "a scenario file is required", opts);
  // Every number bounded, so nothing is truncated or overflows further on.
  auto outside = [](double v, double lo, double hi) { return !(v >= lo && v <= hi); };
  if (outside(static_cast<double>(chunk_mib), 1, 4096)) return usageError("computron replay", "--chunk-mib: must be 1 to 4096", opts);
  if (outside(static_cast<double>(pin_piece_mib), 1, 1 << 20))
    return usageError("computron replay", "--pin-piece-mib: must be 1 to 1048576", opts);
  if (outside(threads, 0, 1024)) return usageError("computron replay", "--threads: must be 0 (all cores) to 1024", opts);
  if (outside(host_memory_gib, 0, 1 << 20))
    return usageError("computron replay", "--host-memory-gib: must be 0 (detect) to 1048576", opts);
  if (outside(time_limit_s, 1e-3, kMaxInputSeconds))
    return usageError("computron replay", "--time-limit-s: must be 0.001 to 1e7", opts);
  if (placeholder_ms != -1 && outside(placeholder_ms, 0, 1e7))
    return usageError("computron replay", "--placeholder-ms: must be 0 to 1e7", opts);
  if (outside(max_context, 1, kMaxRequestTokens))
    return usageError("computron replay", "--max-context: must be 1 to " + std::to_string(kMaxRequestTokens), opts);
  bool quiet = vm.count("quiet") > 0;
  Scenario scenario = loadScenario(scenario_path, overrides);
  // Under mpirun: rank 0 runs the engine, the others serve their GPUs (docs/runtime.md).
  RankSession ranks(rank_options, scenario.cluster.numGpus(), device);
  if (ranks.rank() != 0) quiet = true;
  if (vm.count("out")) scenario.outputs.dir = out_dir;
  if (vm.count("no-files")) scenario.outputs.dir.clear();

  // The scenario's faults, then --inject's; one plan decides for every device and the execution.
  std::vector<FaultSpec> faults = scenario.faults;
  const std::size_t scenario_faults = faults.size();
  for (FaultSpec& f : parseInjections(injections, scenario.modelNames(), scenario.cluster.numGpus()))
    faults.push_back(std::move(f));
  if (faults.size() > kMaxFaults) throw ConfigError("--inject: more than " + std::to_string(kMaxFaults) + " faults in all");
  if (vm.count("no-verify") > 0)
    for (std::size_t i = 0; i < faults.size(); ++i)
      if (faults[i].kind == FaultKind::kCorruptLoad)
        throw ConfigError((i < scenario_faults ? "$.faults[" + std::to_string(i) + "] (" + faults[i].label + ")"
                                               : "--inject " + faults[i].label) +
                          ": a corrupt load is found by the checksum, which --no-verify turns off");
  std::shared_ptr<FaultPlan> fault_plan = faults.empty() ? nullptr : std::make_shared<FaultPlan>(faults);

  RuntimeOptions options;
  options.chunk_bytes = chunk_mib * kMiB;
  options.verify_loads = vm.count("no-verify") == 0;
  options.host.threads = threads;
  options.host.pin_piece_bytes = pin_piece_mib * kMiB;
  options.host.host_memory_limit = static_cast<std::int64_t>(host_memory_gib * static_cast<double>(kGiB));
  std::string execution;
  const bool real = chooseRealExecution(execution_kind, vm["execution"].defaulted(), device);
  if (ranks.multi()) {
    if (real && !rank_options.engine_only)
      throw ConfigError("--execution real under mpirun runs the models on the GPU ranks only: add --engine-only, or use "
                        "--execution placeholder");
    if (real && scenario.engine.policy.layer_pipelined)
      throw ConfigError("--execution real under mpirun: policy.layer_pipelined (batches behind their loads) is not "
                        "supported across ranks yet; --set policy.layer_pipelined=false");
    ranks.applyToConfig(scenario.engine);
  }
  if (real) {
    RealExecutionOptions ro = realExecutionOptions(checkpoints, max_context, scenario.seed, placeholder_ms);
    ro.faults = fault_plan;
    if (!token_log_path.empty()) ro.token_log = ranks.multi() ? token_log_path + ".rank" + std::to_string(ranks.rank()) : token_log_path;
    options.execution = makeModelExecution(device, ro);
    execution = "real models on CUDA (" + std::string(ro.checkpoints.empty() ? "random weights" : "checkpoints where given") +
                ", max context " + std::to_string(max_context) + ")";
  } else if (!checkpoints.empty()) {
    throw ConfigError("--checkpoint applies to --execution real only");
  } else if (!token_log_path.empty()) {
    throw ConfigError("--token-log applies to --execution real only");
  } else if (placeholder_ms >= 0) {
    options.placeholder_step = static_cast<Nanos>(placeholder_ms * 1e6);
    execution = "placeholder fixed-cost kernel, " + std::to_string(placeholder_ms) + " ms per output token";
  } else {
    options.placeholder_cost = costModelPlaceholder(scenario);
    options.placeholder_step_cost = costModelStepPlaceholder(scenario);
    execution = "placeholder fixed-cost kernel timed by the simulator's cost model";
  }
  const std::string execution_note = real ? "execution: " + execution : "execution is a PLACEHOLDER (" + execution + ")";

  // A GPU rank under mpirun serves its devices here and leaves with its exit code.
  DeviceFactory* factory = nullptr;
  if (auto code = ranks.serveOrSetUp(device, scenario.engine, options, fault_plan, scenario.cluster.numGpus(), factory))
    return *code;
  if (!quiet) std::cerr << "replay: building the host weight store and device pools (" << device << ")...\n";
  if (!quiet && ranks.multi())
    std::cerr << "replay: " << ranks.layout().ranks << " ranks, " << ranks.layout().gpus_per_rank
              << " GPU(s) each; waiting for every rank's host store\n";
  std::unique_ptr<RealBackend> backend_owner = ranks.makeBackend(scenario.engine, *factory, device, options);
  RealBackend& backend = *backend_owner;
  std::ofstream command_log;
  if (!command_log_path.empty()) {
    command_log.open(command_log_path);
    if (!command_log) throw ConfigError("--command-log: cannot write " + command_log_path);
    backend.setCommandLog(&command_log);
  }
  const HostStoreStats& hs = backend.store().stats();
  if (!quiet)
    std::cerr << "replay: " << hs.shards << " shards, " << static_cast<double>(hs.bytes) / kGB << " GB filled in "
            << hs.fill_seconds << " s, pinned+checksummed in " << hs.pin_seconds << " s on " << hs.threads
            << " threads\n";
  if (!quiet) std::cerr << "replay: " << execution_note << "\n";

  RunRecorder recorder(scenario, device);
  LayerTimeline layers;
  RealtimeDriver driver(backend, scenario.engine, scenario.makeWorkload(), &recorder,
                        static_cast<Nanos>(time_limit_s * 1e9), &layers);
  // SIGINT/SIGTERM: no more arrivals, what was admitted drains, the files hold what ran.
  driver.stopWhen(stopRequested);
  const DriverStats stats = driver.run();

  // Per-path transfers and layer arrival onto the timeline; load statistics into the summary.
  nlohmann::json loads = nlohmann::json::array();
  std::int64_t verified = 0, failed = 0;
  double copy_seconds = 0, bytes = 0;
  std::map<GpuId, std::pair<double, double>> per_gpu;  // copy seconds, bytes of its loads
  for (const LoadRecord& r : backend.takeLoadRecords()) {
    for (const auto& p : r.paths) {
      if (p.end > r.started) {
        recorder.addTimelineSpan("gpu" + std::to_string(r.cmd.gpu) + " " + pathKindName(p.kind) + " via gpu" +
                                     std::to_string(p.via),
                                 "model " + std::to_string(r.cmd.model) + " shard " + std::to_string(r.cmd.shard),
                                 r.started, p.end, {{"bytes", p.bytes}});
      }
    }
    auto it = layers.spans_.find(r.cmd.op);
    if (it != layers.spans_.end()) {
      recorder.addTimelineSpan("gpu" + std::to_string(r.cmd.gpu) + " layers ready", "model " + std::to_string(r.cmd.model),
                               it->second.first, it->second.last, {{"layers", it->second.count}});
    }
    verified += r.verified ? 1 : 0;
    failed += r.ok ? 0 : 1;
    if (r.ok && r.copy_done > r.started) {
      copy_seconds += toSeconds(r.copy_done - r.started);
      per_gpu[r.cmd.gpu].first += toSeconds(r.copy_done - r.started);
      per_gpu[r.cmd.gpu].second += static_cast<double>(r.cmd.bytes);
      bytes += static_cast<double>(r.cmd.bytes);
    }
    loads.push_back({{"model", r.cmd.model},
                     {"shard", r.cmd.shard},
                     {"gpu", r.cmd.gpu},
                     {"bytes", r.cmd.bytes},
                     {"issued_ns", r.issued},
                     {"copy_done_ns", r.copy_done},
                     {"done_ns", r.done},
                     {"ok", r.ok},
                     {"verified", r.verified},
                     {"error", r.error}});
  }
  std::vector<std::string> fault_labels;
  for (const FaultSpec& f : faults) fault_labels.push_back(f.label);
  std::vector<std::string> devices;
  for (int g = 0; g < backend.numGpus(); ++g) devices.push_back(backend.device(g).describe());
  nlohmann::json extra = {
      {"runtime",
       {{"device", device},
        {"devices", devices},
        {"execution", execution},
        {"chunk_bytes", options.chunk_bytes},
        {"verify_loads", options.verify_loads},
        {"loads", loads.size()},
        {"loads_verified", verified},
        {"loads_failed", failed},
        {"mean_shard_load_gbps", copy_seconds > 0 ? bytes / copy_seconds / kGB : 0.0},
        {"mean_shard_load_gbps_per_gpu", [&] {
           nlohmann::json g = nlohmann::json::object();
           for (const auto& [gpu, sb] : per_gpu)
             if (sb.first > 0) g[std::to_string(gpu)] = sb.second / sb.first / kGB;
           return g;
         }()},
        {"compactions", backend.compactions()},
        {"faults", fault_labels},
        {"host_store",
         {{"bytes", hs.bytes}, {"fill_s", hs.fill_seconds}, {"pin_s", hs.pin_seconds}, {"threads", hs.threads}}},
        {"arrivals", stats.arrivals}}}};
  if (ranks.multi()) extra["runtime"]["ranks"] = ranks.summary();
  nlohmann::json summary = recorder.finish(stats.end_time, extra);
  // Every request that arrived ended exactly once: served, or failed (or refused) with its reason.
  const nlohmann::json& overall = summary["overall"];
  if (overall["requests"].get<std::int64_t>() != stats.arrivals ||
      overall["served"].get<std::int64_t>() + overall["failed"].get<std::int64_t>() != stats.arrivals)
    throw std::logic_error("replay: " + std::to_string(stats.arrivals) + " requests arrived but " +
                           overall["requests"].dump() + " ended (" + overall["served"].dump() + " served, " +
                           overall["failed"].dump() + " failed)");
  if (vm.count("json")) {
    std::cout << summary.dump(2) << "\n";
  } else {
    recorder.printTable(summary, std::cout);
    std::cout << "runtime: " << device << ", " << loads.size() << " loads (" << verified << " checksum-verified, "
              << failed << " failed), mean shard load " << extra["runtime"]["mean_shard_load_gbps"].get<double>()
              << " GB/s; " << execution_note << "\n";
  }
  if (stopRequested()) {
    std::cerr << "computron replay: interrupted (signal " << stopSignal() << "); the outputs hold what ran\n";
    return 128 + stopSignal();
  }
  // A lost rank: every request was answered (the check above), but the run lost GPUs.
  bool rank_lost = false;
  if (ranks.multi()) {
    for (const auto& r : extra["runtime"]["ranks"]) {
      if (!r["lost"].get<bool>()) continue;
      rank_lost = true;
      std::cerr << "computron replay: " << r["reason"].get<std::string>()
                << "; requests that needed its GPUs failed with that reason, the other ranks served on\n";
    }
  }
  if (rank_lost) return 1;
  // Injected faults are meant to fail loads; the run succeeds when every request was accounted for.
  return failed == 0 || !faults.empty() ? 0 : 1;
}

}  // namespace computron::runtime
