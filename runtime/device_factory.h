// Picks the device implementation by name: "cuda" (when built with CUDA) or "host".
#pragma once

#include <memory>
#include <string>

#include "runtime/device.h"
#include "runtime/execution.h"

namespace computron::runtime {

bool cudaBuiltIn();
// Throws ConfigError for an unknown kind, or "cuda" in a build without CUDA (saying so).
std::unique_ptr<DeviceFactory> makeDeviceFactory(const std::string& kind, int host_devices = 0);
// Real model execution for devices of `kind`: CUDA only (ConfigError elsewhere, saying why).
std::shared_ptr<ModelExecution> makeModelExecution(const std::string& kind, const RealExecutionOptions& options);

}  // namespace computron::runtime
