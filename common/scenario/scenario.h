// A scenario: cluster, models with their parallel split and placement, workload, policy, SLOs,
// duration, seed and outputs. Parsed strictly: unknown keys, wrong types and impossible
// configurations fail with the JSON path of the culprit (see docs/scenario.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/cluster_spec.h"
#include "common/fault_spec.h"
#include "common/core/engine.h"
#include "common/workload.h"

namespace computron {

struct OutputOptions {
  std::string dir;  // empty: no files, only the table on stdout
  bool summary = true;
  bool requests_csv = true;
  bool timeline = true;
};

struct Scenario {
  std::string name;
  std::string base_dir;  // folder of the scenario file; relative paths resolve against it
  std::uint64_t seed = 1;
  Nanos duration = 0;  // arrivals stop here; the run drains what is queued
  ClusterSpec cluster;
  EngineConfig engine;
  nlohmann::json workload;   // validated, built by makeWorkload()
  OutputOptions outputs;
  // Faults to inject (`faults`): used by replay and serve on real devices; the simulator has no
  // faults and runs without them (computron sim warns).
  std::vector<FaultSpec> faults;
  nlohmann::json effective;  // the effective configuration, written into summary.json

  std::vector<std::string> modelNames() const;
  std::unique_ptr<RequestSource> makeWorkload() const;
};

// Reads and validates a scenario file, applying `--set path=value` overrides first.
Scenario loadScenario(const std::string& path, const std::vector<std::string>& overrides = {});
// Validates an in-memory scenario document.
Scenario parseScenario(const nlohmann::json& doc, const std::string& base_dir);
// Refuses (ConfigError at the node's path) a name that is used as a file or folder name under
// out/ and is not one plain path component (`../x`, `a/b`, empty, too long).
void checkOutputName(const JsonReader& node);
// The scenario embedded in the binary, run when `computron sim` gets no file.
nlohmann::json defaultScenarioJson();

}  // namespace computron
