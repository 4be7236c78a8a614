// Faults injected from the command line (`computron replay --inject SPEC`), on the host-memory
// device and on GPUs alike (runtime/fault_plan.h decides, each device applies), so the error paths
// of a real run (a failed or corrupt load, a failed batch, a stalled worker) can be exercised and
// checked: every request still ends exactly once, served or failed with its reason. A scenario's
// `faults` section (docs/scenario.md) says the same in JSON; `--inject` adds to it.
//
//   fail-load=MODEL[@N]     the Nth load of MODEL (1-based; without @N every load) fails mid-copy
//   corrupt-load=MODEL[@N]  the Nth load of MODEL arrives with a flipped byte (the checksum fails it)
//   fail-batch=MODEL[@N]    the Nth batch of MODEL fails on its GPUs
//   stall=GPU:MS[@N]        the worker of GPU stalls MS milliseconds before its Nth job (default 1)
#pragma once

#include <string>
#include <vector>

#include "common/fault_spec.h"

namespace computron::runtime {

// The faults `specs` name; `models` are the scenario's model names (ModelId = index). A malformed
// spec, an unknown model or GPU is a ConfigError naming `--inject SPEC`.
std::vector<FaultSpec> parseInjections(const std::vector<std::string>& specs, const std::vector<std::string>& models,
                                       int num_gpus);

}  // namespace computron::runtime
