// computron bench serve: the scenario's request stream sent to a running server (`computron serve`
// or any OpenAI-compatible one taking token-id prompts) at its arrival times, open loop, streamed;
// writes the same requests.csv and summary.json as `computron sim` and `replay`, with the times
// seen from the client (docs/serving.md).
#include <boost/program_options.hpp>

#include <algorithm>
#include <iostream>

#include "common/scenario/cli_args.h"
#include "common/scenario/run_recorder.h"
#include "common/scenario/scenario.h"
#include "runtime/cli/cli.h"
#include "runtime/server/load_generator.h"
#include "runtime/server/server.h"

namespace po = boost::program_options;

namespace computron::runtime {

int benchServeMain(int argc, char** argv) {
  po::options_description opts("computron bench serve --url URL SCENARIO.json [options]");
  std::vector<std::string> overrides;
  std::string url, out_dir, api_key;
  double time_limit_s = 600;
  int threads = 2;
  int connections = 0;
  opts.add_options()("help,h", "show this help")("url", po::value<std::string>(&url),
                                                   "the server, http://HOST:PORT (required)")(
      "set", po::value<std::vector<std::string>>(&overrides)->composing(), "override a scenario field, as for `computron sim`")(
      "api-key", po::value<std::string>(&api_key), "sent as \"Authorization: Bearer KEY\"")(
      "out,o", po::value<std::string>(&out_dir), "output folder (default: the scenario's outputs.dir, else out/<name>)")(
      "no-files", "write no output files, only the table")("json", "print summary.json to stdout instead of the table")(
      "threads", po::value<int>(&threads)->default_value(threads), "client threads")(
      "connections", po::value<int>(&connections)->default_value(connections),
      "a pool of N keep-alive connections, each sending its requests in turn (0: a connection per request)")(
      "time-limit-s", po::value<double>(&time_limit_s)->default_value(time_limit_s), "give up after this long");
  std::string scenario_path;
  po::variables_map vm;
  if (auto done = parseScenarioArgs(argc, argv, opts, "computron bench serve",
                                    "\nSends the scenario's workload to the server at --url at its arrival times (open loop), each\n"
                                    "request a streamed POST /v1/completions with synthetic token-id prompts of the workload's\n"
                                    "lengths and max_tokens = its output tokens. Latency and time to first token are measured\n"
                                    "at the client. Writes requests.csv and summary.json as `computron sim` does.\n",
                                    scenario_path, vm))
    return *done;
  if (scenario_path.empty()) return usageError("computron bench serve", "a scenario file is required", opts);
  if (url.empty()) return usageError("computron bench serve", "--url is required", opts);
  if (threads < 1) return usageError("computron bench serve", "--threads: at least 1", opts);
  if (connections < 0 || connections > 100000)
    return usageError("computron bench serve", "--connections: 0 to 100000", opts);
  if (const std::string warning = server::raiseOpenFileLimit(static_cast<std::size_t>(connections)); !warning.empty())
    std::cerr << "bench serve: " << warning << "\n";
  server::LoadTarget target = server::parseUrl(url);
  target.api_key = api_key;
  Scenario scenario = loadScenario(scenario_path, overrides);
  if (vm.count("out")) scenario.outputs.dir = out_dir;
  if (vm.count("no-files")) scenario.outputs.dir.clear();
  server::LoadOptions lo;
  for (const auto& m : scenario.engine.models) {
    lo.model_names.push_back(m.name);
    lo.vocab.push_back(m.spec.vocab);
  }
  lo.threads = threads;
  lo.connections = connections;
  lo.time_limit = static_cast<Nanos>(time_limit_s * 1e9);
  RunRecorder recorder(scenario, "bench serve " + url);
  auto source = scenario.makeWorkload();
  const server::LoadStats stats = server::runLoad(target, *source, lo, [&](const RequestRecord& r) { recorder.onRequestDone(r); });
  // What the HTTP front adds: the client's latency minus the server's own (computron.latency_ms).
  std::vector<Nanos> added = stats.added_latency;
  std::sort(added.begin(), added.end());
  auto quantileMs = [&](double q) -> nlohmann::json {
    if (added.empty()) return nullptr;
    const auto i = static_cast<std::size_t>(q * static_cast<double>(added.size() - 1) + 0.5);
    return static_cast<double>(added[std::min(i, added.size() - 1)]) / 1e6;
  };
  nlohmann::json statuses = nlohmann::json::object();
  for (const auto& [code, count] : stats.statuses) statuses[std::to_string(code)] = count;
  const nlohmann::json extra = {{"bench_serve",
                                 {{"url", url},
                                  {"sent", stats.sent},
                                  {"ok", stats.ok},
                                  {"failed", stats.failed},
                                  {"tokens_received", stats.tokens},
                                  {"http_statuses", statuses},
                                  {"connections", connections},
                                  {"max_backlog", stats.max_backlog},
                                  {"connects", stats.connects},
                                  {"unanswered", stats.unanswered},
                                  {"answered_twice", stats.answered_twice},
                                  {"exactly_once", stats.exactlyOnce()},
                                  {"added_latency_ms",
                                   {{"count", added.size()}, {"p50", quantileMs(0.5)}, {"p99", quantileMs(0.99)},
                                    {"max", quantileMs(1.0)}}},
                                  {"note", "times measured at the client; no swap counts (the server's /metrics has them)"}}}};
  const nlohmann::json summary = recorder.finish(stats.end, extra);
  if (vm.count("json")) {
    std::cout << summary.dump(2) << "\n";
  } else {
    recorder.printTable(summary, std::cout);
    std::cout << "bench serve: " << stats.sent << " sent, " << stats.ok << " ok, " << stats.failed << " failed, "
              << stats.tokens << " tokens received\n";
    std::cout << "bench serve: exactly once: " << (stats.exactlyOnce() ? "yes" : "NO") << " (" << stats.unanswered
              << " unanswered, " << stats.answered_twice << " answered twice)\n";
    if (!added.empty())
      std::cout << "bench serve: added latency (client - server's computron.latency_ms): p50 " << quantileMs(0.5).dump()
                << " ms, p99 " << quantileMs(0.99).dump() << " ms over " << added.size() << " requests\n";
  }
  return stats.failed == 0 && stats.exactlyOnce() ? 0 : 1;
}

}  // namespace computron::runtime
