// The entry point of the runtime module (libcomputron-runtime.so) that `computron replay` and
// `computron bench` load on demand, so the simulator's commands never load CUDA, cuBLAS or NCCL.
// It is the module's only exported symbol; every exception ends here as an exit code.
// `stop_flag` is the executable's SIGINT/SIGTERM flag: the module holds its own copy of
// common/scenario/interrupt.cpp, whose flag no handler sets, so it reads the executable's instead.
#include <iostream>
#include <string>

#include "common/scenario/interrupt.h"
#include "common/types.h"
#include "runtime/cli/cli.h"

extern "C" __attribute__((visibility("default"))) int computron_runtime_run(int argc, char** argv,
                                                                            computron::StopFlag* stop_flag) {
  computron::shareStopFlag(stop_flag);
  try {
    const std::string command = argc >= 1 ? argv[0] : "";
    if (command == "replay") return computron::runtime::replayMain(argc, argv);
    if (command == "bench") return computron::runtime::benchMain(argc, argv);
    if (command == "serve") return computron::runtime::serveMain(argc, argv);
    if (command == "calibrate") return computron::runtime::calibrateMain(argc, argv);
    std::cerr << "computron: the runtime module has no command '" << command << "'\n";
    return 2;
  } catch (const computron::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "computron " << (argc >= 1 ? argv[0] : "") << ": " << e.what() << "\n";
    return 1;
  }
}
