// Simulator throughput: raw event-queue operations, and whole simulations of the seed's
// six-model workload (4 resident, batch 32, TP 2 x PP 2, Gamma CV 4) up to a million requests.
// Peak resident memory is reported beside each size to show it stays flat in the request count.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <filesystem>

#include "common/scenario/scenario.h"
#include "sim/event_queue.h"
#include "sim/simulator.h"

namespace computron {
namespace {

void BM_EventQueuePushPop(benchmark::State& state) {
  const auto depth = static_cast<std::uint64_t>(state.range(0));
  sim::EventQueue q;
  std::uint64_t x = 88172645463325252ULL;
  for (std::uint64_t i = 0; i < depth; ++i) q.push(static_cast<Nanos>(i * 7919 % 100003), sim::EventKind::kArrival, i);
  for (auto _ : state) {
    sim::Event e = q.pop();
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    q.push(e.time + static_cast<Nanos>(x % 1000000), sim::EventKind::kArrival, e.a);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventQueuePushPop)->Arg(64)->Arg(4096);

long peakRssKiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

Scenario sixModelScenario(std::int64_t requests, bool write_files) {
  // Rates (10, 10, 10, 10, 1, 1) req/s: 42 req/s in all.
  const double total_rate = 42;
  nlohmann::json doc = nlohmann::json::parse(R"({
    "name": "bench-6models-cv4",
    "seed": 1,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "opt-13b", "spec": "opt-13b", "count": 6, "tp": 2, "pp": 2, "gpus": "all", "max_batch": 32}],
    "workload": {"type": "gamma", "rates": [10, 10, 10, 10, 1, 1], "cv": 4, "prompt_tokens": 64, "output_tokens": 1},
    "policy": {"name": "computron", "max_loaded_models": 4},
    "slo_ms": 1000
  })");
  doc["duration_s"] = static_cast<double>(requests) / total_rate;
  doc["outputs"] = {{"dir", write_files ? (std::filesystem::temp_directory_path() / "computron-bench").string() : ""}};
  return parseScenario(doc, ".");
}

void BM_SimulateSixModels(benchmark::State& state) {
  const std::int64_t requests = state.range(0);
  const bool write_files = state.range(1) != 0;
  Scenario scenario = sixModelScenario(requests, write_files);
  std::int64_t served = 0;
  std::uint64_t events = 0;
  for (auto _ : state) {
    nlohmann::json summary = sim::runScenario(scenario, nullptr);
    served = summary["overall"]["requests"].get<std::int64_t>();
    events = summary["simulator"]["events"].get<std::uint64_t>();
  }
  state.counters["requests"] = static_cast<double>(served);
  state.counters["events"] = static_cast<double>(events);
  state.counters["requests_per_s"] =
      benchmark::Counter(static_cast<double>(served) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["peak_rss_MiB"] = static_cast<double>(peakRssKiB()) / 1024.0;
  if (write_files) std::filesystem::remove_all(std::filesystem::temp_directory_path() / "computron-bench");
}
// Sizes grow 10x; peak RSS should not. Files: 0 = table only, 1 = summary, requests.csv, timeline.
BENCHMARK(BM_SimulateSixModels)
    ->Args({10000, 0})
    ->Args({100000, 0})
    ->Args({1000000, 0})
    ->Args({1000000, 1})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

}  // namespace
}  // namespace computron

BENCHMARK_MAIN();
