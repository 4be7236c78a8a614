#include "sim/compare.h"

#include <iostream>

namespace computron::sim {

int compareMain(int, char**) {
  std::cerr << "computron compare: not built yet\n";
  return 2;
}

}  // namespace computron::sim
