#include "runtime/fault_plan.h"

#include <algorithm>

namespace computron::runtime {

FaultPlan::FaultPlan(std::vector<FaultSpec> faults) : faults_(std::move(faults)) {}

std::string injectedFaultReason(const FaultSpec& fault) { return "injected fault (" + fault.label + ")"; }

bool FaultPlan::has(FaultKind kind) const {
  return std::any_of(faults_.begin(), faults_.end(), [kind](const FaultSpec& f) { return f.kind == kind; });
}

const FaultSpec* FaultPlan::trigger(FaultKind kind, int target) {
  if (!has(kind)) return nullptr;  // counts only what some fault watches
  std::lock_guard<std::mutex> lock(mutex_);
  const std::int64_t count = ++counts_[{kind, target}];
  for (const FaultSpec& f : faults_)
    if (f.kind == kind && f.target == target && (f.nth == 0 || f.nth == count)) return &f;
  return nullptr;
}

std::optional<std::string> FaultPlan::failPath(const PathJob& job) {
  if (job.shard != 0 || job.path != 0) return std::nullopt;
  const FaultSpec* fail = trigger(FaultKind::kFailLoad, job.model);
  const FaultSpec* corrupt = trigger(FaultKind::kCorruptLoad, job.model);
  if (fail != nullptr) return injectedFaultReason(*fail);  // a failed load is never verified
  if (corrupt != nullptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    corrupt_ops_.insert(job.op);
  }
  return std::nullopt;
}

bool FaultPlan::takeCorruption(OpId op) {
  std::lock_guard<std::mutex> lock(mutex_);
  return corrupt_ops_.erase(op) > 0;
}

std::optional<std::string> FaultPlan::failBatch(ModelId model, int part) {
  if (part != 0) return std::nullopt;
  if (const FaultSpec* f = trigger(FaultKind::kFailBatch, model)) return injectedFaultReason(*f);
  return std::nullopt;
}

Nanos FaultPlan::stallBefore(GpuId gpu) {
  const FaultSpec* f = trigger(FaultKind::kStall, gpu);
  return f != nullptr ? f->stall : 0;
}

}  // namespace computron::runtime
