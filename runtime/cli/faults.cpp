#include "runtime/cli/faults.h"

#include <algorithm>
#include <charconv>

namespace computron::runtime {
namespace {

std::int64_t parseCount(const std::string& text, const std::string& spec, const char* what, std::int64_t max) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < 1 || value > max)
    throw ConfigError("--inject " + spec + ": " + what + " must be an integer from 1 to " + std::to_string(max));
  return value;
}

FaultSpec parseFault(const std::string& spec, const std::vector<std::string>& models, int num_gpus) {
  FaultSpec f;
  f.label = spec;
  const auto eq = spec.find('=');
  const std::string kind = spec.substr(0, eq);
  std::string rest = eq == std::string::npos ? "" : spec.substr(eq + 1);
  const std::string usage = " (expected fail-load=MODEL[@N], corrupt-load=MODEL[@N], fail-batch=MODEL[@N] or stall=GPU:MS[@N])";
  if (eq == std::string::npos || rest.empty()) throw ConfigError("--inject " + spec + ": malformed" + usage);
  if (const auto at = rest.rfind('@'); at != std::string::npos) {
    f.nth = parseCount(rest.substr(at + 1), spec, "N", kMaxFaultOccurrence);
    rest = rest.substr(0, at);
  }
  const std::optional<FaultKind> parsed = faultKindFromName(kind);
  if (!parsed) throw ConfigError("--inject " + spec + ": unknown fault '" + kind + "'" + usage);
  f.kind = *parsed;
  if (f.kind == FaultKind::kStall) {
    const auto colon = rest.find(':');
    if (colon == std::string::npos) throw ConfigError("--inject " + spec + ": malformed" + usage);
    const std::string gpu = rest.substr(0, colon);
    if (gpu.empty() || gpu.find_first_not_of("0123456789") != std::string::npos || gpu.size() > 9 ||
        std::stoll(gpu) >= num_gpus)
      throw ConfigError("--inject " + spec + ": GPU must be an index from 0 to " + std::to_string(num_gpus - 1));
    f.target = static_cast<int>(std::stoll(gpu));
    f.stall = parseCount(rest.substr(colon + 1), spec, "MS", kMaxStallMillis) * kNanosPerMilli;
    if (f.nth == 0) f.nth = 1;
    return f;
  }
  const auto it = std::find(models.begin(), models.end(), rest);
  if (it == models.end()) throw ConfigError("--inject " + spec + ": no model named '" + rest + "' in the scenario");
  f.target = static_cast<int>(it - models.begin());
  return f;
}

}  // namespace

std::vector<FaultSpec> parseInjections(const std::vector<std::string>& specs, const std::vector<std::string>& models,
                                       int num_gpus) {
  if (specs.size() > kMaxFaults) throw ConfigError("--inject: at most " + std::to_string(kMaxFaults) + " faults");
  std::vector<FaultSpec> faults;
  for (const std::string& spec : specs) faults.push_back(parseFault(spec, models, num_gpus));
  return faults;
}

}  // namespace computron::runtime
