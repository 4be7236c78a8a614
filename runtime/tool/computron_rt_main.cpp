// computron-rt: the runtime's subcommands on their own (replay, bench swap), for device scripts
// and for trees whose app/main.cpp does not dispatch to them yet. Same code as `computron replay`.
#include <iostream>
#include <string>

#include "common/types.h"
#include "runtime/cli.h"

int main(int argc, char** argv) {
  try {
    const std::string cmd = argc >= 2 ? argv[1] : "";
    if (cmd == "replay") return computron::runtime::replayMain(argc - 1, argv + 1);
    if (cmd == "bench") return computron::runtime::benchMain(argc - 1, argv + 1);
    std::cerr << "usage: computron-rt replay SCENARIO.json [options] | computron-rt bench swap [options]\n";
    return cmd == "--help" || cmd == "-h" ? 0 : 2;
  } catch (const computron::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "computron-rt: " << e.what() << "\n";
    return 1;
  }
}
