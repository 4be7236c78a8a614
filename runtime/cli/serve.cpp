// computron serve: the scenario's cluster, models, placement and policy behind an OpenAI-compatible
// HTTP endpoint (runtime/server/, docs/serving.md). The scenario's workload is not used: requests
// come from clients.
#include <boost/program_options.hpp>

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "common/cost_model.h"
#include "common/scenario/cli_args.h"
#include "common/scenario/scenario.h"
#include "runtime/cli/cli.h"
#include "runtime/cli/execution_choice.h"
#include "runtime/cli/ranks.h"
#include "runtime/device_factory.h"
#include "runtime/fault_plan.h"
#include "runtime/real_backend.h"
#include "runtime/server/server.h"

namespace po = boost::program_options;

namespace computron::runtime {

int serveMain(int argc, char** argv) {
  po::options_description opts("computron serve SCENARIO.json [options]");
  std::vector<std::string> overrides, checkpoints, tokenizers;
  std::string device = cudaBuiltIn() ? "cuda" : "host";
  std::string execution_kind = cudaBuiltIn() ? "real" : "placeholder";
  server::ServerOptions so;
  int port = so.port, max_context = 1024;
  double host_memory_gib = 0, placeholder_ms = -1;
  std::size_t max_body = so.max_body_bytes;
  opts.add_options()("help,h", "show this help")(
      "set", po::value<std::vector<std::string>>(&overrides)->composing(),
      "override a scenario field, as for `computron sim`: --set policy.eviction=lfu")(
      "host", po::value<std::string>(&so.host)->default_value(so.host),
      "address to listen on (an IP address; 0.0.0.0 for every interface)")(
      "port", po::value<int>(&port)->default_value(port), "TCP port (0: any free port, printed at start)")(
      "api-key", po::value<std::string>(&so.api_key),
      "require \"Authorization: Bearer KEY\" on /v1/* (/health and /metrics stay open)")(
      "device", po::value<std::string>(&device)->default_value(device),
      "cuda: the machine's GPUs; host: the host-memory device (memcpy on threads, no GPU)")(
      "execution", po::value<std::string>(&execution_kind)->default_value(execution_kind, "real on cuda, placeholder on host"),
      "real: the models' decoders on the GPUs; placeholder: a fixed-cost stand-in timed by the cost model (token ids "
      "are then placeholders, see docs/serving.md)")(
      "placeholder-ms", po::value<double>(&placeholder_ms)->default_value(-1),
      "placeholder execution: fixed time per output token; default: the simulator's cost model's times")(
      "max-context", po::value<int>(&max_context)->default_value(max_context),
      "real execution: prompt + output tokens per request; sizes each GPU's KV cache")(
      "checkpoint", po::value<std::vector<std::string>>(&checkpoints)->composing(),
      "real execution: NAME=FOLDER, a Hugging Face model folder for the model or weights label NAME")(
      "tokenizer", po::value<std::vector<std::string>>(&tokenizers)->composing(),
      "NAME=FOLDER: the tokenizer (tokenizer.json, tokenizer_config.json, chat template) of the model or weights "
      "label NAME, for text prompts and outputs; a --checkpoint folder with a tokenizer.json gives its own")(
      "host-memory-gib", po::value<double>(&host_memory_gib)->default_value(0),
      "host memory the weight store may assume (0: detect)")(
      "max-body-bytes", po::value<std::size_t>(&max_body)->default_value(max_body), "largest request body (413 beyond)")(
      "max-queued", po::value<int>(&so.loop.max_pending_per_model)->default_value(so.loop.max_pending_per_model),
      "requests accepted and not yet answered, per model (429 with Retry-After beyond)")(
      "http-threads", po::value<int>(&so.http_threads)->default_value(so.http_threads), "threads serving connections")(
      "max-connections", po::value<int>(&so.max_connections)->default_value(so.max_connections),
      "open connections at most (503 and closed beyond)")(
      "request-timeout-s", po::value<int>(&so.request_timeout_s)->default_value(so.request_timeout_s),
      "a completion not finished this long is cancelled and answered 504 (0: no limit)")(
      "quiet,q", "no notes on stderr");
  RankOptions rank_options;
  addRankOptions(opts, rank_options);
  std::string scenario_path;
  po::variables_map vm;
  if (auto done = parseScenarioArgs(argc, argv, opts, "computron serve",
                                    "\nServes the scenario's models over HTTP, OpenAI-compatible: POST /v1/completions and\n"
                                    "/v1/chat/completions (token ids, or text with a tokenizer), GET /v1/models (with residency),\n"
                                    "GET /health, GET /metrics (Prometheus), POST /v1/models/NAME/load. SIGINT or SIGTERM\n"
                                    "drains: accepted requests are answered, then the server exits 130 or 143. See docs/serving.md.\n",
                                    scenario_path, vm))
    return *done;
  if (scenario_path.empty()) return usageError("computron serve", "a scenario file is required", opts);
  if (port < 0 || port > 65535) return usageError("computron serve", "--port: expected 0..65535", opts);
  if (so.loop.max_pending_per_model < 1) return usageError("computron serve", "--max-queued: at least 1", opts);
  if (so.http_threads < 1) return usageError("computron serve", "--http-threads: at least 1", opts);
  if (so.max_connections < 1) return usageError("computron serve", "--max-connections: at least 1", opts);
  if (so.request_timeout_s < 0) return usageError("computron serve", "--request-timeout-s: 0 or more", opts);
  so.port = static_cast<unsigned short>(port);
  so.max_body_bytes = max_body;
  so.handle_signals = true;
  bool quiet = vm.count("quiet") > 0;

  Scenario scenario = loadScenario(scenario_path, overrides);
  // Under mpirun: rank 0 runs the engine and the HTTP server, the others serve their GPUs.
  RankSession ranks(rank_options, scenario.cluster.numGpus(), device);
  if (ranks.rank() != 0) quiet = true;
  ranks.applyToConfig(scenario.engine);
  // Text: each model's tokenizer folder, from --tokenizer, else its --checkpoint folder when that
  // has a tokenizer.json. NAME is a model name or a weights label, as for --checkpoint.
  {
    std::map<std::string, std::string> folders;
    auto split = [](const std::string& option, const std::string& value) {
      const auto eq = value.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == value.size())
        throw ConfigError("--" + option + " '" + value + "': expected NAME=FOLDER");
      return std::make_pair(value.substr(0, eq), value.substr(eq + 1));
    };
    for (const auto& c : checkpoints) {
      auto [name, folder] = split("checkpoint", c);
      if (std::filesystem::exists(folder + "/tokenizer.json")) folders[name] = folder;
    }
    for (const auto& t : tokenizers) {
      auto [name, folder] = split("tokenizer", t);
      if (!std::filesystem::exists(folder + "/tokenizer.json"))
        throw ConfigError("--tokenizer " + t + ": " + folder + "/tokenizer.json does not exist");
      folders[name] = folder;
    }
    std::map<std::string, std::shared_ptr<const server::TextModel>> loaded;
    for (const auto& [name, folder] : folders) {
      bool used = false;
      for (const ModelDeployment& d : scenario.engine.models) used = used || d.name == name || d.weights == name;
      if (!used) throw ConfigError("--tokenizer/--checkpoint " + name + ": no model or weights label of that name in the scenario");
      loaded[name] = server::loadTextModel(folder);
    }
    so.loop.eos_ids.assign(scenario.engine.models.size(), {});
    for (std::size_t m = 0; m < scenario.engine.models.size(); ++m) {
      const ModelDeployment& d = scenario.engine.models[m];
      auto it = loaded.find(d.name);
      if (it == loaded.end()) it = loaded.find(d.weights);
      if (it == loaded.end()) continue;
      if (it->second->tokenizer.vocabSize() > d.spec.vocab && !quiet)
        std::cerr << "serve: the tokenizer of " << d.name << " has " << it->second->tokenizer.vocabSize()
                  << " ids, the model " << d.spec.vocab << "; prompts with ids beyond the model's are refused\n";
      so.text[d.name] = it->second;
      if (auto eos = it->second->tokenizer.eosId()) so.loop.eos_ids[m].push_back(*eos);
      if (!quiet)
        std::cerr << "serve: " << d.name << ": tokenizer " << it->second->folder << ", chat template "
                  << (it->second->chat_template ? "the model's" : "plain") << "\n";
    }
  }
  if (scenario.engine.policy.needsFuture()) {
    throw ConfigError("serve: the scenario's policy reads the future (belady eviction or oracle prefetch), which a "
                      "server does not know; choose an online policy with --set");
  }
  // The scenario's faults (docs/scenario.md) act as in `replay`.
  std::shared_ptr<runtime::FaultPlan> fault_plan =
      scenario.faults.empty() ? nullptr : std::make_shared<runtime::FaultPlan>(scenario.faults);
  RuntimeOptions options;
  options.host.host_memory_limit = static_cast<std::int64_t>(host_memory_gib * static_cast<double>(kGiB));
  std::string execution;
  const bool real = chooseRealExecution(execution_kind, vm["execution"].defaulted(), device);
  if (real && ranks.multi() && !rank_options.engine_only)
    throw ConfigError("--execution real under mpirun runs the models on the GPU ranks only: add --engine-only, or use "
                      "--execution placeholder");
  if (real && ranks.multi() && scenario.engine.policy.layer_pipelined)
    throw ConfigError("--execution real under mpirun: policy.layer_pipelined (batches behind their loads) is not "
                      "supported across ranks yet; --set policy.layer_pipelined=false");
  if (real) {
    RealExecutionOptions ro = realExecutionOptions(checkpoints, max_context, scenario.seed, placeholder_ms);
    ro.faults = fault_plan;
    ro.tokens = std::make_shared<TokenChannel>();
    so.loop.tokens = ro.tokens;
    so.loop.max_context = max_context;
    options.execution = makeModelExecution(device, ro);
    execution = "real models (the decoders' own tokens, streamed per decode step)";
  } else {
    if (!checkpoints.empty()) throw ConfigError("--checkpoint applies to --execution real only");
    std::function<PlaceholderTimes(const ExecuteCommand&)> cost_fn;
    if (placeholder_ms >= 0) {
      const Nanos step = static_cast<Nanos>(placeholder_ms * 1e6);
      cost_fn = [step](const ExecuteCommand& cmd) {
        PlaceholderTimes t;
        t.first_token = step;
        for (const auto& r : cmd.requests) t.finish.push_back(step * std::max(1, r.output_tokens));
        return t;
      };
      options.placeholder_step_cost = [step](const StepCommand&) { return step; };
    } else {
      cost_fn = costModelPlaceholder(scenario);
      options.placeholder_step_cost = costModelStepPlaceholder(scenario);  // iteration batching's steps
    }
    options.placeholder_cost = cost_fn;
    so.loop.predicted_times = cost_fn;
    execution = "PLACEHOLDER (fixed-cost stand-in; token ids are deterministic placeholders)";
  }
  // A GPU rank under mpirun serves its devices here and leaves with its exit code.
  DeviceFactory* factory = nullptr;
  if (auto code = ranks.serveOrSetUp(device, scenario.engine, options, fault_plan, scenario.cluster.numGpus(), factory))
    return *code;
  if (!quiet) std::cerr << "serve: building the host weight store and device pools (" << device << ")...\n";
  std::unique_ptr<RealBackend> backend_owner = ranks.makeBackend(scenario.engine, *factory, device, options);
  RealBackend& backend = *backend_owner;
  server::HttpServer http(scenario.engine, backend, so);
  // The port line goes to stdout, so a script can read the port chosen for --port 0.
  std::cout << "serve: listening on http://" << so.host << ":" << http.port() << " (" << scenario.engine.models.size()
            << " models, execution " << execution << ")" << std::endl;
  if (!quiet && fault_plan) std::cerr << "serve: " << scenario.faults.size() << " injected faults (the scenario's faults)\n";
  http.run();
  if (const int signal = http.stopSignal(); signal != 0) {
    // Drained after SIGINT/SIGTERM: every accepted request was answered; the exit code says why it ended.
    if (!quiet) std::cerr << "serve: drained after signal " << signal << ", exiting\n";
    return 128 + signal;
  }
  if (!quiet) std::cerr << "serve: drained, exiting\n";
  return 0;
}

}  // namespace computron::runtime
