// `--set path=value` overrides on the embedded default scenario: each input line is one
// assignment (at most four), then the result is validated as `computron sim` does.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "common/json_reader.h"
#include "common/scenario/scenario.h"
#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace computron;
  static const nlohmann::json base = defaultScenarioJson();
  try {
    nlohmann::json doc = base;
    std::istringstream lines(std::string(reinterpret_cast<const char*>(data), size));
    std::string line;
    for (int n = 0; n < 4 && std::getline(lines, line);) {
      if (line.empty()) continue;
      applyOverride(doc, line);
      ++n;
    }
    fuzz::keepShort(doc);
    (void)parseScenario(doc, COMPUTRON_SOURCE_DIR "/scenarios");
  } catch (const ConfigError&) {
  }
  return 0;
}
