// One trace reader (COMPUTRON_TRACE_FORMAT: 0 Azure CSV, 1 Mooncake JSONL, 2 our CSV) on
// arbitrary bytes: records in time order within the bounds, or a ConfigError naming file:line.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "common/trace_readers.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace computron;
  static const std::vector<std::string> models = {"m-0", "m-1", "opt-13b-0", "opt-13b"};
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
#if COMPUTRON_TRACE_FORMAT == 0
    const auto records = readAzureTrace(in, "fuzz.csv");
#elif COMPUTRON_TRACE_FORMAT == 1
    const auto records = readMooncakeTrace(in, "fuzz.jsonl");
#else
    const auto records = readComputronTrace(in, "fuzz.csv", models);
#endif
    Nanos previous = 0;
    for (const TraceRecord& r : records) {
      // What the readers promise; a broken promise is a finding.
      if (r.time < previous || r.time > kMaxInputTime || r.prompt_tokens < 0 || r.prompt_tokens > kMaxRequestTokens ||
          r.output_tokens < 0 || r.output_tokens > kMaxRequestTokens)
        std::abort();
      previous = r.time;
    }
  } catch (const ConfigError&) {
  }
  return 0;
}
