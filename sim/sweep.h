// `computron sweep SWEEP.json`: a grid of policy sets x scenario parameter overrides x seeds, run
// in parallel threads. One CSV row per run, in grid order whatever the thread timing, so the same
// sweep gives a byte-identical CSV; a comparison table on stdout; progress on stderr.
// The file format is in docs/policies.md.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/scenario/progress.h"

namespace computron::sim {

struct SweepRun {
  std::string scenario;  // the scenario file as written in the sweep
  std::string policy;    // the policy entry's label
  nlohmann::json point;  // grid values, one per grid key (in the sweep's key order)
  std::uint64_t seed = 1;
  nlohmann::json scenario_doc;  // the scenario with every override applied
  std::string base_dir;
};

struct SweepResult {
  SweepRun run;
  nlohmann::json summary;  // summary.json's content; empty on error
  std::string error;
};

struct SweepSpec {
  std::string name;
  std::vector<std::string> grid_keys;
  std::vector<SweepRun> runs;
  std::string csv;
  int threads = 0;  // 0 = hardware concurrency
};

// Reads a sweep file and expands it into runs (scenario-major, then grid point, seed, policy).
SweepSpec loadSweep(const std::string& path);
SweepSpec parseSweep(const nlohmann::json& doc, const std::string& base_dir);
// Multiplies every request rate of a scenario document by `scale` (trace replays run faster).
void scaleRates(nlohmann::json& scenario, double scale);
// Runs every run of the sweep on `threads` threads; results in run order. `progress` (may be
// null) is told the number of runs done as each finishes, and finished at the end.
std::vector<SweepResult> runSweep(const SweepSpec& spec, int threads, ProgressReporter* progress);
void writeSweepCsv(const SweepSpec& spec, const std::vector<SweepResult>& results, std::ostream& out);
// Per scenario and grid point: each policy averaged over seeds, with its p99 against the first
// policy listed.
void printSweepTable(const SweepSpec& spec, const std::vector<SweepResult>& results, std::ostream& out);

int sweepMain(int argc, char** argv);

}  // namespace computron::sim
