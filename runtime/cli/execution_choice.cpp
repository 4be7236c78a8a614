#include "runtime/cli/execution_choice.h"

#include <memory>

#include "common/cost_model.h"

namespace computron::runtime {

bool chooseRealExecution(const std::string& kind, bool defaulted, const std::string& device) {
  const std::string chosen = defaulted ? (device == "cuda" ? "real" : "placeholder") : kind;
  if (chosen != "real" && chosen != "placeholder")
    throw ConfigError("--execution: expected real or placeholder, got '" + chosen + "'");
  return chosen == "real";
}

RealExecutionOptions realExecutionOptions(const std::vector<std::string>& checkpoints, int max_context,
                                          std::uint64_t seed, double placeholder_ms) {
  if (placeholder_ms >= 0) throw ConfigError("--placeholder-ms applies to --execution placeholder only");
  RealExecutionOptions ro;
  ro.max_context = max_context;
  ro.seed = seed;
  for (const auto& c : checkpoints) {
    const auto eq = c.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == c.size())
      throw ConfigError("--checkpoint '" + c + "': expected NAME=FOLDER");
    ro.checkpoints[c.substr(0, eq)] = c.substr(eq + 1);
  }
  return ro;
}

std::function<PlaceholderTimes(const ExecuteCommand&)> costModelPlaceholder(const Scenario& scenario) {
  std::shared_ptr<CostModel> cost = makeCostModel(scenario.cluster);
  const EngineConfig engine = scenario.engine;
  return [cost, engine](const ExecuteCommand& cmd) {
    const BatchTimes t = cost->batchTimes(engine.models[static_cast<std::size_t>(cmd.model)], cmd.requests);
    return PlaceholderTimes{t.first_token, t.finish};
  };
}

std::function<Nanos(const StepCommand&)> costModelStepPlaceholder(const Scenario& scenario) {
  std::shared_ptr<CostModel> cost = makeCostModel(scenario.cluster);
  const EngineConfig engine = scenario.engine;
  return [cost, engine](const StepCommand& cmd) {
    const ModelDeployment& model = engine.models[static_cast<std::size_t>(cmd.model)];
    if (!cmd.prefill.empty()) {
      std::vector<std::int32_t> contexts;
      for (const auto& s : cmd.prefill) contexts.push_back(s.context);
      return cost->prefillStep(model, contexts).time;
    }
    double context = 0;
    for (const auto& s : cmd.decode) context += s.context;
    return cost->decodeStep(model, static_cast<int>(cmd.decode.size()), context).time;
  };
}

}  // namespace computron::runtime
