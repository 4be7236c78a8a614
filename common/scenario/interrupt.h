// SIGINT and SIGTERM stop a run cleanly: the handler only sets a flag; request sources built by
// Scenario::makeWorkload read it and end their streams, so the run drains what it admitted and
// finishes its files, and the summary says it was interrupted. A second signal ends the process
// at once (the default action), leaving the target outputs as they were.
#pragma once

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

// `source`, ending as soon as a stop is requested.
std::unique_ptr<RequestSource> stoppable(std::unique_ptr<RequestSource> source);

}  // namespace computron
