// Faults injected from the command line (`computron replay --inject SPEC`) into the host-memory
// device, so the error paths of a real run (a failed or corrupt load, a failed batch, a stalled
// worker) can be exercised on any machine and checked: every request still ends exactly once,
// served or failed with its reason.
//
//   fail-load=MODEL[@N]     the Nth load of MODEL (1-based; without @N every load) fails mid-copy
//   corrupt-load=MODEL[@N]  the Nth load of MODEL arrives with a flipped byte (the checksum fails it)
//   fail-batch=MODEL[@N]    the Nth batch of MODEL fails on its GPUs
//   stall=GPU:MS[@N]        the worker of GPU stalls MS milliseconds before its Nth job (default 1)
#pragma once

#include <string>
#include <vector>

#include "runtime/host_device.h"

namespace computron::runtime {

// The host-device hooks for `specs`; `models` are the scenario's model names (ModelId = index).
// A malformed spec, an unknown model or GPU is a ConfigError naming `--inject SPEC`.
HostDeviceOptions faultHooks(const std::vector<std::string>& specs, const std::vector<std::string>& models,
                             int num_gpus);

}  // namespace computron::runtime
