// The future, for offline policies: every model's arrival times, read ahead from an open-loop
// request stream. Belady eviction and oracle prefetch use it to give researchers a bound that no
// online policy can beat. Memory is one Nanos per request.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "common/types.h"
#include "common/workload.h"

namespace computron {

class ArrivalOracle {
 public:
  static constexpr Nanos kNever = std::numeric_limits<Nanos>::max();

  // arrivals[m]: model m's arrival times in non-decreasing order.
  explicit ArrivalOracle(std::vector<std::vector<Nanos>> arrivals);
  // Pulls `source` to the end. A closed-loop source (one that stops before it is exhausted,
  // waiting for completions) has no knowable future: ConfigError.
  static std::shared_ptr<const ArrivalOracle> fromSource(RequestSource& source, std::size_t num_models);

  // The first arrival of `model` at or after `t`, or kNever.
  Nanos nextArrival(ModelId model, Nanos t) const;
  // Arrivals of `model` in [from, to).
  std::int64_t arrivalsBetween(ModelId model, Nanos from, Nanos to) const;
  std::size_t numModels() const { return arrivals_.size(); }

 private:
  std::vector<std::vector<Nanos>> arrivals_;
};

}  // namespace computron
