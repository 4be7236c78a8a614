// Picks the device implementation by name: "cuda" (when built with CUDA) or "host".
#pragma once

#include <memory>
#include <string>

#include "runtime/device.h"
#include "runtime/execution.h"
#include "runtime/fault_plan.h"

namespace computron::runtime {

bool cudaBuiltIn();
// Throws ConfigError for an unknown kind, or "cuda" in a build without CUDA (saying so).
// `faults` (may be null): injected faults, consulted by every device the factory makes.
// `cuda_ordinal_shift`: GPU g is CUDA device g + shift (a rank of a multi-process run whose
// first GPU in the scenario's numbering is not its node's device 0).
std::unique_ptr<DeviceFactory> makeDeviceFactory(const std::string& kind, int host_devices = 0,
                                                 std::shared_ptr<FaultPlan> faults = nullptr, int cuda_ordinal_shift = 0);
// Real model execution for devices of `kind`: CUDA only (ConfigError elsewhere, saying why).
std::shared_ptr<ModelExecution> makeModelExecution(const std::string& kind, const RealExecutionOptions& options);

}  // namespace computron::runtime
