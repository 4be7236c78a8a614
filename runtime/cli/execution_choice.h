// How `replay` and `serve` run batches, from their shared options: --execution real|placeholder
// (default real on cuda, placeholder on the host device), --checkpoint NAME=FOLDER,
// --max-context and --placeholder-ms. One reading, so both commands accept and refuse the same.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/scenario/scenario.h"
#include "runtime/execution.h"
#include "runtime/real_backend.h"

namespace computron::runtime {

// True for real execution. `kind` is --execution; `defaulted` when the user did not give it, in
// which case the device decides. Throws ConfigError naming --execution for any other value.
bool chooseRealExecution(const std::string& kind, bool defaulted, const std::string& device);

// Real execution's settings; refuses --placeholder-ms (given: >= 0) and malformed --checkpoint.
RealExecutionOptions realExecutionOptions(const std::vector<std::string>& checkpoints, int max_context,
                                          std::uint64_t seed, double placeholder_ms);

// Placeholder batch times from the cost model of the scenario's cluster.
std::function<PlaceholderTimes(const ExecuteCommand&)> costModelPlaceholder(const Scenario& scenario);
// The same cost model's time of one iteration-batching step (prefill of joiners or a decode step).
std::function<Nanos(const StepCommand&)> costModelStepPlaceholder(const Scenario& scenario);

}  // namespace computron::runtime
