// computron calibrate: measures a profile (docs/specs.md, "Profiles") on this machine's GPUs.
#include <iostream>

#include "runtime/cli/cli.h"

namespace computron::runtime {

int calibrateMain(int, char**) {
  std::cerr << "computron calibrate: not built yet\n";
  return 2;
}

}  // namespace computron::runtime
