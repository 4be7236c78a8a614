#include "runtime/cli/faults.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <memory>
#include <mutex>

namespace computron::runtime {
namespace {

enum class FaultKind { kFailLoad, kCorruptLoad, kFailBatch, kStall };

struct Fault {
  FaultKind kind = FaultKind::kFailLoad;
  int target = 0;          // model, or GPU for a stall
  std::int64_t nth = 0;    // 1-based occurrence; 0: every one
  Nanos stall = 0;
  std::string spec;
};

std::int64_t parseCount(const std::string& text, const std::string& spec, const char* what, std::int64_t max) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < 1 || value > max)
    throw ConfigError("--inject " + spec + ": " + what + " must be an integer from 1 to " + std::to_string(max));
  return value;
}

Fault parseFault(const std::string& spec, const std::vector<std::string>& models, int num_gpus) {
  Fault f;
  f.spec = spec;
  const auto eq = spec.find('=');
  const std::string kind = spec.substr(0, eq);
  std::string rest = eq == std::string::npos ? "" : spec.substr(eq + 1);
  const std::string usage = " (expected fail-load=MODEL[@N], corrupt-load=MODEL[@N], fail-batch=MODEL[@N] or stall=GPU:MS[@N])";
  if (eq == std::string::npos || rest.empty()) throw ConfigError("--inject " + spec + ": malformed" + usage);
  if (const auto at = rest.rfind('@'); at != std::string::npos) {
    f.nth = parseCount(rest.substr(at + 1), spec, "N", 1'000'000'000);
    rest = rest.substr(0, at);
  }
  if (kind == "stall") {
    const auto colon = rest.find(':');
    if (colon == std::string::npos) throw ConfigError("--inject " + spec + ": malformed" + usage);
    f.kind = FaultKind::kStall;
    const std::string gpu = rest.substr(0, colon);
    if (gpu.empty() || gpu.find_first_not_of("0123456789") != std::string::npos || gpu.size() > 9 ||
        std::stoll(gpu) >= num_gpus)
      throw ConfigError("--inject " + spec + ": GPU must be an index from 0 to " + std::to_string(num_gpus - 1));
    f.target = static_cast<int>(std::stoll(gpu));
    f.stall = parseCount(rest.substr(colon + 1), spec, "MS", 3'600'000) * kNanosPerMilli;
    if (f.nth == 0) f.nth = 1;
    return f;
  }
  if (kind == "fail-load") f.kind = FaultKind::kFailLoad;
  else if (kind == "corrupt-load") f.kind = FaultKind::kCorruptLoad;
  else if (kind == "fail-batch") f.kind = FaultKind::kFailBatch;
  else throw ConfigError("--inject " + spec + ": unknown fault '" + kind + "'" + usage);
  const auto it = std::find(models.begin(), models.end(), rest);
  if (it == models.end()) throw ConfigError("--inject " + spec + ": no model named '" + rest + "' in the scenario");
  f.target = static_cast<int>(it - models.begin());
  return f;
}

// Occurrence counters, shared by every device's worker thread.
class FaultState {
 public:
  explicit FaultState(std::vector<Fault> faults) : faults_(std::move(faults)) {}

  // The fault of `kind` for `target` that this occurrence triggers, if any.
  const Fault* trigger(FaultKind kind, int target) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::int64_t count = ++counts_[{static_cast<int>(kind), target}];
    for (const Fault& f : faults_)
      if (f.kind == kind && f.target == target && (f.nth == 0 || f.nth == count)) return &f;
    return nullptr;
  }
  bool any(FaultKind kind) const {
    return std::any_of(faults_.begin(), faults_.end(), [kind](const Fault& f) { return f.kind == kind; });
  }

 private:
  std::vector<Fault> faults_;
  std::mutex mutex_;
  std::map<std::pair<int, int>, std::int64_t> counts_;
};

}  // namespace

HostDeviceOptions faultHooks(const std::vector<std::string>& specs, const std::vector<std::string>& models,
                             int num_gpus) {
  std::vector<Fault> faults;
  for (const std::string& spec : specs) faults.push_back(parseFault(spec, models, num_gpus));
  auto state = std::make_shared<FaultState>(std::move(faults));
  HostDeviceOptions options;
  // A load is counted once, by the first path of its first shard; failing or corrupting that
  // path fails the whole load.
  auto firstPath = [](const PathJob& job) { return job.shard == 0 && job.path == 0; };
  if (state->any(FaultKind::kFailLoad) || state->any(FaultKind::kCorruptLoad)) {
    // Both hooks see each path; the load is counted in the first, which records the verdict.
    auto verdict = std::make_shared<std::map<OpId, FaultKind>>();
    auto verdict_mutex = std::make_shared<std::mutex>();
    options.fail_path = [state, verdict, verdict_mutex, firstPath](const PathJob& job) -> std::optional<std::string> {
      if (!firstPath(job)) return std::nullopt;
      const Fault* fail = state->trigger(FaultKind::kFailLoad, job.model);
      const Fault* corrupt = state->trigger(FaultKind::kCorruptLoad, job.model);
      if (corrupt != nullptr) {
        std::lock_guard<std::mutex> lock(*verdict_mutex);
        (*verdict)[job.op] = FaultKind::kCorruptLoad;
      }
      if (fail != nullptr) return "injected fault (" + fail->spec + ")";
      return std::nullopt;
    };
    options.corrupt_path = [verdict, verdict_mutex, firstPath](const PathJob& job) {
      if (!firstPath(job)) return false;
      std::lock_guard<std::mutex> lock(*verdict_mutex);
      return verdict->erase(job.op) > 0;
    };
  }
  if (state->any(FaultKind::kFailBatch)) {
    // A batch is counted once, by its first part.
    options.fail_exec = [state](const ExecJob& job) -> std::optional<std::string> {
      if (job.part != 0) return std::nullopt;
      if (const Fault* f = state->trigger(FaultKind::kFailBatch, job.model)) return "injected fault (" + f->spec + ")";
      return std::nullopt;
    };
  }
  if (state->any(FaultKind::kStall)) {
    options.stall = [state](GpuId gpu) -> Nanos {
      const Fault* f = state->trigger(FaultKind::kStall, gpu);
      return f != nullptr ? f->stall : 0;
    };
  }
  return options;
}

}  // namespace computron::runtime
