// A rank that owns GPUs (rank >= 1 of a multi-process run): builds its part of the host store
// (the shards placed on its GPUs) and its devices, says hello to rank 0 with the checksums, then
// runs every job rank 0 sends on the named device and sends each device event back, until rank 0
// says stop (or is lost). Runs the same scenario as rank 0, so both derive the same layouts.
#pragma once

#include <functional>
#include <ostream>
#include <string>

#include "common/core/engine.h"
#include "runtime/device.h"
#include "runtime/mpi/transport.h"
#include "runtime/real_backend.h"

namespace computron::runtime::rank {

// Returns the process's exit code: 0 after rank 0's stop, 1 if rank 0 was lost or aborted the
// run, 2 if set-up failed here (rank 0 is told why and exits with that error). Notes go to `log`.
// `present` says which of its GPUs this rank has (a scenario may name more GPUs than a machine
// has, as in one process): absent ones get no device, and jobs for them fail saying so.
int runRankWorker(const EngineConfig& config, DeviceFactory& local, const RuntimeOptions& options, Transport& transport,
                  RankLayout layout, std::ostream& log, const std::function<bool(GpuId)>& present = {});

// A rank whose own set-up failed before it could serve (no usable GPU here, say): tells rank 0
// why in its hello, so the run stops at once with that error, and waits for rank 0's word.
// Returns 2.
int reportRankSetupError(Transport& transport, const std::string& error, std::ostream& log);

}  // namespace computron::runtime::rank
