// Helpers for simulator tests: scenario and profile documents built in code.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "common/scenario/scenario.h"
#include "common/types.h"
#include "sim/simulator.h"
#include "tests/support/cli_runner.h"
#include "tests/support/requests_csv.h"

namespace computron::testing {

inline nlohmann::json smallScenario() {
  return nlohmann::json::parse(R"({
    "name": "test",
    "seed": 7,
    "duration_s": 20,
    "cluster": {"preset": "a100-40gb-x4"},
    "models": [{"name": "m", "spec": "opt-1.3b", "count": 3, "tp": 2, "pp": 2, "gpus": "all", "max_batch": 4}],
    "workload": {"type": "gamma", "rates": [5, 2, 1], "cv": 2, "prompt_tokens": 64, "output_tokens": 4},
    "policy": {"name": "computron", "max_loaded_models": 2},
    "slo_ms": 500,
    "outputs": {"dir": ""}
  })");
}

// A profile of the small scenario's layout, opt-1.3b at TP 2, PP 2: prefill over batch {1, 4} x
// prompt {16, 64}, decode over batch {1, 4} x context {32, 128}.
inline nlohmann::json smallProfile() {
  return nlohmann::json::parse(R"({
    "format": "computron-profile", "version": 1,
    "provenance": {"tool": "test", "date": "2026-11-30T00:00:00Z", "gpu": "none"},
    "links": {"host_link_gbps": 20, "host_link_latency_us": 100, "nvlink_gbps": 50, "evict_us": 30},
    "models": [{
      "spec": "opt-1.3b", "tp": 2, "pp": 2,
      "prefill": {"batch": [1, 4], "prompt_tokens": [16, 64], "ms": [[2, 4], [5, 11]]},
      "decode": {"batch": [1, 4], "context": [32, 128], "ms": [[1, 1.5], [2, 3]]},
      "batch_tail_ms": 0.25,
      "first_batch_extra_ms": 7
    }]
  })");
}

// Simulates `doc` (a scenario, folder `dir`) on `trace` (computron trace rows after the header,
// written to dir/trace.csv) into dir/out; returns each request's `column` of requests.csv by id.
inline std::map<std::string, double> simulateTrace(const std::filesystem::path& dir, nlohmann::json doc,
                                                   const std::string& trace, const std::string& out,
                                                   const std::string& column) {
  std::ofstream(dir / "trace.csv") << "id,model,arrival_ns,prompt_tokens,output_tokens\n" << trace;
  doc["workload"] = {{"type", "trace"}, {"format", "computron"}, {"path", "trace.csv"}};
  Scenario sc = parseScenario(doc, dir.string());
  sc.outputs.dir = (dir / out).string();
  sim::runScenario(sc, nullptr);
  const fakes::RequestsCsv rows = fakes::parseRequestsCsv(fakes::readWholeFile(dir / out / "requests.csv"));
  std::map<std::string, double> by_id;
  for (std::size_t i = 0; i < rows.rows.size(); ++i) by_id[rows.at(i, "id")] = std::stod(rows.at(i, column));
  return by_id;
}

// The message parseScenario refuses `doc` with, or "accepted" when it parses.
inline std::string parseErrorOf(const nlohmann::json& doc) {
  try {
    parseScenario(doc, ".");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "accepted";
}

}  // namespace computron::testing
