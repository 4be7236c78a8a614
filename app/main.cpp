// computron: one executable, subcommands for the simulator and the GPU runtime.
#include <boost/program_options.hpp>

#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/scenario/cli_args.h"
#include "common/scenario/interrupt.h"
#include "common/scenario/output_files.h"
#include "common/scenario/progress.h"
#include "common/core/policy.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"
#include "sim/compare.h"
#include "sim/profile_tool.h"
#include "sim/sweep.h"

namespace po = boost::program_options;
using namespace computron;

namespace {

constexpr int kExitUsage = 2;

// Thrown where a stop request makes finishing pointless (a workload file cut short).
struct Interrupted {};

void printUsage(std::ostream& out) {
  out << "computron " << COMPUTRON_VERSION << ": serve many large models from one GPU cluster by swapping them\n"
      << "\n"
      << "usage: computron <command> [options]\n"
      << "\n"
      << "commands:\n"
      << "  sim [SCENARIO.json]    simulate a scenario (no file: the embedded default scenario)\n"
      << "  sweep SWEEP.json       compare policy sets over a grid of scenarios, in parallel (CSV + table)\n"
      << "  replay SCENARIO.json   run a scenario on real GPUs (or the host-memory device)\n"
      << "  bench swap             measure model-parallel swapping on this machine's GPUs\n"
      << "  serve SCENARIO.json    an OpenAI-compatible HTTP server over the swapping runtime\n"
      << "  calibrate [SCENARIO]   measure batch, decode and load times on this machine's GPUs into a profile\n"
      << "  compare A B            relative error between two runs' outputs (e.g. GPU replay against sim)\n"
      << "  profile SUBCOMMAND     what a profile covers (show), calibrate runs in one (merge), two compared (diff)\n"
      << "  presets                list model and cluster presets and the registered policies\n"
      << "\n"
      << "Run 'computron <command> --help' for a command's options. Docs: README.md, docs/scenario.md.\n";
}

#if COMPUTRON_RUNTIME_LINKED
}  // namespace
// The runtime linked in (a static-Boost build, or COMPUTRON_RUNTIME_MODULE=OFF).
extern "C" int computron_runtime_run(int argc, char** argv, computron::StopFlag* stop_flag);
namespace {

int runtimeMain(int argc, char** argv) { return computron_runtime_run(argc, argv, stopFlag()); }
#else
// The folder of the running executable ("" when /proc/self/exe cannot be read).
std::string executableDir() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  std::string path(buf.data(), static_cast<std::size_t>(n));
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// `replay` and `bench` live in the runtime module (CUDA, cuBLAS, NCCL where built), loaded only
// when one of them runs. It is looked up beside the executable, then in ../lib, or where
// COMPUTRON_RUNTIME_MODULE_PATH says.
int runtimeMain(int argc, char** argv) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("COMPUTRON_RUNTIME_MODULE_PATH"); env != nullptr && *env != '\0') {
    candidates.emplace_back(env);
  } else {
    const std::string dir = executableDir();
    candidates.push_back(dir + "/" COMPUTRON_RUNTIME_MODULE_FILE);
    candidates.push_back(dir + "/../lib/" COMPUTRON_RUNTIME_MODULE_FILE);
  }
  std::string errors;
  for (const std::string& path : candidates) {
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      errors += "\n  " + std::string(dlerror());
      continue;
    }
    // The module reads this executable's stop flag (SIGINT/SIGTERM), not its own copy's.
    using EntryPoint = int (*)(int, char**, StopFlag*);
    auto entry = reinterpret_cast<EntryPoint>(dlsym(handle, "computron_runtime_run"));
    if (entry == nullptr) {
      std::cerr << "computron " << argv[0] << ": " << path << " has no entry point computron_runtime_run\n";
      return 1;
    }
    return entry(argc, argv, stopFlag());  // the module stays loaded until exit: its worker threads end first
  }
  std::cerr << "computron " << argv[0] << ": the GPU runtime module could not be loaded (set "
            << "COMPUTRON_RUNTIME_MODULE_PATH to its file):" << errors << "\n";
  return 1;
}
#endif

int simMain(int argc, char** argv) {
  po::options_description opts("computron sim [SCENARIO.json] [options]");
  std::vector<std::string> overrides;
  std::string out_dir, write_workload;
  double progress_every_s = 10;
  opts.add_options()("help,h", "show this help")(
      "set", po::value<std::vector<std::string>>(&overrides)->composing(),
      "override a scenario field: --set workload.cv=4 --set models[0].tp=2 (value parsed as JSON, else string)")(
      "out,o", po::value<std::string>(&out_dir), "output folder (default: the scenario's outputs.dir, else out/<name>)")(
      "no-files", "write no output files, only the table")(
      "write-workload", po::value<std::string>(&write_workload),
      "also save the generated request stream as CSV, replayable with {\"type\":\"trace\",\"format\":\"computron\"}")(
      "json", "print summary.json to stdout instead of the table")(
      "quiet,q", "no progress or other notes on stderr (the table or --json still goes to stdout)")(
      "progress-every", po::value<double>(&progress_every_s)->default_value(progress_every_s),
      "seconds between progress lines when stderr is not a terminal (on a terminal one line is redrawn)");
  std::string scenario_path;
  po::variables_map vm;
  if (auto done = parseScenarioArgs(argc, argv, opts, "computron sim",
                                    "\nWrites summary.json, requests.csv and timeline.json (Chrome trace; open in ui.perfetto.dev).\n"
                                    "The same scenario and seed give byte-identical files.\n",
                                    scenario_path, vm))
    return *done;
  if (progress_every_s < 0) return usageError("computron sim", "--progress-every: must be 0 or greater", opts);
  const bool quiet = vm.count("quiet") > 0;
  Scenario scenario;
  if (scenario_path.empty()) {
    nlohmann::json doc = defaultScenarioJson();
    for (const auto& o : overrides) applyOverride(doc, o);
    scenario = parseScenario(doc, ".");
  } else {
    scenario = loadScenario(scenario_path, overrides);
  }
  if (vm.count("out")) {
    if (out_dir.empty()) return usageError("computron sim", "--out: must not be empty", opts);
    scenario.outputs.dir = out_dir;
  }
  if (vm.count("no-files")) scenario.outputs.dir.clear();
  // The simulator has no faults: a scenario shared with `replay` runs here without them.
  if (!scenario.faults.empty())
    std::cerr << "warning: $.faults: the simulator ignores the scenario's " << scenario.faults.size()
              << " fault(s); they apply to `computron replay` and `computron serve` only\n";
  if (!write_workload.empty()) {
    checkOutputFilePath(write_workload, "--write-workload");
    std::int64_t rows = 0;
    writeFileWhole(write_workload, [&](std::ostream& out) {
      auto source = scenario.makeWorkload();
      rows = writeWorkloadCsv(*source, scenario.modelNames(), out);
      if (stopRequested()) throw Interrupted();  // a cut stream is not saved
    });
    if (!quiet) std::cerr << "wrote " << rows << " requests to " << write_workload << "\n";
  }
  // Progress by simulated time against the duration (the drain after it shows as 100%); a whole
  // trace (duration 0) shows simulated time and requests only.
  ProgressReporter::Options display;
  display.label = "sim";
  display.unit = "s simulated";
  display.rate_unit = "x real time";
  display.total = toSeconds(scenario.duration);
  display.decimals = 1;
  display.line_interval_s = progress_every_s;
  ProgressReporter progress = ProgressReporter::forStderr(display, quiet);
  sim::SimOptions options;
  if (progress.mode() != ProgressReporter::Mode::kOff) {
    const Nanos duration = scenario.duration;
    options.progress = [&progress, duration](const sim::SimProgress& p) {
      // Arrivals stop at the duration; the run may end a little before it (all served) or after it.
      const Nanos shown = duration > 0 ? (p.finished ? duration : std::min(p.now, duration)) : p.now;
      std::string note = std::to_string(p.completed) + " requests completed";
      if (duration > 0 && p.now > duration && !p.finished) note += ", draining queues";
      progress.update(toSeconds(shown), note);
      if (p.finished) progress.finish();  // before the table goes to stdout
    };
  }
  nlohmann::json summary = sim::runScenario(scenario, vm.count("json") ? nullptr : &std::cout, options);
  if (vm.count("json")) std::cout << summary.dump(2) << "\n";
  // A profile that did not cover a model, or a shape it extrapolated, is said where it is seen.
  if (summary.contains("timing"))
    for (const auto& warning : summary["timing"]["warnings"]) std::cerr << "warning: " << warning.get<std::string>() << "\n";
  if (stopRequested()) {
    std::cerr << "computron sim: interrupted (signal " << stopSignal() << "); the outputs hold what ran\n";
    return 128 + stopSignal();
  }
  return 0;
}

int presetsMain() {
  std::cout << "model presets:\n";
  for (const auto& name : modelPresetNames()) {
    ModelSpec m = modelPreset(name);
    std::cout << "  " << name << ": " << m.num_layers << " layers, hidden " << m.hidden << ", " << m.totalParams()
              << " parameters, " << m.totalBytes() << " bytes (" << dtypeName(m.dtype) << ")\n";
  }
  std::cout << "cluster presets:\n";
  for (const auto& name : clusterPresetNames()) {
    ClusterSpec c = clusterPreset(name);
    std::cout << "  " << name << ": " << c.numGpus() << " x " << c.gpus.front().name << "\n";
  }
  for (const auto& kind : registeredPolicies()) {
    std::cout << kind.title << " (" << kind.field << "):\n";
    for (const auto& policy : kind.policies) std::cout << "  " << policy.name << ": " << policy.description << "\n";
  }
  return 0;
}

// `computron presets` takes no arguments but --help; parsed like every other command.
int presetsCommand(int argc, char** argv) {
  po::options_description opts("computron presets");
  opts.add_options()("help,h", "show this help");
  po::variables_map vm;
  if (auto done = parseCommandArgs(argc, argv, opts, "computron presets",
                                   "\nLists the model, cluster and policy presets a scenario may name (docs/specs.md).\n", {}, vm))
    return *done;
  return presetsMain();
}

int dispatch(int argc, char** argv) {
  if (argc < 2) {
    printUsage(std::cerr);
    return kExitUsage;
  }
  std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    printUsage(std::cout);
    return 0;
  }
  if (command == "--version" || command == "version") {
    std::cout << "computron " << COMPUTRON_VERSION << "\n";
    return 0;
  }
  if (command == "sim") return simMain(argc - 1, argv + 1);
  if (command == "sweep") return sim::sweepMain(argc - 1, argv + 1);
  if (command == "presets") return presetsCommand(argc - 1, argv + 1);
  if (command == "compare") return sim::compareMain(argc - 1, argv + 1);
  if (command == "profile") return sim::profileMain(argc - 1, argv + 1);
  if (command == "replay" || command == "bench" || command == "serve" || command == "calibrate") return runtimeMain(argc - 1, argv + 1);
  std::cerr << "computron: unknown command '" << command << "'\n\n";
  printUsage(std::cerr);
  return kExitUsage;
}

}  // namespace

// A crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) prints the stack before the process dies by
// the same signal: frames as `binary(+offset)`, for addr2line on an unstripped copy of the same
// build. Left to the sanitizers in sanitized builds.
static void onCrash(int sig) {
  static const char head[] = "computron: fatal signal; stack (addr2line -f -C -e BINARY OFFSET):\n";
  (void)!write(STDERR_FILENO, head, sizeof head - 1);
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  signal(sig, SIG_DFL);
  raise(sig);
}

static void installCrashHandlers() {
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  void* warm[1];
  backtrace(warm, 1);  // loads libgcc's unwinder now, not inside the handler
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) signal(sig, onCrash);
#endif
}

int main(int argc, char** argv) {
  // CUDA loads a kernel's module lazily, at its first launch, by default. A first launch during a
  // weight load waits behind the load's copies: on one H200 the first load of a run took 20 ms
  // more and the first batch 11 ms more than later ones. Eager loading moves that cost to context
  // creation (about 4 s in one replay). Read when CUDA initialises, so set before any CUDA call; a value
  // the user set stands.
  setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  installCrashHandlers();
  installStopHandlers();
  try {
    return dispatch(argc, argv);
  } catch (const ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const Interrupted&) {
    std::cerr << "computron: interrupted (signal " << stopSignal() << "); nothing written\n";
    return 128 + stopSignal();
  } catch (const OutputError& e) {
    std::cerr << "computron: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "computron: " << e.what() << "\n";
    return 1;
  }
}
