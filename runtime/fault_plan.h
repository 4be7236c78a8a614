// The one place that decides which event an injected fault hits (common/fault_spec.h): both
// devices (HostDevice, CudaDevice) and real model execution consult the same FaultPlan, so a
// scenario's faults or `replay --inject` act alike on the host-memory device and on GPUs. Each
// device applies the decision its own way: a failed path ends as a copy error would, a corrupt
// load gets a byte of its extent flipped before the device checksum, a failed batch part reports
// failure after running, a stalled worker sleeps before its job.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/fault_spec.h"
#include "runtime/device.h"

namespace computron::runtime {

class FaultPlan {
 public:
  explicit FaultPlan(std::vector<FaultSpec> faults);

  const std::vector<FaultSpec>& faults() const { return faults_; }

  // Asked by every path of a load as it starts; a load counts once, at its first path of its
  // first shard (PathJob shard 0, path 0), for both fail-load and corrupt-load. Returns the
  // failure for that path ("injected fault (SPEC)") when the load is to fail; a load that is to
  // arrive corrupt is remembered for takeCorruption().
  std::optional<std::string> failPath(const PathJob& job);
  // True once for a load (by op) that is to arrive corrupt: the device that verifies it flips a
  // byte of the extent before computing the checksum.
  bool takeCorruption(OpId op);
  // Asked by every part of a batch; a batch counts once, at part 0. The failure for that part.
  std::optional<std::string> failBatch(ModelId model, int part);
  // Asked by a GPU's device worker before each job it takes: how long to stall first.
  Nanos stallBefore(GpuId gpu);

 private:
  // The fault of `kind` on `target` that this occurrence triggers (counted here), if any.
  const FaultSpec* trigger(FaultKind kind, int target);
  bool has(FaultKind kind) const;

  const std::vector<FaultSpec> faults_;
  std::mutex mutex_;
  std::map<std::pair<FaultKind, int>, std::int64_t> counts_;
  std::set<OpId> corrupt_ops_;
};

// "injected fault (SPEC)": the reason every injected failure carries.
std::string injectedFaultReason(const FaultSpec& fault);

}  // namespace computron::runtime
