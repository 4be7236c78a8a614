// Simulator cost as the cluster grows: the seed's block (6 x OPT-13B, TP 2 x PP 2 over 4 A100s,
// 4 resident by bytes, batch 32, Gamma CV 4, rates 10,10,10,10,1,1 req/s) replicated 1, 10 and 100
// times, and 1,000 models over 512 GPUs (128 blocks of 4, models dealt round-robin, the same rate
// mix), each run for the same 100k requests. CPU per request should stay flat: the largest at
// most 3x the smallest (issue 18). Also the memory one idle model costs (engine state, recorder
// histograms, its deployment), measured as resident-set growth over many of them.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/scenario/run_recorder.h"
#include "common/scenario/scenario.h"
#include "sim/simulator.h"

namespace computron {
namespace {

// Weight budget per GPU that holds four of the block's TP 2 x PP 2 OPT-13B shards but not five
// (each is about 6.5 GB), so each block keeps 4 resident by bytes, as the seed's count cap does.
constexpr double kBlockBudgetGB = 28;

nlohmann::json a100Cluster(int gpus) {
  return {{"name", "a100-40gb-x" + std::to_string(gpus)},
          {"gpus",
           {{{"name", "A100-40GB"},
             {"count", gpus},
             {"memory_gb", 42.949672960},
             {"weight_budget_gb", kBlockBudgetGB},
             {"peak_tflops", 312},
             {"hbm_gbps", 1555},
             {"host_link_gbps", 24}}}},
          {"nvlink_gbps", 100}};
}

// `models` copies of OPT-13B dealt round-robin over gpus / 4 blocks of 4 GPUs, rates cycling
// 10,10,10,10,1,1 req/s; duration set so that about `requests` arrive.
Scenario blockScenario(int models, int gpus, std::int64_t requests) {
  const int blocks = gpus / 4;
  nlohmann::json list = nlohmann::json::array();
  nlohmann::json rates = nlohmann::json::array();
  double total_rate = 0;
  for (int m = 0; m < models; ++m) {
    const int b = m % blocks;
    list.push_back({{"name", "opt-13b-" + std::to_string(m)},
                    {"spec", "opt-13b"},
                    {"tp", 2},
                    {"pp", 2},
                    {"gpus", {4 * b, 4 * b + 1, 4 * b + 2, 4 * b + 3}},
                    {"max_batch", 32}});
    const double rate = (m / blocks) % 6 < 4 ? 10.0 : 1.0;
    rates.push_back(rate);
    total_rate += rate;
  }
  nlohmann::json doc = {
      {"name", "bench-fleet-" + std::to_string(models) + "-" + std::to_string(gpus)},
      {"seed", 1},
      {"cluster", a100Cluster(gpus)},
      {"models", list},
      {"workload", {{"type", "gamma"}, {"rates", rates}, {"cv", 4}, {"prompt_tokens", 64}, {"output_tokens", 1}}},
      {"policy", {{"name", "computron"}, {"max_loaded_models", 0}}},
      {"slo_ms", 1000},
      {"duration_s", static_cast<double>(requests) / total_rate},
      {"outputs", {{"dir", ""}}},
  };
  return parseScenario(doc, ".");
}

void BM_SimulateBlocks(benchmark::State& state) {
  const int models = static_cast<int>(state.range(0));
  const int gpus = static_cast<int>(state.range(1));
  Scenario scenario = blockScenario(models, gpus, 100000);
  std::int64_t served = 0;
  std::uint64_t events = 0;
  for (auto _ : state) {
    nlohmann::json summary = sim::runScenario(scenario, nullptr);
    served = summary["overall"]["requests"].get<std::int64_t>();
    events = summary["simulator"]["events"].get<std::uint64_t>();
  }
  state.counters["requests"] = static_cast<double>(served);
  state.counters["events"] = static_cast<double>(events);
  // CPU time per request is the benchmark's CPU time divided by this counter's value.
  state.counters["requests_per_cpu_s"] =
      benchmark::Counter(static_cast<double>(served) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["cpu_us_per_request"] = benchmark::Counter(
      static_cast<double>(served) * static_cast<double>(state.iterations()) / 1e6,
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_SimulateBlocks)
    ->Args({6, 4})
    ->Args({60, 40})
    ->Args({600, 400})
    ->Args({1000, 512})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1)
    ->MeasureProcessCPUTime();

long residentKiB() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return resident * 4;  // pages of 4 KiB
}

// Resident-set growth per model of a scenario with `models` idle models (one request in all) on
// 512 GPUs, with everything a run holds: the scenario, the engine, the simulator and the recorder.
void BM_IdleModelMemory(benchmark::State& state) {
  const int models = static_cast<int>(state.range(0));
  double per_model_bytes = 0;
  for (auto _ : state) {
    const long before = residentKiB();
    {
      Scenario scenario = blockScenario(models, 512, 1);
      RunRecorder recorder(scenario, "sim");
      sim::Simulation simulation(scenario.cluster, scenario.engine, scenario.makeWorkload(), &recorder);
      const long after = residentKiB();
      per_model_bytes = static_cast<double>(after - before) * 1024.0 / models;
      benchmark::DoNotOptimize(simulation.engine().loadedModels());
    }
  }
  state.counters["bytes_per_idle_model"] = per_model_bytes;
}
BENCHMARK(BM_IdleModelMemory)->Arg(20000)->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace
}  // namespace computron

BENCHMARK_MAIN();
