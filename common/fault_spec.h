// Faults to inject into a run on real devices, from `computron replay --inject SPEC` or a
// scenario's `faults` section: a failed or corrupt load, a failed batch, a stalled worker, each at
// a chosen occurrence. The runtime's FaultPlan (runtime/fault_plan.h) counts the occurrences and
// decides; the simulator has no faults and runs without them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/types.h"

namespace computron {

enum class FaultKind {
  kFailLoad,     // the load fails mid-copy (a copy error)
  kCorruptLoad,  // the load arrives with a flipped byte (the device checksum fails it)
  kFailBatch,    // the batch fails on its GPUs after running
  kStall,        // a GPU's worker stalls before a job
};

struct FaultSpec {
  FaultKind kind = FaultKind::kFailLoad;
  int target = 0;        // ModelId, or GpuId for a stall
  std::int64_t nth = 0;  // 1-based occurrence of the event for the target; 0: every one
  Nanos stall = 0;       // a stall's length
  std::string label;     // the spec as `--inject` writes it ("fail-load=m0@2"), named in failures
};

// Bounds of a fault's numbers, the same for `--inject` and the scenario.
constexpr std::int64_t kMaxFaultOccurrence = 1'000'000'000;
constexpr std::int64_t kMaxStallMillis = 3'600'000;
constexpr std::size_t kMaxFaults = 1000;

// "fail-load", "corrupt-load", "fail-batch", "stall".
const char* faultKindName(FaultKind kind);
std::optional<FaultKind> faultKindFromName(std::string_view name);
// The `--inject` form of a fault: KIND=MODEL[@N] or stall=GPU:MS[@N].
std::string faultLabel(const FaultSpec& fault, const std::vector<std::string>& model_names);

}  // namespace computron
