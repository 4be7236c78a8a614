#include "common/fault_spec.h"

namespace computron {

const char* faultKindName(FaultKind kind) {
  switch (kind) {
    case FaultKind::kFailLoad: return "fail-load";
    case FaultKind::kCorruptLoad: return "corrupt-load";
    case FaultKind::kFailBatch: return "fail-batch";
    case FaultKind::kStall: return "stall";
  }
  return "?";
}

std::optional<FaultKind> faultKindFromName(std::string_view name) {
  for (FaultKind k : {FaultKind::kFailLoad, FaultKind::kCorruptLoad, FaultKind::kFailBatch, FaultKind::kStall})
    if (name == faultKindName(k)) return k;
  return std::nullopt;
}

std::string faultLabel(const FaultSpec& fault, const std::vector<std::string>& model_names) {
  std::string label = std::string(faultKindName(fault.kind)) + "=";
  if (fault.kind == FaultKind::kStall) {
    label += std::to_string(fault.target) + ":" + std::to_string(fault.stall / kNanosPerMilli);
  } else {
    const auto m = static_cast<std::size_t>(fault.target);
    label += m < model_names.size() ? model_names[m] : "model " + std::to_string(fault.target);
  }
  if (fault.nth > 0) label += "@" + std::to_string(fault.nth);
  return label;
}

}  // namespace computron
