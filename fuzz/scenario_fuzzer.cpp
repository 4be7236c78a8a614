// The scenario parser and its validation on arbitrary bytes: every outcome is a scenario or a
// ConfigError; anything else (another exception, a crash, a sanitizer report) is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/json_reader.h"
#include "common/scenario/scenario.h"
#include "fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace computron;
  try {
    nlohmann::json doc = parseJsonText(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    fuzz::keepShort(doc);
    // Relative paths resolve as they do for the shipped scenarios (../traces/...).
    const Scenario s = parseScenario(doc, COMPUTRON_SOURCE_DIR "/scenarios");
    (void)s.makeWorkload();
  } catch (const ConfigError&) {
  }
  return 0;
}
