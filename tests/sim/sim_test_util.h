// Helpers for simulator tests: scenario documents built in code.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "common/scenario/scenario.h"
#include "common/types.h"

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
