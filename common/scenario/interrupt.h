// SIGINT and SIGTERM stop a run cleanly: the handler only sets a flag; request sources built by
// Scenario::makeWorkload read it and end their streams, so the run drains what it admitted and
// finishes its files, and the summary says it was interrupted. A second signal ends the process
// at once (the default action), leaving the target outputs as they were.
//
// The flag is one per process. The runtime module (libcomputron-runtime.so, loaded by `computron
// replay|serve|bench|calibrate`) links its own copy of this file, with its own static flag that no
// handler would ever set; so the executable hands the module the address of its flag
// (stopFlag()), and the module's entry point calls shareStopFlag() with it before running a
// command: from then on the module's stopRequested() reads the flag the executable's handler sets.
#pragma once

#include <csignal>
#include <memory>

#include "common/workload.h"

namespace computron {

// Installs the handlers (idempotent).
void installStopHandlers();
// True once SIGINT or SIGTERM arrived (or requestStop() was called).
bool stopRequested();
// The signal that asked to stop (0 if none): exit code 128 + it.
int stopSignal();
// For tests: as if `signal` had arrived; 0 clears the request.
void requestStop(int signal);

using StopFlag = volatile std::sig_atomic_t;
// The flag this copy of the code reads and its handler sets (its own, unless shared).
StopFlag* stopFlag();
// Reads and sets `flag` instead of this copy's own (the runtime module: the executable's flag).
void shareStopFlag(StopFlag* flag);

// `source`, ending as soon as a stop is requested.
std::unique_ptr<RequestSource> stoppable(std::unique_ptr<RequestSource> source);

}  // namespace computron
